"""Wake-ups for long-polling readers when records arrive."""

from __future__ import annotations

import threading


class AppendNotifier:
    """A version counter that rises on every append, and a way to wait for it to rise.

    A fetch remembers the version before it reads; if it found too little data it waits
    for a newer version (or its deadline) and reads again. Because the version is read
    before the data, an append that lands between the read and the wait is never missed.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._version = 0

    @property
    def version(self) -> int:
        return self._version

    def notify(self) -> None:
        with self._condition:
            self._version += 1
            self._condition.notify_all()

    def wait_for_change(self, seen_version: int, timeout_s: float) -> int:
        """Block until the version differs from `seen_version` or `timeout_s` passes."""
        with self._condition:
            self._condition.wait_for(lambda: self._version != seen_version, timeout_s)
            return self._version
