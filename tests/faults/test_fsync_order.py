"""The documented durability rule, checked at the system-call level: with
flush.messages=1, or for an acks=all produce, the .log file is fsynced with the appended
bytes in it before the append (or the produce response) returns; acks=1 without a flush
policy returns without an fsync (the page cache suffices against a broker crash).

os.fsync is wrapped to record which file and how many bytes of it each call covered; the
storage itself is real.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from logstore.server.broker import LogStoreServicer
from logstore.server.groups.coordinator import GroupCoordinator
from logstore.server.groups.offsets_store import OffsetStore
from logstore.server.producer_ids import ProducerIdManager
from logstore.storage import segment as segment_module
from logstore.storage.log_manager import LogManager, ManagerSettings
from logstore.storage.partition_log import PartitionLog
from logstore.v1 import logstore_pb2 as pb
from tests.faults.support import values_batch
from tests.helpers import make_config

#: (inode, file size in bytes) at each fsync call
Syncs = list[tuple[int, int]]


@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Syncs]:
    calls: Syncs = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        stat = os.fstat(fd)
        real_fsync(fd)
        calls.append((stat.st_ino, stat.st_size))

    monkeypatch.setattr(segment_module.os, "fsync", recording_fsync)
    yield calls


def _synced_through(syncs: Syncs, log_file: Path, size: int) -> bool:
    """Whether some fsync covered `log_file` when it held at least `size` bytes."""
    inode = log_file.stat().st_ino
    return any(ino == inode and synced >= size for ino, synced in syncs)


def test_flush_messages_1_fsyncs_before_append_returns(tmp_path: Path, syncs: Syncs) -> None:
    log = PartitionLog(tmp_path / "t-0", make_config({"flush.messages": 1}), clean_shutdown=True)
    try:
        for i in range(5):
            syncs.clear()
            result = log.append(values_batch([b"v%d" % i] * 3))
            active = log.segments()[-1]
            # checked right after the return: nothing later could have done the fsync
            assert _synced_through(syncs, active.log_path, active.size), syncs
            assert log.recovery_point >= result.last_offset + 1
    finally:
        log.close()


def test_without_a_flush_policy_append_does_not_fsync(tmp_path: Path, syncs: Syncs) -> None:
    log = PartitionLog(tmp_path / "t-0", make_config(), clean_shutdown=True)
    try:
        log.append(values_batch([b"v"] * 3))
        assert syncs == []  # acks=1: the page cache holds it; kill -9 cannot lose it
    finally:
        log.close()


@pytest.fixture
def servicer(tmp_path: Path) -> Iterator[LogStoreServicer]:
    manager = LogManager(tmp_path / "data", settings=ManagerSettings(background_threads=False))
    offsets = OffsetStore(manager)
    service = LogStoreServicer(
        manager,
        offsets,
        ProducerIdManager(tmp_path / "data" / "producer-id-block"),
        GroupCoordinator(partition_counts=lambda _t: 1),
    )
    manager.create_topic("t", 1)
    yield service
    manager.close()


def _request(acks: int, value: bytes) -> pb.ProduceRequest:
    data = pb.ProducePartitionData(partition=0, records=values_batch([value]))
    return pb.ProduceRequest(acks=acks, topics=[pb.ProduceTopicData(topic="t", partitions=[data])])


def test_acks_all_response_comes_after_the_fsync(servicer: LogStoreServicer, syncs: Syncs) -> None:
    part = servicer.manager.partition("t", 0)
    for i in range(3):
        syncs.clear()
        response = servicer._produce(_request(-1, b"all-%d" % i))
        assert response.topics[0].partitions[0].error.code == 0
        active = part.segments()[-1]
        assert _synced_through(syncs, active.log_path, active.size), syncs


def test_acks_1_response_does_not_wait_for_an_fsync(
    servicer: LogStoreServicer, syncs: Syncs
) -> None:
    syncs.clear()
    response = servicer._produce(_request(1, b"one"))
    assert response.topics[0].partitions[0].base_offset == 0
    assert syncs == []
