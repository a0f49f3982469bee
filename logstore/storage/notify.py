"""Wake-ups for long-polling readers when records arrive."""

from __future__ import annotations

import threading
from collections.abc import Callable


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

    def poke(self) -> None:
        """Wake every waiter to re-check its `also` condition, without a new version."""
        with self._condition:
            self._condition.notify_all()

    def wait_for_change(
        self, seen_version: int, timeout_s: float, also: Callable[[], bool] | None = None
    ) -> int:
        """Block until the version differs from `seen_version`, `also()` is true (checked
        at each wake-up, e.g. after `poke`), or `timeout_s` passes."""
        with self._condition:
            if also is None:
                self._condition.wait_for(lambda: self._version != seen_version, timeout_s)
            else:
                self._condition.wait_for(lambda: self._version != seen_version or also(), timeout_s)
            return self._version
