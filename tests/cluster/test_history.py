"""The history checks of tests/cluster/history.py accept every correct log and catch each
kind of broken promise (no cluster needed: the checks are pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from logstore.codec import record_batch as rb
from tests.cluster.history import (
    History,
    check_consumed,
    check_epochs_never_decrease,
    check_history,
    check_unique_values,
)


def log_of(values: list[bytes]) -> list[rb.Record]:
    return [rb.Record(offset, 0, None, value, ()) for offset, value in enumerate(values)]


@st.composite
def runs(draw: st.DrawFn) -> tuple[list[rb.Record], dict[bytes, int], dict[int, bytes]]:
    """A log of unique values, some of them acknowledged, a prefix of it consumed."""
    size = draw(st.integers(min_value=1, max_value=60))
    records = log_of([f"v{i}".encode() for i in range(size)])
    acked = draw(st.sets(st.integers(min_value=0, max_value=size - 1), min_size=1))
    consumed = draw(st.integers(min_value=0, max_value=size))
    assert all(r.value is not None for r in records)
    acknowledged = {records[o].value: o for o in acked if records[o].value is not None}
    seen = {r.offset: r.value for r in records[:consumed] if r.value is not None}
    return records, acknowledged, seen


@given(runs())
def test_a_correct_log_passes_every_check(
    run: tuple[list[rb.Record], dict[bytes, int], dict[int, bytes]],
) -> None:
    records, acknowledged, consumed = run
    check_history(acknowledged, records)
    check_unique_values(records)
    check_consumed(consumed, records)


@given(runs(), st.data())
def test_a_lost_acknowledged_record_is_caught(
    run: tuple[list[rb.Record], dict[bytes, int], dict[int, bytes]], data: st.DataObject
) -> None:
    records, acknowledged, _ = run
    lost = data.draw(st.sampled_from(sorted(acknowledged.values())))
    # Truncated below it, or overwritten in place by a record no one acknowledged.
    with pytest.raises(AssertionError):
        check_history(acknowledged, records[:lost])
    overwritten = list(records)
    overwritten[lost] = rb.Record(lost, 0, None, b"other", ())
    with pytest.raises(AssertionError, match="acknowledged at"):
        check_history(acknowledged, overwritten)


@given(runs(), st.data())
def test_an_acknowledged_record_at_another_offset_is_caught(
    run: tuple[list[rb.Record], dict[bytes, int], dict[int, bytes]], data: st.DataObject
) -> None:
    records, acknowledged, _ = run
    moved = data.draw(st.sampled_from(sorted(acknowledged.values())))
    shifted = log_of([b"extra"] + [r.value or b"" for r in records])
    with pytest.raises(AssertionError, match="acknowledged at"):
        check_history(acknowledged, shifted)
    stored_twice = log_of([r.value or b"" for r in records] + [records[moved].value or b""])
    with pytest.raises(AssertionError, match="acknowledged at"):
        check_history(acknowledged, stored_twice)
    with pytest.raises(AssertionError, match="more than once"):
        check_unique_values(stored_twice)


def test_a_gap_in_the_offsets_is_caught() -> None:
    records = log_of([b"a", b"b", b"c"])
    with pytest.raises(AssertionError, match="dense"):
        check_history({}, [records[0], records[2]])


@given(runs(), st.data())
def test_a_consumed_record_that_vanished_is_caught(
    run: tuple[list[rb.Record], dict[bytes, int], dict[int, bytes]], data: st.DataObject
) -> None:
    records, _, _ = run
    offset = data.draw(st.integers(min_value=0, max_value=len(records) - 1))
    consumed = {offset: records[offset].value or b""}
    with pytest.raises(AssertionError, match="not in the final log"):
        check_consumed(consumed, records[:offset])
    replaced = list(records)
    replaced[offset] = rb.Record(offset, 0, None, b"replacement", ())
    with pytest.raises(AssertionError, match="not in the final log"):
        check_consumed(consumed, replaced)


def test_a_record_read_twice_with_different_values_is_a_violation() -> None:
    history = History()
    history.consume(5, b"a")
    history.consume(5, b"a")
    assert history.snapshot()[2] == []
    history.consume(5, b"b")
    assert history.snapshot()[2] == ["offset 5 read as b'a', later as b'b'"]


@given(st.lists(st.integers(min_value=0, max_value=5), min_size=2, max_size=8))
def test_leader_epochs_must_never_decrease_along_the_log(epochs: list[int]) -> None:
    batches = [
        rb.encode_batch([(None, b"v", None, 0)], base_offset=i, partition_leader_epoch=epoch)
        for i, epoch in enumerate(epochs)
    ]
    if epochs == sorted(epochs):
        check_epochs_never_decrease(batches)
    else:
        with pytest.raises(AssertionError, match="decrease"):
            check_epochs_never_decrease(batches)
