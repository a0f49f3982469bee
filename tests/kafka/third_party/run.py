"""kafka-python's own integration tests, written for Kafka brokers, run against LogStore.

kafka-python's sdist on PyPI carries `test/integration/`, whose fixtures take an external
broker from `KAFKA_URI=tcp://HOST:PORT` and gate tests on `KAFKA_VERSION`. This module
downloads that sdist (the version installed here, so the tests match the library they
drive) into a cache, starts a real `logstore serve` with a Kafka listener, runs the chosen
tests with pytest in a subprocess and reads back each test's outcome.

    .venv/bin/python -m tests.kafka.third_party.run            # the allow-list (allow.txt)
    .venv/bin/python -m tests.kafka.third_party.run --all      # every test, one line each
    .venv/bin/python -m tests.kafka.third_party.run --bootstrap 127.0.0.1:9093 ID ...

`tests/kafka/third_party/test_kafka_python_suite.py` runs the allow-list in the test suite.
The downloaded code is never committed: it lives under `$XDG_CACHE_HOME/logstore/`
(default `~/.cache/logstore/`), one directory per version, reused once prepared.

The sdist lacks two files its tests import; preparing it adds them (see `_SHIMS`):
`test/__init__.py` (without it `test` is Python's own test package) and `test/service.py`
(only `ExternalService`, a name for a broker someone else runs, is used with `KAFKA_URI`).
kafka-python's optional lz4 and snappy libraries are installed beside the tests
(`CODEC_PACKAGES`), and the broker gets the suite's own Kafka settings (`BROKER_ARGS`).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tests.kafka.conftest import KafkaBrokerProcess

SUITE: Final = "kafka-python"
HERE: Final = Path(__file__).resolve().parent
ALLOW_LIST: Final = HERE / "allow.txt"
#: the broker version kafka-python infers from the API ranges LogStore advertises
#: (`kafka.protocol.broker_version_data`); the suite gates its tests on it
KAFKA_VERSION: Final = "2.4.0"
#: LogStore's equivalents of what the suite's own Kafka config sets (its kafka.properties:
#: num.partitions=4, group.initial.rebalance.delay.ms=0 and group.min.session.timeout.ms=1000)
BROKER_ARGS: Final = (
    "--num-partitions=4",
    "--group-initial-rebalance-delay-ms=0",
    "--group-min-session-timeout-ms=1000",
)
#: seconds any one test of the suite may take before pytest-timeout fails it
PER_TEST_TIMEOUT_S: Final = 60
#: kafka-python's optional codec libraries, as its users install them (`pip install lz4
#: python-snappy`): without them the suite skips its lz4 and snappy tests. Installed into
#: the suite's cache directory, never into the venv.
CODEC_PACKAGES: Final = ("lz4==4.4.5", "python-snappy==0.7.3")
#: seconds each download may take
DOWNLOAD_TIMEOUT_S: Final = 300

_SHIMS: Final = {
    "test/__init__.py": "",
    "test/service.py": '''\
"""Added by LogStore's runner: the sdist ships no test/service.py, which the fixtures import.

With KAFKA_URI set the fixtures only name the broker someone else runs (ExternalService);
they never spawn a Kafka (SpawnedService), so this module provides just that.
"""


class ExternalService:
    def __init__(self, host, port):
        self.host = host
        self.port = port

    def open(self):
        pass

    def close(self):
        pass

    def start(self):
        pass

    def stop(self):
        pass

    def dump_logs(self):
        pass

    def wait_for(self, pattern, timeout=30):
        return True


class SpawnedService:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("this run uses an external broker (KAFKA_URI); it spawns no Kafka")
''',
    "pytest.ini": """\
[pytest]
# Written by LogStore's runner: quiet logs, none of the sdist's own pytest settings.
log_level = WARNING
filterwarnings =
    ignore::DeprecationWarning
""",
}
_PREPARED: Final = ".prepared"


class SuiteUnavailableError(RuntimeError):
    """The suite could not be downloaded or unpacked (message: one line, says why)."""


@dataclass(frozen=True)
class Outcome:
    """One test's result: `passed`, `failed`, `error`, `skipped` or `not run`, and why."""

    test_id: str
    outcome: str
    reason: str = ""


def suite_version() -> str:
    return importlib.metadata.version(SUITE)


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "logstore" / "third-party"


def prepared_suite(version: str | None = None, root: Path | None = None) -> Path:
    """The directory `prepare_suite` made, without touching the network (the test suite's
    rule: traffic only to 127.0.0.1). Raises SuiteUnavailableError, one line saying how to
    prepare it, when it is not there."""
    version = version or suite_version()
    target = (root or cache_root()) / f"{SUITE}-{version}"
    stamp = " ".join([f"{SUITE}=={version}", *CODEC_PACKAGES]) + "\n"
    if _read(target / _PREPARED) != stamp:
        raise SuiteUnavailableError(
            f"{SUITE} {version}'s test suite is not prepared: run "
            "`.venv/bin/python -m tests.kafka.third_party.run --prepare` (.ci/run does)"
        )
    return target


def prepare_suite(version: str | None = None, root: Path | None = None) -> Path:
    """The directory holding kafka-python's `test/` for `version`, downloading it once.

    Invariant: a directory is returned only once it holds the tests and the shims; a
    half-done preparation is left in a temporary directory and never reused.
    """
    version = version or suite_version()
    root = root or cache_root()
    target = root / f"{SUITE}-{version}"
    stamp = " ".join([f"{SUITE}=={version}", *CODEC_PACKAGES]) + "\n"
    if _read(target / _PREPARED) == stamp:
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{SUITE}-{version}-", dir=root))
    try:
        archive = _download_sdist(version, staging / "download")
        _extract_tests(archive, f"kafka_python-{version}/", staging)
        for relative, text in _SHIMS.items():
            (staging / relative).write_text(text)
        (staging / "no-kafka-install").mkdir()
        _pip(["install", "--target", str(staging / "codecs"), *CODEC_PACKAGES])
        (staging / _PREPARED).write_text(stamp)
        shutil.rmtree(staging / "download")
        if _read(target / _PREPARED) != stamp:
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _read(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def _pip(args: list[str]) -> None:
    command = [sys.executable, "-m", "pip", "--quiet", "--disable-pip-version-check", *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise SuiteUnavailableError(f"pip {' '.join(args)} ran over {exc.timeout}s") from exc
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SuiteUnavailableError(f"pip {' '.join(args)} failed: {last}")


def _download_sdist(version: str, into: Path) -> Path:
    _pip(["download", "--no-deps", "--no-binary", ":all:", f"{SUITE}=={version}", "-d", str(into)])
    archives = sorted(into.glob("*.tar.gz"))
    if not archives:
        raise SuiteUnavailableError(f"pip download {SUITE}=={version} saved no sdist")
    return archives[0]


def _extract_tests(archive: Path, prefix: str, into: Path) -> None:
    """Unpack only `<prefix>test/` from the sdist, as `into/test/`: the installed
    kafka-python, not the sdist's copy, is the library under test."""
    with tarfile.open(archive) as tar:
        members = []
        for member in tar.getmembers():
            if not member.name.startswith(prefix + "test/"):
                continue
            member.name = member.name[len(prefix) :]
            members.append(member)
        if not members:
            raise SuiteUnavailableError(f"{archive.name} carries no test/ directory")
        tar.extractall(into, members=members, filter="data")


def read_allow_list(path: Path = ALLOW_LIST) -> list[str]:
    """Test ids, one a line; blank lines and `#` comments are ignored."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def run_tests(
    suite: Path,
    bootstrap: str,
    test_ids: Sequence[str],
    *,
    total_timeout_s: float,
    per_test_timeout_s: int = PER_TEST_TIMEOUT_S,
) -> dict[str, Outcome]:
    """Runs `test_ids` (all of `test/integration` when empty) against the Kafka listener at
    `bootstrap`; returns each test's outcome. A test id not collected is `not run`."""
    report = suite / f"report-{os.getpid()}-{time.monotonic_ns()}.xml"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--rootdir",
        str(suite),
    ]
    command += [f"--timeout={per_test_timeout_s}", f"--junitxml={report}"]
    command += list(test_ids) or ["test/integration"]
    env = dict(
        os.environ,
        KAFKA_URI=f"tcp://{bootstrap}",
        KAFKA_VERSION=KAFKA_VERSION,
        KAFKA_ROOT=str(suite / "no-kafka-install"),
        PYTHONPATH=os.pathsep.join([str(suite / "codecs"), *_pythonpath()]),
    )
    env.pop("PYTEST_ADDOPTS", None)
    try:
        done = subprocess.run(
            command, cwd=suite, env=env, capture_output=True, text=True, timeout=total_timeout_s
        )
        outcomes = _read_report(report, suite)
    except subprocess.TimeoutExpired:
        reason = f"the run went over {total_timeout_s:.0f}s and was stopped"
        return {t: Outcome(t, "not run", reason) for t in test_ids}
    finally:
        report.unlink(missing_ok=True)
    # pytest runs nothing when an id names no test; its last line of output says which.
    said = (done.stdout + done.stderr).strip().splitlines()
    reason = "not collected" if outcomes or not said else f"not collected: {_one_line(said[-1])}"
    for test_id in test_ids:
        outcomes.setdefault(test_id, Outcome(test_id, "not run", reason))
    return outcomes


def _pythonpath() -> list[str]:
    given = os.environ.get("PYTHONPATH", "")
    return given.split(os.pathsep) if given else []


def _read_report(report: Path, suite: Path) -> dict[str, Outcome]:
    if not report.is_file():
        return {}
    outcomes: dict[str, Outcome] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        test_id = _test_id(case.get("classname", ""), case.get("name", ""), suite)
        previous = outcomes.get(test_id)
        # A test that passed its call but failed its teardown is reported twice: the
        # failure is its outcome.
        if previous is None or previous.outcome == "passed":
            outcomes[test_id] = Outcome(test_id, *_case_outcome(case))
    return outcomes


def _case_outcome(case: ET.Element) -> tuple[str, str]:
    for tag, outcome in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
        found = case.find(tag)
        if found is not None:
            return outcome, _one_line(found.get("message") or found.text or "")
    return "passed", ""


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _test_id(classname: str, name: str, suite: Path) -> str:
    """JUnit's dotted classname back to pytest's id: `test/x.py::Class::name`."""
    parts = classname.split(".")
    for cut in range(len(parts), 0, -1):
        module = "/".join(parts[:cut]) + ".py"
        if (suite / module).is_file():
            return "::".join([module, *parts[cut:], name])
    return f"{classname}::{name}"


def summarize(outcomes: Iterable[Outcome]) -> str:
    """Counts by outcome, e.g. `12 passed, 3 failed, 2 skipped`."""
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.outcome] = counts.get(o.outcome, 0) + 1
    order = ["passed", "failed", "error", "skipped", "not run"]
    return ", ".join(f"{counts[k]} {k}" for k in order if k in counts) or "no test"


def _run_against_new_broker(
    suite: Path, test_ids: Sequence[str], total_timeout_s: float
) -> dict[str, Outcome]:
    with tempfile.TemporaryDirectory(prefix="logstore-third-party-") as tmp:
        broker = KafkaBrokerProcess(Path(tmp) / "data", list(BROKER_ARGS))
        broker.start()
        try:
            return run_tests(suite, broker.bootstrap, test_ids, total_timeout_s=total_timeout_s)
        finally:
            broker.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("test_ids", nargs="*", help="test ids (default: allow.txt)")
    parser.add_argument("--all", action="store_true", help="every test of test/integration")
    parser.add_argument("--bootstrap", help="a running Kafka listener (default: start a broker)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds for the whole run")
    parser.add_argument(
        "--prepare", action="store_true", help="only download and unpack the suite (needs PyPI)"
    )
    args = parser.parse_args(argv)
    if args.prepare:
        print(f"{SUITE} {suite_version()}'s suite is in {prepare_suite()}")
        return 0
    ids = [] if args.all else (args.test_ids or read_allow_list())
    suite = prepare_suite()
    if args.bootstrap:
        outcomes = run_tests(suite, args.bootstrap, ids, total_timeout_s=args.timeout)
    else:
        outcomes = _run_against_new_broker(suite, ids, args.timeout)
    for o in sorted(outcomes.values(), key=lambda o: o.test_id):
        print(f"{o.outcome.upper():8} {o.test_id}" + (f" - {o.reason}" if o.reason else ""))
    print(f"{SUITE} {suite_version()} against LogStore: {summarize(outcomes.values())}")
    return 0 if all(outcomes[t].outcome == "passed" for t in ids) else 1


if __name__ == "__main__":
    sys.exit(main())
