"""log_validator: offsets assigned by patching bytes outside the CRC without copying a
batch's body, and the checks that stored batches continue the log."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logstore.codec import format as fmt
from logstore.codec import record_batch as rb
from logstore.errors import CorruptRecordError, InvalidRecordError, InvalidRequestError
from logstore.storage.log_validator import (
    assign_offsets,
    check_offsets_follow,
    check_producer_batches,
    split_stored_batches,
)
from tests.helpers import make_records

PROPERTY = settings(max_examples=40, deadline=None)


def _batches(counts: list[int]) -> bytes:
    return b"".join(
        rb.encode_batch(make_records(f"b{i}", n), base_offset=0) for i, n in enumerate(counts)
    )


@PROPERTY
@given(
    counts=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    next_offset=st.integers(0, 2**40),
    leader_epoch=st.one_of(st.none(), st.integers(0, 2**31 - 1)),
)
def test_assigned_offsets_patch_only_the_prefix_and_pass_bodies_through_uncopied(
    counts: list[int], next_offset: int, leader_epoch: int | None
) -> None:
    data = _batches(counts)
    view = memoryview(data)
    headers = rb.split_batches(view)
    buffers, final = assign_offsets(view, headers, next_offset, -1, leader_epoch)
    written = b"".join(buffers)
    assert len(written) == len(data)
    # every body is a view of the caller's bytes, never a copy
    bodies = [b for b in buffers if isinstance(b, memoryview)]
    assert len(bodies) == len(counts) and all(b.obj is data for b in bodies)
    prefix = fmt.BATCH_PREFIX.size if leader_epoch is not None else fmt.BATCH_LENGTH_OFFSET
    position = 0
    expected_base = next_offset
    for before, after in zip(headers, rb.split_batches(written), strict=True):
        assert after == rb.read_header(written, position)  # CRC still valid: split checked it
        assert after.base_offset == expected_base
        epoch = before.partition_leader_epoch if leader_epoch is None else leader_epoch
        assert after.partition_leader_epoch == epoch
        assert (
            written[position + prefix : position + after.size]
            == data[position + prefix : position + before.size]
        )
        position += before.size
        expected_base += before.record_count
    assert final == rb.split_batches(written)


def test_log_append_time_copies_each_batch_once_and_stamps_it() -> None:
    data = _batches([2, 3])
    headers = rb.split_batches(data)
    buffers, final = assign_offsets(data, headers, 10, 1_700_000_000_123, 4)
    assert [type(b) for b in buffers] == [bytearray, bytearray]
    stored = rb.split_batches(b"".join(buffers))
    assert stored == final
    assert [(h.base_offset, h.partition_leader_epoch) for h in final] == [(10, 4), (12, 4)]
    assert all(h.max_timestamp == 1_700_000_000_123 for h in final)
    assert all(h.attributes & fmt.TIMESTAMP_TYPE_MASK for h in final)


def test_stored_batches_must_start_at_the_log_end_and_follow_each_other() -> None:
    first = rb.encode_batch(make_records("a", 2), base_offset=5)
    second = rb.encode_batch(make_records("b", 3), base_offset=7)
    headers = split_stored_batches(first + second)
    assert check_offsets_follow(headers, 5, "t-0") == 10
    with pytest.raises(InvalidRequestError, match=r"t-0: .* at offset 5, but the log end .* 4"):
        check_offsets_follow(headers, 4, "t-0")
    gap = split_stored_batches(first + rb.encode_batch(make_records("c", 1), base_offset=8))
    with pytest.raises(InvalidRequestError, match=r"offset 8, but the previous batch's end is 7"):
        check_offsets_follow(gap, 5, "t-0")


def test_an_empty_buffer_holds_no_stored_batch() -> None:
    with pytest.raises(CorruptRecordError, match="no record batch"):
        split_stored_batches(b"")


def test_compacted_topics_refuse_keyless_records_and_idempotent_requests_one_batch() -> None:
    keyless = rb.encode_batch([(None, b"v", None, 1_000)])
    with pytest.raises(InvalidRecordError, match="without a key"):
        check_producer_batches(keyless, rb.split_batches(keyless), compact=True)
    assert not check_producer_batches(keyless, rb.split_batches(keyless), compact=False)
    idempotent = rb.encode_batch(
        make_records("p", 1), producer_id=3, producer_epoch=0, base_sequence=0
    )
    assert check_producer_batches(idempotent, rb.split_batches(idempotent), compact=False)
    two = idempotent + idempotent
    with pytest.raises(InvalidRecordError, match="one batch per partition per request"):
        check_producer_batches(two, rb.split_batches(two), compact=False)
