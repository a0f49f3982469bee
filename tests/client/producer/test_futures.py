"""Record futures: views of their batch where CPython's `Future` internals allow, plain
futures elsewhere, with the same public behaviour either way."""

from __future__ import annotations

import concurrent.futures
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future

import pytest

from logstore import errors
from logstore.client.producer import futures
from logstore.client.producer.accumulator import Batch
from logstore.types import RecordMetadata

from .world import World

WAIT_S = 10


def test_the_view_is_used_on_this_python() -> None:
    """Fails when CPython moves `Future`'s private state: the producer would silently fall
    back to a plain Future per record (several times slower per record). Check the new
    internals against `RecordFuture`'s properties, then extend VIEW_TESTED_VERSIONS."""
    version = sys.version_info[:2]
    assert version in futures.VIEW_TESTED_VERSIONS, (
        f"Python {version}: record futures were not checked against this Future"
    )
    assert futures.VIEW_FUTURES, f"Future's private protocol changed in Python {version}"
    assert futures.new_record_future is futures.RecordFuture


def _batch_of(world: World, count: int) -> Batch:
    batch = None
    for _ in range(count):
        batch = world.append()
    assert batch is not None
    world.encode_due(force=True)
    return batch


MAKERS: list[Callable[[Batch, int], Future[RecordMetadata]]] = [
    futures.RecordFuture,
    futures.plain_record_future,
]


@pytest.mark.parametrize("make", MAKERS, ids=["view", "plain"])
def test_record_futures_behave_like_futures(
    make: Callable[[Batch, int], Future[RecordMetadata]],
) -> None:
    world = World()
    batch = _batch_of(world, 2)
    first, second = make(batch, 0), make(batch, 1)
    called: list[int] = []
    first.add_done_callback(lambda f: called.append(f.result().offset))
    assert not first.done() and not first.cancel() and not first.cancelled()
    with pytest.raises(concurrent.futures.TimeoutError):
        second.result(timeout=0.01)
    finisher = threading.Thread(target=futures.finish_batch_futures, args=(batch, 40, -1, None))
    finisher.start()
    done, pending = concurrent.futures.wait([first, second], timeout=WAIT_S)
    finisher.join(WAIT_S)
    assert (len(done), len(pending)) == (2, 0)
    assert sorted(f.result().offset for f in concurrent.futures.as_completed(done)) == [40, 41]
    assert called == [40]
    assert second.result() == RecordMetadata("t", 0, 41, 1_000) and second.exception() is None
    late: list[int] = []
    second.add_done_callback(lambda f: late.append(f.result().offset))
    assert late == [41]
    assert "finished" in repr(second)


@pytest.mark.parametrize("make", MAKERS, ids=["view", "plain"])
def test_a_failed_batch_fails_every_record(
    make: Callable[[Batch, int], Future[RecordMetadata]],
) -> None:
    world = World()
    batch = _batch_of(world, 3)
    records = [make(batch, i) for i in range(3)]
    error = errors.RecordTooLargeError("too large")
    futures.finish_batch_futures(batch, -1, -1, error)
    for future in records:
        assert future.done() and future.exception() is error
        with pytest.raises(errors.RecordTooLargeError):
            future.result(0)


def test_the_log_append_time_replaces_the_create_time() -> None:
    world = World()
    batch = _batch_of(world, 1)
    future = futures.RecordFuture(batch, 0)
    futures.finish_batch_futures(batch, 5, 1_234_567, None)
    assert future.result(0) == RecordMetadata("t", 0, 5, 1_234_567)


def test_only_the_producer_settles_a_view() -> None:
    future = futures.RecordFuture(_batch_of(World(), 1), 0)
    with pytest.raises(RuntimeError):
        future.set_result(None)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        future.set_exception(ValueError())


def test_a_batch_group_settles_once() -> None:
    group = futures.BatchGroup()
    first, second = group.add(), group.add()
    group.seal()
    md = futures.BatchMetadata("t", 0, 0, 10)
    group.acknowledged(first, md)
    assert not group.future.done()
    group.acknowledged(second, md._replace(base_offset=10))
    assert [m.base_offset for m in group.future.result(0)] == [0, 10]
    failing = futures.BatchGroup()
    failing.add(), failing.add()
    failing.failed(errors.StorageError("disk"))
    failing.failed(errors.StorageError("again"))
    failing.seal()
    assert str(failing.future.exception(0)) == "disk"
