"""The README's examples run as written against a real broker."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.server.conftest import BrokerProcess

README = Path(__file__).resolve().parents[2] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_the_two_setup_commands() -> None:
    text = README.read_text()
    assert ".venv/bin/logstore serve" in text
    assert ".venv/bin/python -m pytest" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert ".venv/bin/python -m pytest -q" in ci and ".venv/bin/python -m pytest -q" in text


def test_python_client_example_runs(broker: BrokerProcess, tmp_path: Path) -> None:
    blocks = _python_blocks()
    assert blocks, "the README shows the Python client"
    script = tmp_path / "example.py"
    script.write_text(blocks[0].replace("127.0.0.1:9092", broker.address))
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert "RecordMetadata(topic='orders'" in out.stdout
