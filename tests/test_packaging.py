"""The installed package exposes the layout the contract promises."""

import importlib
import subprocess
import sys


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
        "logstore.record_batch",
        "logstore.segment",
        "logstore.partition_log",
        "logstore.log_manager",
        "logstore.offsets_store",
        "logstore.coordinator",
        "logstore.assignors",
        "logstore.offset_reset",
        "logstore.producer_state",
        "logstore.config",
        "logstore.partitioner",
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
