"""Long-poll wake-ups."""

from __future__ import annotations

import threading
import time

from logstore.storage.notify import AppendNotifier


def test_wait_returns_at_once_when_an_append_happened_since_the_read() -> None:
    notifier = AppendNotifier()
    seen = notifier.version
    notifier.notify()
    started = time.monotonic()
    assert notifier.wait_for_change(seen, 5.0) == seen + 1
    assert time.monotonic() - started < 1.0


def test_wait_wakes_on_notify_and_times_out_without() -> None:
    notifier = AppendNotifier()
    started = time.monotonic()
    assert notifier.wait_for_change(notifier.version, 0.1) == 0
    assert time.monotonic() - started >= 0.09
    timer = threading.Timer(0.1, notifier.notify)
    timer.start()
    started = time.monotonic()
    assert notifier.wait_for_change(0, 5.0) == 1
    assert time.monotonic() - started < 2.0
    timer.join(timeout=5)
