"""Every example scenario runs as `python -m logstore.examples.NAME` against a real broker
and exits 0, printing what happened."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.conftest import BrokerProcess

#: an example's own --timeout (s); the subprocess gets a little more to report and exit
EXAMPLE_TIMEOUT_S = 20


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root: Path = tmp_path_factory.mktemp("examples-broker")
    process = BrokerProcess(root / "data")
    process.start()
    try:
        yield process.address
    finally:
        process.close()


def run_example(name: str, address: str) -> str:
    env = dict(os.environ)
    env.pop("LOGSTORE_BOOTSTRAP", None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            f"logstore.examples.{name}",
            "--bootstrap-server",
            address,
            "--timeout",
            str(EXAMPLE_TIMEOUT_S),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=EXAMPLE_TIMEOUT_S + 15,
    )
    assert done.returncode == 0, f"{name} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    assert done.stdout.rstrip().endswith("OK")
    return done.stdout


def test_checkout_emails(address: str) -> None:
    out = run_example("checkout_emails", address)
    assert "order confirmed to the user" in out
    assert "sent to relay-down@example.com" in out
    assert "bounce@invalid after 3 attempts: SmtpError: 550 mailbox unavailable" in out


def test_order_fanout(address: str) -> None:
    out = run_example("order_fanout", address)
    for service in ("payment", "inventory", "notification"):
        assert f"{service} group saw 6 of 6 orders" in out


def test_work_queue(address: str) -> None:
    out = run_example("work_queue", address)
    assert "every task done exactly once: True" in out
    assert out.count("resized image-") == 12


def test_pdf_request_reply(address: str) -> None:
    out = run_example("pdf_request_reply", address)
    assert "churn -> PDF ready at /files/churn.pdf" in out


def test_video_pipeline(address: str) -> None:
    out = run_example("video_pipeline", address)
    assert "all steps done for abc123: video is live" in out
    assert "all steps done for def456: video is live" in out


def test_payment_no_double_charge(address: str) -> None:
    out = run_example("payment_no_double_charge", address)
    assert "worker 2: charged 0, skipped 3 already-processed payment(s)" in out
    assert out.count("charged 1 time(s)") == 3


def test_delivery_guarantees(address: str) -> None:
    out = run_example("delivery_guarantees", address)
    assert "at-most-once lost ['view-2', 'view-3']" in out
    assert "at-least-once duplicated ['view-1']" in out


def test_an_unreachable_broker_fails_with_an_error_line() -> None:
    command = [sys.executable, "-m", "logstore.examples.order_fanout"]
    done = subprocess.run(
        [*command, "--bootstrap-server", "127.0.0.1:1", "--timeout", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("error: cannot reach broker at 127.0.0.1:1")
