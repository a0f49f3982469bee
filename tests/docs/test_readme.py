"""The README's examples run as written against a real broker."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.server.conftest import BrokerProcess

README = Path(__file__).resolve().parents[2] / "README.md"


def _python_blocks() -> list[str]:
    """The python blocks of the "Python client" section (the patterns have their own)."""
    text = README.read_text()
    return re.findall(r"```python\n(.*?)```", text[text.index("## Python client") :], flags=re.S)


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


def _tour_commands() -> list[str]:
    text = README.read_text()
    tour = text[text.index("## A five-minute tour") :]
    block = re.search(r"```sh\n(.*?)```", tour, flags=re.S)
    assert block, "the tour has a shell block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_five_minute_tour_runs(broker: BrokerProcess, tmp_path: Path) -> None:
    commands = _tour_commands()
    assert len(commands) >= 8
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "logstore"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m logstore.cli.main "$@"\n')
    shim.chmod(0o755)
    env = dict(
        os.environ, LOGSTORE_BOOTSTRAP=broker.address, PATH=f"{bin_dir}:{os.environ['PATH']}"
    )
    outputs = []
    for command in commands:
        out = subprocess.run(
            ["sh", "-c", command],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            check=False,
        )
        assert out.returncode == 0, f"{command}\n{out.stderr}"
        outputs.append(out.stdout)
    first_read = outputs[2].splitlines()
    assert sorted(first_read) == ["user_1\torder 1", "user_1\torder 3", "user_2\torder 2"]
    assert "CURRENT-OFFSET" in outputs[3] and "LOG-END-OFFSET" in outputs[3]
    replay = outputs[7].splitlines()
    assert sorted(replay) == ["order 1", "order 2", "order 3", "order 4"]
