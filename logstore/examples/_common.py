"""What every example shares: arguments, unique topic names, printing, the exit status."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping

from logstore import Admin
from logstore.errors import LogStoreError, TopicExistsError

DEFAULT_TIMEOUT_S = 30.0


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--bootstrap-server",
        default=os.environ.get("LOGSTORE_BOOTSTRAP", "127.0.0.1:9092"),
        metavar="HOST:PORT",
        help="broker address (env LOGSTORE_BOOTSTRAP; default 127.0.0.1:9092)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"give up after this many seconds (default {DEFAULT_TIMEOUT_S:.0f})",
    )
    return parser.parse_args()


def run_id() -> str:
    """A short id that makes this run's topic and group names its own."""
    return uuid.uuid4().hex[:8]


def create_topics(bootstrap: str, partitions: Mapping[str, int]) -> None:
    with Admin(bootstrap) as admin:
        for name, count in partitions.items():
            with contextlib.suppress(TopicExistsError):
                admin.create_topic(name, partitions=count)


_print_lock = threading.Lock()


def say(message: str) -> None:
    """One whole line on stdout, even when worker threads print at once."""
    with _print_lock:
        sys.stdout.write(message + "\n")
        sys.stdout.flush()


class Deadline:
    """The one time budget of a run (monotonic seconds)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self._end - time.monotonic())

    def passed(self) -> bool:
        return self.left() == 0.0


def wait_for(check: Callable[[], bool], deadline: Deadline, step_s: float = 0.05) -> bool:
    """Poll `check` until true or the deadline; returns the last result."""
    while not check():
        if deadline.passed():
            return False
        time.sleep(step_s)
    return True


def finish(main: Callable[[argparse.Namespace], bool], description: str) -> None:
    """Run `main(args)`; exit 0 when it returns True, 1 when False or on a LogStore error."""
    args = parse_args(description)
    try:
        ok = main(args)
    except LogStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except TimeoutError:
        print(f"error: the scenario did not finish within {args.timeout} s", file=sys.stderr)
        sys.exit(1)
    say("OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)
