"""The README's examples run as written against a real broker."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

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


def test_python_client_example_runs_after_the_tour(broker: BrokerProcess, tmp_path: Path) -> None:
    """The tour creates `orders` first; the example must not fail on it."""
    from logstore import Admin

    with Admin(broker.address) as admin:
        admin.create_topic("orders", partitions=3)
    test_python_client_example_runs(broker, tmp_path)


def _on_disk_section() -> str:
    text = README.read_text()
    section = text[text.index("## On disk") :]
    return section[: section.index("```", section.index("```") + 3)]


def _names_on_disk(data_dir: Path) -> set[str]:
    """What a README reader would look up: top-level names (a partition directory as
    `<topic>-<partition>/` unless it is internal) and partition file suffixes."""
    names: set[str] = set()
    for path in data_dir.iterdir():
        if path.is_dir() and not path.name.startswith("__"):
            names.add("<topic>-<partition>/")
            names.update(f"0{child.suffix}" for child in path.iterdir())  # "0.log" etc.
        elif path.is_dir():
            names.add(f"{path.name}/")
        else:
            names.add(path.name)
    return names


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    """A broker with ACLs on, where unauthenticated callers are super users."""
    process = BrokerProcess(
        tmp_path / "data", ["--acls-enabled", "--super-users", "User:ANONYMOUS"]
    )
    process.start()
    try:
        yield process
    finally:
        process.close()


def test_on_disk_lists_every_file_a_broker_leaves(acl_broker: BrokerProcess) -> None:
    from logstore import Admin, Producer
    from logstore.acls import AclBinding

    broker = acl_broker
    with Admin(broker.address) as admin:
        admin.create_topic("orders", partitions=2, config={"segment.bytes": "1024"})
        admin.create_acls([AclBinding("User:alice", "topic", "orders", "describe")])
    with Producer(broker.address, acks="all", linger_ms=0) as producer:
        for _ in range(40):  # idempotent: producer ids, and snapshots at segment rolls
            producer.send("orders", value=b"x" * 100, key=b"k", partition=0).result(timeout=30)
    with Admin(broker.address) as admin:
        admin.commit_offsets("billing", {("orders", 0): 40})
    assert broker.stop() == 0
    section = _on_disk_section()
    found = _names_on_disk(broker.data_dir)
    assert {"0.log", "0.snapshot", "producer-id-block", "__acls.json"} <= found
    for name in sorted(found):
        listed = name[1:] if name.startswith("0.") else name  # ".log" in "0000...0.log"
        assert listed in section, f"README's 'On disk' does not mention {name}"


def _kafka_tour_commands() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Kafka clients") :]
    block = re.search(r"```sh\n(.*?)```", section, flags=re.S)
    assert block, "the Kafka clients section has a shell block"
    lines = [line for line in block.group(1).splitlines() if line.strip()]
    assert lines[0].startswith("logstore serve --kafka-listen 127.0.0.1:9093")
    return lines[1:]  # the broker is the test's


def test_kafka_clients_tour_runs(tmp_path: Path) -> None:
    from tests.kafka.conftest import KafkaBrokerProcess

    if shutil.which("kcat") is None:
        pytest.fail("kcat is not installed: apt-get install kcat (.ci/run does)", pytrace=False)
    broker = KafkaBrokerProcess(tmp_path / "data")
    broker.start()
    try:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        shim = bin_dir / "logstore"
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m logstore.cli.main "$@"\n')
        shim.chmod(0o755)
        env = dict(
            os.environ, LOGSTORE_BOOTSTRAP=broker.address, PATH=f"{bin_dir}:{os.environ['PATH']}"
        )
        outputs = []
        for command in _kafka_tour_commands():
            out = subprocess.run(
                ["sh", "-c", command.replace("127.0.0.1:9093", broker.bootstrap)],
                capture_output=True,
                text=True,
                timeout=120,
                env=env,
                check=False,
            )
            assert out.returncode == 0, f"{command}\n{out.stderr}"
            outputs.append(out.stdout)
    finally:
        broker.close()
    assert broker.bootstrap in outputs[0]  # kcat -L names the broker
    assert outputs[2].splitlines() == ["user_1 order 1", "user_2 order 2"]
    assert sorted(outputs[3].splitlines()) == ["order 1", "order 2"]
    assert "billing" in outputs[4] and "LOG-END-OFFSET" in outputs[4]
