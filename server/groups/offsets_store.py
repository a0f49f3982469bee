"""Committed consumer-group offsets, stored durably in the internal topic `__consumer_offsets`.

Every commit is appended to the log store itself before it is acknowledged, so it survives
a kill -9 exactly like produced records do; at start-up the in-memory table is rebuilt by
reading the topic. Records use Kafka's own schemas, so Kafka tooling can read them:

OffsetCommitKey v1 (record key)::

    offset | size | field
         0 |    2 | version   int16 = 1
         2 |  2+n | group     int16 length + UTF-8
         … |  2+n | topic     int16 length + UTF-8
         … |    4 | partition int32

OffsetCommitValue v3 (record value; a null value is a tombstone that deletes the key)::

    offset | size | field
         0 |    2 | version          int16 = 3
         2 |    8 | offset           int64   the next offset the group will read
        10 |    4 | leader_epoch     int32   = -1
        14 |  2+n | metadata         int16 length + UTF-8
         … |    8 | commit_timestamp int64   ms since the epoch

In cluster mode `__consumer_offsets` is a replicated topic recorded in etcd. A broker holds
the commits of the groups whose partition it leads (it coordinates them): it replays a
partition when it becomes its leader and forgets it when it stops leading, and every
commit is appended through the leader's replication (the `replicated_append` hook) and
acknowledged only once the ISR has it, so a coordinator failover keeps it.

Retention (Kafka's offsets.retention.minutes, KIP-211): a group's offsets are deleted once
it has been empty (no members of either group protocol) for the retention period and its
newest commit is older than that too. A consumer that commits only what changed (librdkafka
never commits an unchanged offset) can go idle for longer than the retention and keep its
offsets, as long as it keeps its membership. Emptiness is not stored: a group this store
has not seen with members since it took over the group's partition (its start, standalone)
counts as empty since then.

Growth stays bounded by "snapshot and truncate": when a partition of the topic holds much
more than its live entries, the live entries are re-appended in a fresh segment and every
older segment is deleted. A crash at any point leaves a log whose replay gives the same
table: the rewrite only repeats current values, and the old segments go only after the
rewrite is fsynced.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from logstore.clock import SYSTEM_CLOCK, Clock
from logstore.codec import record_batch as rb
from logstore.codec.partitioner import partition_for_key
from logstore.errors import (
    CorruptRecordError,
    InvalidRequestError,
    LogStoreError,
    NotCoordinatorError,
)
from logstore.storage.log_manager import LogManager
from logstore.storage.partition_log import PartitionLog

log = logging.getLogger(__name__)

OFFSETS_TOPIC = "__consumer_offsets"
KEY_VERSION = 1
VALUE_VERSION = 3
#: configuration of the internal topic: never expire commits by time or size
OFFSETS_TOPIC_CONFIG = {
    "cleanup.policy": "compact",
    "retention.ms": "-1",
    "retention.bytes": "-1",
    "segment.bytes": str(16 * 1024 * 1024),
}
#: bytes of entries per batch when appending many at once (live-state rewrites)
_REWRITE_BATCH_BYTES = 256 * 1024
_I16 = struct.Struct(">h")
_KEY_TAIL = struct.Struct(">i")
_VALUE_HEAD = struct.Struct(">hqi")
_I64 = struct.Struct(">q")
MAX_METADATA_BYTES = 4096  # Kafka's offset.metadata.max.bytes

TopicPartition = tuple[str, int]


class EmptyGroups(Protocol):
    """What offset retention asks of the group coordinators (`GroupCoordinator`)."""

    def empty_for_ms(self, group_id: str) -> int | None:
        """How long the group has had no members (ms); None while it has some."""
        ...

    def forget_emptied_longer_than(self, age_ms: int) -> int:
        """Forget emptiness older than `age_ms` (it answers no retention question then)."""
        ...


@dataclass(frozen=True)
class CommittedOffset:
    """A group's committed position in one partition."""

    offset: int
    metadata: str
    commit_timestamp: int


def _encode_string(value: str) -> bytes:
    data = value.encode("utf-8")
    if len(data) > 0x7FFF:
        raise InvalidRequestError(f"string of {len(data)} bytes is too long (max 32767)")
    return _I16.pack(len(data)) + data


def _decode_string(data: bytes, pos: int) -> tuple[str, int]:
    (length,) = _I16.unpack_from(data, pos)
    pos += 2
    if length < 0 or pos + length > len(data):
        raise CorruptRecordError("offset commit string runs past its record")
    return data[pos : pos + length].decode("utf-8"), pos + length


def encode_key(group: str, topic: str, partition: int) -> bytes:
    """OffsetCommitKey v1 for (group, topic, partition)."""
    return b"".join(
        (
            _I16.pack(KEY_VERSION),
            _encode_string(group),
            _encode_string(topic),
            _KEY_TAIL.pack(partition),
        )
    )


def decode_key(data: bytes) -> tuple[str, str, int] | None:
    """(group, topic, partition) of an offset commit key; None for other key versions."""
    (version,) = _I16.unpack_from(data, 0)
    if version not in (0, 1):
        return None  # e.g. Kafka's group-metadata keys (version 2): not offsets
    group, pos = _decode_string(data, 2)
    topic, pos = _decode_string(data, pos)
    (partition,) = _KEY_TAIL.unpack_from(data, pos)
    return group, topic, partition


def encode_value(committed: CommittedOffset) -> bytes:
    """OffsetCommitValue v3."""
    return b"".join(
        (
            _VALUE_HEAD.pack(VALUE_VERSION, committed.offset, -1),
            _encode_string(committed.metadata),
            _I64.pack(committed.commit_timestamp),
        )
    )


def decode_value(data: bytes) -> CommittedOffset:
    version, offset, _leader_epoch = _VALUE_HEAD.unpack_from(data, 0)
    if version != VALUE_VERSION:
        raise CorruptRecordError(f"offset commit value version {version} is not supported")
    metadata, pos = _decode_string(data, _VALUE_HEAD.size)
    (timestamp,) = _I64.unpack_from(data, pos)
    return CommittedOffset(offset, metadata, timestamp)


class OffsetStore:
    """The table group -> (topic, partition) -> CommittedOffset, backed by a log.

    Thread-safe: one lock orders appends and table updates, so the table always equals a
    replay of the log.
    """

    def __init__(
        self,
        manager: LogManager,
        *,
        num_partitions: int = 1,
        clock: Clock = SYSTEM_CLOCK,
        rewrite_min_bytes: int = 8 * 1024 * 1024,
        replicated_append: Callable[[int, bytes], None] | None = None,
    ) -> None:
        """Standalone (`replicated_append` None): create the topic if needed and load every
        partition. Cluster mode: the topic comes from etcd; partitions are loaded by
        `load_partition` as this broker becomes their leader, and appends go through
        `replicated_append(partition, batch)`, which returns once the ISR has the batch."""
        self._manager = manager
        self._clock = clock
        self._lock = threading.Lock()
        self._rewrite_min_bytes = rewrite_min_bytes
        self._table: dict[str, dict[TopicPartition, CommittedOffset]] = {}
        #: partition name -> log size (bytes) at which to consider the next rewrite
        self._next_check_bytes: dict[str, int] = {}
        self._replicated_append = replicated_append
        #: the partitions of the topic whose groups this store holds -> since when (ms
        #: since the epoch): no group of theirs was seen with members before
        self._loaded: dict[int, int] = {}
        #: cluster mode: one commit at a time per partition while it waits for the ISR
        self._append_locks: dict[int, threading.Lock] = {}
        if replicated_append is not None:
            return
        if OFFSETS_TOPIC not in manager.topic_names():
            manager.create_topic(OFFSETS_TOPIC, num_partitions, OFFSETS_TOPIC_CONFIG)
        for index, part in enumerate(self._partitions()):
            self._replay(part)
            self._loaded[index] = clock.now_ms()

    def _partitions(self) -> list[PartitionLog]:
        return self._manager.topic(OFFSETS_TOPIC).partitions

    @property
    def replicated(self) -> bool:
        return self._replicated_append is not None

    def partition_of(self, group: str) -> int:
        """The partition of the topic that holds `group`'s commits."""
        # All of one group's commits go to one partition, so they stay in order (as Kafka).
        return partition_for_key(group.encode(), len(self._partitions()))

    def holds(self, group: str) -> bool:
        """Whether this store holds (coordinates) `group`'s commits now."""
        try:
            return self.partition_of(group) in self._loaded
        except LogStoreError:
            return False

    def load_partition(self, index: int) -> None:
        """Take over the groups of partition `index` (this broker now leads it)."""
        with self._lock:
            if index in self._loaded:
                return
            self._forget(index)
            self._replay(self._partitions()[index])
            self._loaded[index] = self._clock.now_ms()
        log.info("%s-%d: loaded the committed offsets it holds", OFFSETS_TOPIC, index)

    def unload_partition(self, index: int) -> None:
        """Hand over partition `index`'s groups (this broker no longer leads it)."""
        with self._lock:
            if index not in self._loaded:
                return
            del self._loaded[index]
            self._forget(index)

    def _forget(self, index: int) -> None:
        for group in [g for g in self._table if self.partition_of(g) == index]:
            del self._table[group]

    def _require_holds(self, group: str) -> int:
        index = self.partition_of(group)
        if index not in self._loaded:
            raise NotCoordinatorError(
                f"this broker does not coordinate group {group!r} (partition {index} of "
                f"{OFFSETS_TOPIC} is led elsewhere): find its coordinator"
            )
        return index

    # --- loading -----------------------------------------------------------------------------

    def _replay(self, part: PartitionLog) -> None:
        offset = part.log_start_offset
        end = part.log_end_offset
        while offset < end:
            data = part.read(offset, 4 * 1024 * 1024).data
            if not data:
                break
            start = offset
            for record in rb.decode_all(data):
                if record.offset >= start:
                    self._apply(record.key, record.value)
            span = rb.batch_span(data)
            if span is None:
                break
            offset = max(offset, span[1])  # past emptied/sparse batches too

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        try:
            decoded = decode_key(key)
            if decoded is None:
                return
            group, topic, partition = decoded
            if value is None:
                self._table.get(group, {}).pop((topic, partition), None)
                if group in self._table and not self._table[group]:
                    del self._table[group]
            else:
                self._table.setdefault(group, {})[(topic, partition)] = decode_value(value)
        except (struct.error, UnicodeDecodeError, CorruptRecordError) as exc:
            log.warning("skipping unreadable record in %s: %s", OFFSETS_TOPIC, exc)

    # --- queries -----------------------------------------------------------------------------

    def groups(self) -> list[str]:
        with self._lock:
            return sorted(self._table)

    def fetch(
        self, group: str, partitions: Iterable[TopicPartition] | None = None
    ) -> dict[TopicPartition, CommittedOffset]:
        """What `group` has committed, for `partitions` (all when None)."""
        with self._lock:
            table = self._table.get(group, {})
            if partitions is None:
                return dict(table)
            return {tp: table[tp] for tp in partitions if tp in table}

    # --- updates -----------------------------------------------------------------------------

    def commit(self, group: str, offsets: Mapping[TopicPartition, tuple[int, str]]) -> None:
        """Durably record `offsets` ((topic, partition) -> (offset, metadata)) for `group`."""
        if not group:
            raise InvalidRequestError("group id must not be empty")
        now = self._clock.now_ms()
        entries: list[tuple[bytes, bytes | None]] = []
        updates: dict[TopicPartition, CommittedOffset] = {}
        for (topic, partition), (offset, metadata) in offsets.items():
            if offset < 0:
                raise InvalidRequestError(
                    f"cannot commit offset {offset} for {topic}-{partition}: offsets are >= 0"
                )
            if len(metadata.encode("utf-8")) > MAX_METADATA_BYTES:
                raise InvalidRequestError(
                    f"commit metadata for {topic}-{partition} exceeds {MAX_METADATA_BYTES} bytes"
                )
            committed = CommittedOffset(offset, metadata, now)
            updates[(topic, partition)] = committed
            entries.append((encode_key(group, topic, partition), encode_value(committed)))
        if not entries:
            return
        if self.replicated:
            self._commit_replicated(group, entries, updates, now)
            return  # compaction bounds the replicated topic; a rewrite would be leader-only
        with self._lock:
            index = self._require_holds(group)
            self._append(index, entries, now)
            self._table.setdefault(group, {}).update(updates)
        try:
            self._maybe_rewrite(self._partitions()[index])
        except (LogStoreError, OSError):
            # The commit is durable already; a failed clean-up must not report it failed.
            log.exception("rewriting %s failed; will retry on a later commit", OFFSETS_TOPIC)

    def _commit_replicated(
        self,
        group: str,
        entries: list[tuple[bytes, bytes | None]],
        updates: Mapping[TopicPartition, CommittedOffset],
        now_ms: int,
    ) -> None:
        """A commit that waits for the ISR: under its partition's append lock (commits to
        one partition stay in log order), not the table lock, so reads and leadership
        changes never wait for replication."""
        with self._lock:
            index = self._require_holds(group)
            append_lock = self._append_locks.setdefault(index, threading.Lock())
        with append_lock:
            self._append(index, entries, now_ms)
            with self._lock:
                if index in self._loaded:
                    self._table.setdefault(group, {}).update(updates)

    def delete_group(self, group: str) -> int:
        """Remove every committed offset of `group` (tombstones); return how many."""
        with self._lock:
            table = self._table.get(group, {})
            if not table:
                return 0
            entries = [(encode_key(group, t, p), None) for t, p in table]
            self._append(self._require_holds(group), entries, self._clock.now_ms())
            del self._table[group]
            return len(entries)

    def expire_inactive_groups(
        self,
        now_ms: int,
        retention_ms: int,
        is_active: Callable[[str], bool],
        empty_groups: EmptyGroups | None = None,
    ) -> list[str]:
        """Delete the offsets of groups that have been empty for `retention_ms` (Kafka's
        offsets.retention.minutes) and whose newest commit is older than that; return the
        groups removed. `now_ms` is ms since the epoch.

        A group is empty while `is_active` says it has no members; how long it has been
        (ms) is `empty_groups.empty_for_ms`, capped by how long this store has held its
        partition. Without `empty_groups`, every group counts as empty since this store
        took over its partition."""
        with self._lock:
            candidates = [
                (group, now_ms - self._loaded.get(self.partition_of(group), now_ms))
                for group, table in self._table.items()
                if max(c.commit_timestamp for c in table.values()) < now_ms - retention_ms
            ]
        removed = []
        for group, held_ms in candidates:
            expirable = self._expirable(group, held_ms, retention_ms, is_active, empty_groups)
            if expirable and self.delete_group(group):
                log.info("expired the committed offsets of inactive group %s", group)
                removed.append(group)
        if empty_groups is not None:
            empty_groups.forget_emptied_longer_than(retention_ms)
        return removed

    @staticmethod
    def _expirable(
        group: str,
        held_ms: int,
        retention_ms: int,
        is_active: Callable[[str], bool],
        empty_groups: EmptyGroups | None,
    ) -> bool:
        """Whether a group with old commits has been empty for the retention period."""
        empty_ms: int | None = held_ms
        if empty_groups is not None:
            seen = empty_groups.empty_for_ms(group)
            empty_ms = None if seen is None else min(seen, held_ms)
        return empty_ms is not None and empty_ms >= retention_ms and not is_active(group)

    def delete_topic(self, topic: str) -> None:
        """Remove every group's committed offsets for a deleted topic."""
        with self._lock:
            for group, table in list(self._table.items()):
                doomed = [tp for tp in table if tp[0] == topic]
                if not doomed:
                    continue
                entries = [(encode_key(group, t, p), None) for t, p in doomed]
                self._append(self.partition_of(group), entries, self._clock.now_ms())
                for tp in doomed:
                    del table[tp]
                if not table:
                    del self._table[group]

    def _append(self, index: int, entries: list[tuple[bytes, bytes | None]], now_ms: int) -> None:
        """Append entries to partition `index` in batches that stay well under the topic's
        max.message.bytes (through replication in cluster mode)."""
        part = self._partitions()[index]
        limit = min(_REWRITE_BATCH_BYTES, part.config.max_message_bytes // 2)
        chunk: list[tuple[bytes | None, bytes | None, None, int]] = []
        size = 0
        for key, value in entries:
            entry_size = len(key) + len(value or b"") + 32
            if chunk and size + entry_size > limit:
                self._append_batch(index, part, rb.encode_batch(chunk))
                chunk, size = [], 0
            chunk.append((key, value, None, now_ms))
            size += entry_size
        if chunk:
            self._append_batch(index, part, rb.encode_batch(chunk))

    def _append_batch(self, index: int, part: PartitionLog, batch: bytes) -> None:
        if self._replicated_append is None:
            part.append(batch)
        else:
            self._replicated_append(index, batch)

    # --- bounded growth ----------------------------------------------------------------------

    def _live_entries(self, part: PartitionLog) -> list[tuple[bytes, bytes | None]]:
        return [
            (encode_key(group, topic, partition), encode_value(committed))
            for group, table in self._table.items()
            if self._partitions()[self.partition_of(group)] is part
            for (topic, partition), committed in table.items()
        ]

    def _maybe_rewrite(self, part: PartitionLog, force: bool = False) -> None:
        """Snapshot-and-truncate when the log is much larger than its live entries.

        The size check is O(1); the live entries are only gathered once the log passes the
        next threshold, which then doubles if a rewrite would not pay off.
        """
        threshold = self._next_check_bytes.get(part.name, self._rewrite_min_bytes)
        if not force and part.size_bytes < threshold:
            return
        with self._lock:
            live = self._live_entries(part)
            live_bytes = sum(len(k) + len(v or b"") + 16 for k, v in live)
            if not force and part.size_bytes < 4 * live_bytes:
                self._next_check_bytes[part.name] = 2 * part.size_bytes
                return
            part.roll()
            start = part.log_end_offset
            if live:
                index = self._partitions().index(part)
                self._append(index, live, self._clock.now_ms())
            part.flush()
            deleted = part.delete_segments_before(start)
            self._next_check_bytes[part.name] = max(self._rewrite_min_bytes, 4 * live_bytes)
        log.info(
            "%s: rewrote %d live offsets, deleted %d old segments", part.name, len(live), deleted
        )

    def rewrite_all(self) -> None:
        """Force snapshot-and-truncate of every partition (tests, maintenance)."""
        for part in self._partitions():
            self._maybe_rewrite(part, force=True)
