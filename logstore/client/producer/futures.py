"""The futures a producer hands out: one per `send()` record, one per `send_batch()` call.

A record's future is a view of its batch (`RecordFuture`), so finishing a batch of N records
costs O(1) plus the futures someone waits on. `concurrent.futures.wait`, `as_completed` and
`Future`'s own methods read a future's private attributes (`_condition`, `_state`,
`_result`, `_exception`, `_waiters`, `_done_callbacks`); the view supplies them as
properties. That protocol is CPython's, not a public API, so the view is used only on the
versions it was checked against and only when a probe of `Future` still matches
(`VIEW_FUTURES`); elsewhere each record gets a plain `Future`, settled one by one: slower,
but built on public methods only. tests/client/producer/test_futures.py fails on a Python
where the probe no longer matches, so the range is re-checked rather than silently slow.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, NamedTuple

from logstore.types import RecordMetadata

if TYPE_CHECKING:
    from logstore.client.producer.accumulator import Batch, Outcome

#: `Future`'s state strings (CPython's concurrent.futures, checked by `_view_protocol_holds`)
PENDING = "PENDING"
FINISHED = "FINISHED"
#: the CPython versions whose `Future` internals the record view was checked against
VIEW_TESTED_VERSIONS = ((3, 11), (3, 12), (3, 13))
_VIEW_ATTRIBUTES = (
    "_condition",
    "_state",
    "_result",
    "_exception",
    "_waiters",
    "_done_callbacks",
    "_invoke_callbacks",
)


def _view_protocol_holds() -> bool:
    """Whether this interpreter's `Future` keeps its state where `RecordFuture` mimics it."""
    if sys.implementation.name != "cpython":
        return False
    if tuple(sys.version_info[:2]) not in VIEW_TESTED_VERSIONS:
        return False
    probe: Future[int] = Future()
    if not all(hasattr(probe, name) for name in _VIEW_ATTRIBUTES):
        return False
    if probe._state != PENDING or not isinstance(probe._waiters, list):  # type: ignore[attr-defined]
        return False
    probe.set_result(1)
    return probe._state == FINISHED and probe._result == 1  # type: ignore[attr-defined]


#: True when record futures are batch views; False: one plain `Future` per record
VIEW_FUTURES = _view_protocol_holds()


class BatchMetadata(NamedTuple):
    """Where one batch of a `Producer.send_batch` call landed: offsets
    ``base_offset .. base_offset + record_count - 1`` of ``topic``-``partition``."""

    topic: str
    partition: int
    base_offset: int
    record_count: int


class RecordFuture(Future[RecordMetadata]):
    """The `concurrent.futures.Future` of one record: a view of its batch.

    Why: a plain `Future()` builds a Condition, an RLock and two lists per record, and
    finishing it costs as much again; with hundreds of thousands of records in flight that
    (and the garbage collector walking those objects) costs more than the rest of the
    producer. Here the attributes `Future`'s methods read are properties over the batch
    (see the module docstring), so a batch is finished in O(1), plus the futures someone
    waits on or added a callback to (they register in `Batch.watched`).

    Invariants: the state is the batch's; `_result` is built on demand from the batch's base
    offset and the record's index and timestamp (ms). A record future cannot be cancelled or
    completed from outside (the record may already be on the wire).
    """

    __slots__ = ("_batch", "_callback_list", "_index", "_waiter_list")

    def __init__(self, batch: Batch, index: int) -> None:  # no super(): see docstring
        self._batch = batch
        self._index = index
        self._waiter_list: list[Any] | None = None
        self._callback_list: list[Callable[[Future[Any]], object]] | None = None

    @property
    def _condition(self) -> threading.Condition:
        return self._batch.condition

    @property
    def _state(self) -> str:
        return self._batch.state

    @property
    def _exception(self) -> BaseException | None:
        error = self._batch.error
        if error is not None:
            # One exception serves every record of the batch; each raise would otherwise
            # append its frames to the same traceback.
            error.__traceback__ = None
        return error

    @property
    def _result(self) -> RecordMetadata:
        return self._batch.metadata(self._index)

    @property
    def _waiters(self) -> list[Any]:
        if self._waiter_list is None:
            self._waiter_list = []
            self._batch.watched[self] = None
        return self._waiter_list

    @property
    def _done_callbacks(self) -> list[Callable[[Future[Any]], object]]:
        if self._callback_list is None:
            self._callback_list = []
            self._batch.watched[self] = None
        return self._callback_list

    def result(self, timeout: float | None = None) -> RecordMetadata:
        """The record's metadata; waits up to `timeout` s (None: no limit) for the broker."""
        batch = self._batch
        # `state` is set to FINISHED once, under the batch's condition, and never changes
        # again: reading it without the lock is safe and spares every later call the lock.
        if batch.state is FINISHED:
            if batch.error is not None:
                raise batch.error.with_traceback(None)
            return batch.metadata(self._index)
        return super().result(timeout)

    def cancel(self) -> bool:
        """Always False: a record handed to the producer cannot be recalled."""
        return False

    # Only the producer settles a record: its state lives in the batch.
    def set_running_or_notify_cancel(self) -> bool:
        raise RuntimeError("a record future is run by the producer")

    def set_result(self, result: object) -> None:
        raise RuntimeError("a record future is completed by the producer")

    def set_exception(self, exception: BaseException | None) -> None:
        raise RuntimeError("a record future is completed by the producer")


def plain_record_future(batch: Batch, index: int) -> Future[RecordMetadata]:
    """A record's future where the view cannot be used: a real `Future`, already running
    (so `cancel()` is False, as for the view), settled when its batch finishes."""
    future: Future[RecordMetadata] = Future()
    future.set_running_or_notify_cancel()
    if batch.plain is None:
        batch.plain = []
    batch.plain.append((index, future))
    return future


#: what `send()` calls to make a record's future: (batch, index of the record in it)
new_record_future: Callable[[Batch, int], Future[RecordMetadata]] = (
    RecordFuture if VIEW_FUTURES else plain_record_future
)


def finish_batch_futures(
    batch: Batch, base_offset: int, log_append_time: int, error: BaseException | None
) -> None:
    """Finish every record future of `batch` at once: they all read the batch's state."""
    with batch.condition:
        batch.base_offset = base_offset
        batch.log_append_time = log_append_time
        batch.error = error
        batch.state = FINISHED
        watched = list(batch.watched)
        for future in watched:
            for waiter in future._waiter_list or ():
                if error is None:
                    waiter.add_result(future)
                else:
                    waiter.add_exception(future)
        batch.condition.notify_all()
    for future in watched:
        if future._callback_list:
            future._invoke_callbacks()  # type: ignore[attr-defined]
    for index, plain in batch.plain or ():
        if error is None:
            plain.set_result(batch.metadata(index))
        else:
            plain.set_exception(error)


def failed_future(exc: BaseException) -> Future[Any]:
    """A future that has already failed with `exc`."""
    future: Future[Any] = Future()
    future.set_exception(exc)
    return future


def settle(outcome: Outcome) -> None:
    """Settle the futures of one claimed batch (no lock held: callbacks may run)."""
    batch, base_offset, log_append_time, error = outcome
    batch.data = b""  # futures may outlive the batch's trip: keep only what they read
    if batch.group is None:
        finish_batch_futures(batch, base_offset, log_append_time, error)
    elif error is None:
        part = batch.part
        batch.group.acknowledged(
            batch.group_index,
            BatchMetadata(part.topic.name, part.partition, base_offset, batch.record_count),
        )
    else:
        batch.group.failed(error)


class BatchGroup:
    """The batches of one `send_batch` call and the future of their `BatchMetadata` list.

    Invariant: the future is settled once: after `seal()`, when every batch added has been
    acknowledged, or at the first batch failure (the other batches are still delivered).
    """

    def __init__(self) -> None:
        self.future: Future[list[BatchMetadata]] = Future()
        self._results: list[BatchMetadata | None] = []
        self._pending = 0
        self._sealed = False
        self._settled = False
        self._lock = threading.Lock()

    def add(self) -> int:
        """Count one more batch; returns its index in the results."""
        with self._lock:
            self._results.append(None)
            self._pending += 1
            return len(self._results) - 1

    def acknowledged(self, index: int, metadata: BatchMetadata) -> None:
        with self._lock:
            self._results[index] = metadata
            self._pending -= 1
            results = self._settle_if_complete()
        if results is not None:
            self.future.set_result(results)

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            self._pending -= 1
            first = not self._settled
            self._settled = True
        if first:
            self.future.set_exception(exc)

    def seal(self) -> None:
        with self._lock:
            self._sealed = True
            results = self._settle_if_complete()
        if results is not None:
            self.future.set_result(results)

    def _settle_if_complete(self) -> list[BatchMetadata] | None:
        """The results, once, when sealed and nothing is pending (lock held)."""
        if self._settled or not self._sealed or self._pending:
            return None
        self._settled = True
        return [md for md in self._results if md is not None]
