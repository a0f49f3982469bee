"""Batches on their way into a partition log: the log's checks and its offset assignment
(Kafka's LogValidator).

Invariants:
- Every check runs before any byte reaches the log: a request that fails one writes
  nothing.
- A producer's batches have passed `rb.split_batches` (framing, CRC, counts,
  max.message.bytes); a leader's stored batches, which a follower takes byte for byte,
  pass `split_stored_batches` (framing and CRC; compaction may have thinned them, so a
  batch may hold fewer records than offsets) and must continue the log without a gap.
- Records are decoded only for a compacted topic, to refuse a record without a key.
- `assign_offsets` patches only bytes outside the CRC (base offset; with a leader epoch
  also batchLength, partitionLeaderEpoch and magic) and passes the rest of each batch on
  as a memoryview slice, never a copy; a LogAppendTime topic rewrites the timestamps and
  CRC, which costs one copy per batch.
"""

from __future__ import annotations

from collections.abc import Sequence

from logstore.codec import format as fmt
from logstore.codec import record_batch as rb
from logstore.codec.record_batch import BatchHeader
from logstore.errors import CorruptRecordError, InvalidRecordError, InvalidRequestError


def check_producer_batches(
    view: bytes | memoryview, headers: Sequence[BatchHeader], *, compact: bool
) -> bool:
    """Apply the log's rules to a producer's validated batches; return whether they come
    from an idempotent producer (one batch per request, so duplicates can be found)."""
    if compact:
        require_keys(view, headers)
    for header in headers:  # a loop, not any(): this runs on every produce request
        if header.producer_id >= 0:
            if len(headers) > 1:
                raise InvalidRecordError(
                    "an idempotent producer must send one batch per partition per request"
                )
            return True
    return False


def require_keys(view: bytes | memoryview, headers: Sequence[BatchHeader]) -> None:
    """A compacted topic keeps the latest record per key: a record without one is refused,
    as Kafka does (the only place the broker decodes records, and only for such topics)."""
    position = 0
    for header in headers:
        for record in rb.decode_batch(view, position, verify_crc=False).records:
            if record.key is None:
                raise InvalidRecordError(
                    "a compacted topic (cleanup.policy=compact) cannot accept a record "
                    "without a key"
                )
        position += header.size


def split_stored_batches(view: bytes | memoryview) -> list[BatchHeader]:
    """Validate that `view` is whole, valid batches as a log stores them (compaction may
    have thinned them: fewer records than offsets); return their headers."""
    headers: list[BatchHeader] = []
    position = 0
    while position < len(view):
        header = rb.validate_batch(view, position, dense=False)
        headers.append(header)
        position += header.size
    if not headers:
        raise CorruptRecordError("no record batch in an empty buffer")
    return headers


def check_offsets_follow(headers: Sequence[BatchHeader], log_end_offset: int, name: str) -> int:
    """Stored batches must start at `log_end_offset` and each follow the previous one, else
    InvalidRequestError naming both offsets (`name`: the partition). Returns the offset
    after the last batch: the log end offset once they are appended."""
    expected = log_end_offset
    for i, header in enumerate(headers):
        if header.base_offset != expected:
            where = "the log end offset" if i == 0 else "the previous batch's end"
            raise InvalidRequestError(
                f"{name}: a replicated batch starts at offset "
                f"{header.base_offset}, but {where} is {expected}"
            )
        expected = header.next_offset
    return expected


def assign_offsets(
    view: bytes | memoryview,
    headers: Sequence[BatchHeader],
    next_offset: int,
    log_append_time: int,
    leader_epoch: int | None = None,
) -> tuple[list[bytes | memoryview], list[BatchHeader]]:
    """Buffers to write (new 8-byte base offsets + untouched rest) and final headers.

    Only the 8 offset bytes are new (17 with a `leader_epoch`: offset, length, epoch and
    magic, none covered by the CRC); the rest of each batch is passed through as a
    memoryview, so a 1 MiB batch is not copied before it reaches the file. LogAppendTime
    topics (`log_append_time` >= 0, ms) rewrite the timestamp fields and CRC, which needs
    one copy per batch.
    """
    buffers: list[bytes | memoryview] = []
    final_headers: list[BatchHeader] = []
    mv = memoryview(view)
    after_base_offset = fmt.BATCH_LENGTH_OFFSET
    after_prefix = fmt.BATCH_PREFIX.size
    pos = 0
    for header in headers:
        size = header.size
        if log_append_time >= 0:
            copy = bytearray(mv[pos : pos + size])
            rb.set_base_offset(copy, 0, next_offset)
            if leader_epoch is not None:
                rb.set_partition_leader_epoch(copy, 0, leader_epoch)
            rb.set_log_append_time(copy, 0, size, log_append_time)
            buffers.append(copy)
            header = rb.read_header(copy)
        elif leader_epoch is None:
            buffers.append(fmt.INT64.pack(next_offset))
            buffers.append(mv[pos + after_base_offset : pos + size])
            header = header._replace(base_offset=next_offset)
        else:
            prefix = fmt.BATCH_PREFIX.pack(
                next_offset, header.batch_length, leader_epoch, header.magic
            )
            buffers.append(prefix)
            buffers.append(mv[pos + after_prefix : pos + size])
            header = header._replace(base_offset=next_offset, partition_leader_epoch=leader_epoch)
        final_headers.append(header)
        next_offset += header.record_count
        pos += size
    return buffers, final_headers
