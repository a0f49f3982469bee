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
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "logstore" in out.stdout
