"""Committed offsets in __consumer_offsets: durable, rebuilt at start-up, bounded."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logstore.clock import ManualClock
from logstore.codec import record_batch as rb
from logstore.errors import InvalidRequestError
from logstore.server.groups.classic import (
    ClassicGroupCoordinator,
    GroupError,
    JoinRequest,
    JoinResult,
    MemberIdentity,
)
from logstore.server.groups.coordinator import GroupCoordinator
from logstore.server.groups.offsets_store import (
    OFFSETS_TOPIC,
    CommittedOffset,
    OffsetStore,
    decode_key,
    decode_value,
    encode_key,
    encode_value,
)
from logstore.storage.log_manager import LogManager, ManagerSettings

NO_THREADS = ManagerSettings(background_threads=False)
#: a replay of a few records takes milliseconds; this bounds one that never ends (s)
REPLAY_TIMEOUT_S = 20.0


def _open(data: Path, **kw: Any) -> tuple[LogManager, OffsetStore]:
    manager = LogManager(data, settings=NO_THREADS)
    return manager, OffsetStore(manager, **kw)


def test_key_and_value_use_kafkas_schemas() -> None:
    key = encode_key("g", "orders", 3)
    assert key == b"\x00\x01" + b"\x00\x01g" + b"\x00\x06orders" + b"\x00\x00\x00\x03"
    assert decode_key(key) == ("g", "orders", 3)
    value = encode_value(CommittedOffset(42, "meta", 1234))
    assert value[:2] == b"\x00\x03"  # OffsetCommitValue v3
    assert decode_value(value) == CommittedOffset(42, "meta", 1234)
    assert decode_key(b"\x00\x02\x00\x01g") is None  # group metadata keys are not offsets


@settings(max_examples=50, deadline=None)
@given(
    group=st.text(min_size=1, max_size=20),
    topic=st.text(min_size=1, max_size=20),
    partition=st.integers(0, 2**31 - 1),
    offset=st.integers(0, 2**63 - 1),
    metadata=st.text(max_size=50),
)
def test_codec_round_trips(
    group: str, topic: str, partition: int, offset: int, metadata: str
) -> None:
    assert decode_key(encode_key(group, topic, partition)) == (group, topic, partition)
    committed = CommittedOffset(offset, metadata, 7)
    assert decode_value(encode_value(committed)) == committed


def test_commits_survive_restart_without_clean_shutdown(tmp_path: Path) -> None:
    manager, store = _open(tmp_path)
    store.commit("billing", {("orders", 0): (5, ""), ("orders", 1): (9, "m")})
    store.commit("billing", {("orders", 0): (6, "")})
    store.commit("audit", {("orders", 0): (1, "")})
    for part in manager.all_partitions():
        part.flush()  # a kill -9 keeps the page cache; flush stands in for it here
    # No close(): the next open sees an unclean shutdown and rebuilds from the log.
    manager2, store2 = _open(tmp_path)
    assert not manager2.clean_shutdown
    got = store2.fetch("billing")
    assert {tp: c.offset for tp, c in got.items()} == {("orders", 0): 6, ("orders", 1): 9}
    assert got[("orders", 1)].metadata == "m"
    assert store2.groups() == ["audit", "billing"]
    manager2.close()


def test_delete_group_and_topic_write_tombstones(tmp_path: Path) -> None:
    manager, store = _open(tmp_path)
    store.commit("a", {("t1", 0): (1, ""), ("t2", 0): (2, "")})
    store.commit("b", {("t1", 0): (3, "")})
    assert store.delete_group("a") == 2
    store.delete_topic("t1")
    manager.close()
    manager, store = _open(tmp_path)
    assert store.fetch("a") == {}
    assert store.groups() == []
    manager.close()


def test_rejects_bad_commits(tmp_path: Path) -> None:
    manager, store = _open(tmp_path)
    with pytest.raises(InvalidRequestError, match="offsets are >= 0"):
        store.commit("g", {("t", 0): (-1, "")})
    with pytest.raises(InvalidRequestError, match="group id"):
        store.commit("", {("t", 0): (1, "")})
    with pytest.raises(InvalidRequestError, match="metadata"):
        store.commit("g", {("t", 0): (1, "x" * 5000)})
    manager.close()


def test_growth_stays_bounded_by_rewriting_live_entries(tmp_path: Path) -> None:
    manager, store = _open(tmp_path, rewrite_min_bytes=64 * 1024)
    for i in range(3000):  # many commits of the same few keys
        store.commit("g", {("t", i % 4): (i, "")})
    part = manager.partition(OFFSETS_TOPIC, 0)
    assert part.size_bytes < 4 * 64 * 1024, part.size_bytes
    assert part.log_start_offset > 0  # old segments were deleted
    expected = {("t", p): max(i for i in range(3000) if i % 4 == p) for p in range(4)}
    assert {tp: c.offset for tp, c in store.fetch("g").items()} == expected
    manager.close()
    manager, store = _open(tmp_path)
    assert {tp: c.offset for tp, c in store.fetch("g").items()} == expected
    manager.close()


def test_forced_rewrite_keeps_the_table(tmp_path: Path) -> None:
    manager, store = _open(tmp_path)
    store.commit("g", {("t", 0): (10, "x")})
    store.commit("h", {("u", 1): (20, "")})
    store.rewrite_all()
    part = manager.partition(OFFSETS_TOPIC, 0)
    records = rb.decode_all(part.read(part.log_start_offset, 1 << 20).data)
    assert len(records) == 2  # only the live entries remain
    manager.close()
    manager, store = _open(tmp_path)
    assert store.fetch("g")[("t", 0)].offset == 10
    assert store.fetch("h")[("u", 1)].offset == 20
    manager.close()


def test_rewrite_splits_large_live_state_into_batches_that_fit(tmp_path: Path) -> None:
    manager, store = _open(tmp_path, rewrite_min_bytes=64 * 1024)
    for g in range(1100):  # ~1.1 MB of live entries: more than one batch may hold
        store.commit(f"group-{g}", {("t", 0): (g, "m" * 1000)})
    store.rewrite_all()
    store.commit("group-0", {("t", 0): (5, "")})  # a commit after the rewrite still works
    manager.close()
    manager, store = _open(tmp_path)
    assert len(store.groups()) == 1100
    assert store.fetch("group-0")[("t", 0)].offset == 5
    assert store.fetch("group-1099")[("t", 0)].metadata == "m" * 1000
    manager.close()


def test_the_table_replays_from_a_compacted_log(tmp_path: Path) -> None:
    """The log cleaner compacts this topic too: a replay must step over batches it emptied
    (it used to loop on one for ever) and still end with the latest commit of each key."""
    manager, store = _open(tmp_path)
    part = manager.topic(OFFSETS_TOPIC).partitions[0]
    for offset in (1, 2, 3):
        store.commit("g", {("orders", 0): (offset, "")})
        store.commit("h", {("orders", 0): (10 * offset, "")})
        part.roll()
    store.delete_group("h")
    part.roll()
    assert manager.run_cleaner(force=True) >= 1
    batches = [h for s in part.segments() for _, h in s.iter_headers(0)]
    assert any(h.record_count == 0 for h in batches)
    manager.close()

    opened: list[tuple[LogManager, OffsetStore]] = []
    replay = threading.Thread(target=lambda: opened.append(_open(tmp_path)), daemon=True)
    replay.start()
    replay.join(timeout=REPLAY_TIMEOUT_S)
    assert opened, "the replay did not finish"
    manager2, store2 = opened[0]
    assert {tp: c.offset for tp, c in store2.fetch("g").items()} == {("orders", 0): 3}
    assert store2.groups() == ["g"]
    manager2.close()


# --- retention (offsets.retention.minutes, KIP-211) -------------------------------------------

DAY_MS = 24 * 3600 * 1000
RETENTION_MS = 7 * DAY_MS


class Broker:
    """A standalone broker's offsets and coordinators on one manual clock."""

    def __init__(self, data: Path, clock: ManualClock) -> None:
        self.clock = clock
        self.manager = LogManager(data, settings=NO_THREADS)
        self.store = OffsetStore(self.manager, clock=clock)
        classic = ClassicGroupCoordinator(clock, initial_rebalance_delay_ms=0)
        self.coordinator = GroupCoordinator(lambda _t: 1, clock, classic=classic)

    def kafka_member(self, group: str) -> str:
        """A Kafka client joins `group` (one member, its join answered at once)."""
        joined = self.coordinator.classic.join_group(
            JoinRequest(group, "", "consumer", (("range", b""),), 45_000, 300_000)
        )
        joined = self.coordinator.classic.join_group(
            JoinRequest(group, joined.member_id, "consumer", (("range", b""),), 45_000, 300_000)  # type: ignore[union-attr]
        )
        assert isinstance(joined, JoinResult) and joined.error == GroupError.NONE
        return joined.member_id

    def expire(self) -> list[str]:
        """The broker's retention pass."""
        return self.store.expire_inactive_groups(
            self.clock.now_ms(),
            RETENTION_MS,
            lambda g: self.coordinator.active_member_count(g) > 0,
            self.coordinator,
        )


def test_an_idle_groups_offsets_outlive_its_members_by_the_retention(tmp_path: Path) -> None:
    """librdkafka never commits an unchanged offset: an idle member's newest commit ages
    past the retention while the group still has it. Its offsets stay for the retention
    period after it leaves (Kafka since 2.1), not only until it leaves."""
    clock = ManualClock()
    broker = Broker(tmp_path, clock)
    broker.store.commit("idle", {("orders", 0): (3, "")})
    clock.advance(8 * DAY_MS)  # nothing to read, nothing committed
    member = broker.kafka_member("idle")
    assert broker.expire() == []  # it has a member
    broker.coordinator.classic.leave_group("idle", [MemberIdentity(member)])  # a deploy
    assert broker.expire() == []
    clock.advance(RETENTION_MS - 1)
    assert broker.expire() == []
    clock.advance(1)
    assert broker.expire() == ["idle"]
    assert broker.store.fetch("idle") == {}
    broker.manager.close()


def test_a_group_never_seen_with_members_counts_as_empty_since_the_start(
    tmp_path: Path,
) -> None:
    """Emptiness is not stored: after a restart, a group's old commits stay for the
    retention period, since its members may have left just before."""
    clock = ManualClock()
    broker = Broker(tmp_path, clock)
    broker.store.commit("gone", {("orders", 0): (1, "")})
    broker.store.commit("fresh", {("orders", 0): (1, "")})
    clock.advance(RETENTION_MS + 1)
    broker.store.commit("fresh", {("orders", 0): (2, "")})
    assert broker.expire() == ["gone"]  # empty since the start, which is long enough
    _restart_later(broker.manager, clock, RETENTION_MS + 1)
    restarted = Broker(tmp_path, clock)
    assert restarted.expire() == []  # "fresh" may have had members until the restart
    clock.advance(RETENTION_MS)
    assert restarted.expire() == ["fresh"]
    restarted.manager.close()


def test_without_the_coordinators_groups_count_as_empty_since_the_store_loaded(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    manager, store = _open(tmp_path, clock=clock)
    store.commit("g", {("orders", 0): (1, "")})
    _restart_later(manager, clock, RETENTION_MS + 1)
    manager, store = _open(tmp_path, clock=clock)

    def expire() -> list[str]:
        return store.expire_inactive_groups(clock.now_ms(), RETENTION_MS, lambda _g: False)

    assert expire() == []
    clock.advance(RETENTION_MS - 1)
    assert expire() == []
    clock.advance(1)
    assert expire() == ["g"]
    manager.close()


def _restart_later(manager: LogManager, clock: ManualClock, ms: int) -> None:
    """Stop the broker's storage, and let `ms` pass before it starts again."""
    for part in manager.all_partitions():
        part.flush()
    manager.close()
    clock.advance(ms)


def test_a_partition_taken_over_counts_its_groups_as_empty_since_then(tmp_path: Path) -> None:
    """Cluster mode: this broker cannot know what the group did while another coordinated
    it, so its emptiness counts at most from when this broker took the partition over."""
    clock = ManualClock()
    manager = LogManager(tmp_path, settings=NO_THREADS)
    manager.create_topic(OFFSETS_TOPIC, 1, {})
    part = manager.partition(OFFSETS_TOPIC, 0)
    store = OffsetStore(manager, clock=clock, replicated_append=lambda _i, b: part.append(b))
    coordinator = GroupCoordinator(lambda _t: 1, clock)
    store.load_partition(0)
    store.commit("g", {("orders", 0): (1, "")})
    clock.advance(RETENTION_MS)
    store.unload_partition(0)
    coordinator.unload_partition(0, store.partition_of)
    clock.advance(DAY_MS)
    store.load_partition(0)  # the group is here again; its commit is 8 days old

    def expire() -> list[str]:
        return store.expire_inactive_groups(
            clock.now_ms(), RETENTION_MS, lambda _g: False, coordinator
        )

    assert coordinator.empty_for_ms("g") == RETENTION_MS + DAY_MS  # the coordinator saw none
    assert expire() == []
    clock.advance(RETENTION_MS - 1)
    assert expire() == []
    clock.advance(1)
    assert expire() == ["g"]
    manager.close()
