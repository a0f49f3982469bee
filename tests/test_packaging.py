"""The installed package exposes the layout the contract promises."""

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_server_and_cli_install_under_logstore_namespace() -> None:
    for name in ("logstore", "logstore.server", "logstore.cli.main"):
        importlib.import_module(name)
    assert importlib.util.find_spec("server") is None or "site-packages" not in str(
        importlib.util.find_spec("server").origin
    )


def test_console_script_reports_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "logstore.cli.main", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "logstore" in out.stdout


def test_the_storage_and_coordination_core_imports_no_grpc() -> None:
    core = [
        "logstore.codec.record_batch",
        "logstore.storage.segment",
        "logstore.storage.partition_log",
        "logstore.storage.log_manager",
        "logstore.server.groups.offsets_store",
        "logstore.server.groups.coordinator",
        "logstore.server.groups.assignors",
        "logstore.server.groups.offset_reset",
        "logstore.storage.producer_state",
        "logstore.storage.log_config",
        "logstore.codec.partitioner",
    ]
    code = (
        "import sys\n"
        f"for name in {core!r}: __import__(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'google'))\n"
        "assert not bad, bad\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr


def test_the_clients_do_not_load_numpy() -> None:
    """numpy serves the brokers' mmap indexes only. Loading it costs an application that
    just produces or consumes tens of ms at import and starts BLAS threads that spin. The
    CLI loads a command's module only when that command runs."""
    clients = [
        "logstore.client.producer",
        "logstore.client.consumer",
        "logstore.client.admin",
        "logstore.cli.main",
        "logstore.cli.produce",
        "logstore.cli.consume",
        "logstore.cli.topics",
    ]
    code = (
        "import sys\n"
        f"for name in {clients!r}: __import__(name)\n"
        "assert 'numpy' not in sys.modules\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr


def _declared_packages() -> set[str]:
    with open(REPO / "pyproject.toml", "rb") as f:
        return set(tomllib.load(f)["tool"]["setuptools"]["packages"])


def test_every_package_directory_is_declared_for_the_wheel() -> None:
    """A package missing from pyproject's explicit list would be left out of a built wheel
    while still importing fine from an editable install; one listed but absent breaks the
    build."""
    roots = {
        "logstore": REPO / "logstore",
        "logstore.server": REPO / "server",
        "logstore.cli": REPO / "cli",
        "logstore.v1": REPO / "proto" / "logstore" / "v1",
    }
    found = set()
    for name, root in roots.items():
        for init in root.rglob("__init__.py"):
            parts = init.parent.relative_to(root).parts
            found.add(".".join((name, *parts)))
    assert found == _declared_packages()
