"""The allow-listed tests of kafka-python's own integration suite pass against LogStore.

The suite (test/integration from kafka-python's sdist on PyPI, written for Kafka brokers)
is downloaded once into the user's cache by `python -m tests.kafka.third_party.run
--prepare`, which `.ci/run` runs before the tests (the tests themselves reach nothing but
127.0.0.1); `run.py` says how it is driven and `NOTES.md` which of its tests pass, which
fail and why. Where it was never prepared, this test fails in one line saying how.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kafka.conftest import KafkaBrokerProcess
from tests.kafka.third_party import run

#: seconds the whole allow-listed run may take (it takes about a minute)
TOTAL_TIMEOUT_S = 240.0


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[KafkaBrokerProcess]:
    """A broker configured as the suite configures its own Kafka (`run.BROKER_ARGS`)."""
    process = KafkaBrokerProcess(tmp_path / "data", list(run.BROKER_ARGS))
    process.start()
    try:
        yield process
    finally:
        process.close()


@pytest.fixture(scope="module")
def suite() -> Path:
    try:
        return run.prepared_suite()
    except run.SuiteUnavailableError as exc:
        pytest.fail(str(exc), pytrace=False)


def test_the_allow_list_names_tests_the_suite_has(suite: Path) -> None:
    allowed = run.read_allow_list()
    assert allowed, "allow.txt lists no test"
    assert len(set(allowed)) == len(allowed), "allow.txt lists a test twice"
    for test_id in allowed:
        module = test_id.split("::", 1)[0]
        assert (suite / module).is_file(), f"{test_id}: the suite has no {module}"


@pytest.mark.timeout(TOTAL_TIMEOUT_S + 60)
def test_allow_listed_kafka_python_integration_tests_pass(
    suite: Path, broker: KafkaBrokerProcess
) -> None:
    allowed = run.read_allow_list()
    outcomes = run.run_tests(suite, broker.bootstrap, allowed, total_timeout_s=TOTAL_TIMEOUT_S)
    failed = [o for o in (outcomes[t] for t in allowed) if o.outcome != "passed"]
    report = "\n".join(f"{o.outcome} {o.test_id}: {o.reason}" for o in failed)
    assert not failed, f"{len(failed)} of {len(allowed)} allow-listed tests did not pass:\n{report}"
