"""Power loss: what the storage fsynced survives; everything else may be gone.

A killed process leaves its writes in the page cache, so the kill tests cannot show a
missing fsync. Here every fsync, fdatasync and index msync is recorded with the bytes the
file held at that moment, and every directory fsync with the names (and inodes) the
directory held. A power loss is then simulated by building the data directory as a disk
would hold it: a name exists only if a sync of its directory saw it, and a file holds only
what its last sync covered (nothing, if it was never synced). The torn variant also keeps
a random part of each file's unsynced tail, as a write cut off mid-way leaves it.

The storage layer and the produce path of the broker are real and run in-process; the
restarted log manager opens the built directory as a broker would after the power cut.
"""

from __future__ import annotations

import os
import random
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from logstore.codec import format as fmt
from logstore.codec import record_batch as rb
from logstore.server.broker import LogStoreServicer
from logstore.server.groups.coordinator import GroupCoordinator
from logstore.server.groups.offsets_store import OffsetStore
from logstore.server.producer_ids import ProducerIdManager
from logstore.storage import index as index_module
from logstore.storage.log_manager import LogManager, ManagerSettings
from logstore.v1 import logstore_pb2 as pb
from tests.helpers import read_rows, scan_file

TOPIC = "t"
PARTITIONS = 2
#: small segments, so a run rolls several times and recovery meets sealed segments
SEGMENT_BYTES = 1024
NO_THREADS = ManagerSettings(background_threads=False)
ACKS_ALL = -1


@dataclass
class SyncRecorder:
    """What a disk would hold after a power cut, from the syncs seen so far.

    `files`: inode -> the file's bytes at its last fsync/fdatasync/msync.
    `dirs`: directory path -> {name: (inode, is a directory)} at its last fsync.
    """

    files: dict[int, bytes] = field(default_factory=dict)
    dirs: dict[str, dict[str, tuple[int, bool]]] = field(default_factory=dict)
    on: bool = True

    def record_fd(self, fd: int) -> None:
        if not self.on:
            return
        path = os.readlink(f"/proc/self/fd/{fd}")
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            self.record_dir(path)
        else:
            # Through /proc, so a write-only descriptor or a renamed file reads too.
            with open(f"/proc/self/fd/{fd}", "rb") as f:
                self.files[os.fstat(fd).st_ino] = f.read()

    def record_dir(self, path: str) -> None:
        with os.scandir(path) as entries:
            self.dirs[path] = {
                e.name: (e.inode(), e.is_dir(follow_symlinks=False)) for e in entries
            }

    def record_path(self, path: Path) -> None:
        if self.on:
            self.files[path.stat().st_ino] = path.read_bytes()


@contextmanager
def recording(monkeypatch: pytest.MonkeyPatch) -> Iterator[SyncRecorder]:
    """Record every fsync, fdatasync and index msync until the block ends."""
    recorder = SyncRecorder()
    real_fsync, real_fdatasync = os.fsync, os.fdatasync
    real_msync = index_module.MmapIndexFile.flush

    def fsync(fd: int) -> None:
        real_fsync(fd)
        recorder.record_fd(fd)

    def fdatasync(fd: int) -> None:
        real_fdatasync(fd)
        recorder.record_fd(fd)

    def msync(self: index_module.MmapIndexFile) -> None:
        real_msync(self)
        if self.writable:
            recorder.record_path(self.path)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(index_module.MmapIndexFile, "flush", msync)
    try:
        yield recorder
    finally:
        recorder.on = False


def power_cut_image(
    recorder: SyncRecorder, source: Path, dest: Path, rng: random.Random | None
) -> dict[Path, int]:
    """Build at `dest` what a disk holding `source` keeps after a power cut; return the
    files (under `dest`) left with a torn tail, and the bytes of the torn batch in each.

    `source` itself is taken as durable (it existed before the storage started); below
    it, only synced names exist, holding their synced bytes. With `rng`, a .log file whose
    unsynced bytes extend its synced ones keeps part of them, cut inside a batch. (Other
    files are rewritten in place or replaced whole: they keep their synced bytes.)
    """
    dest.mkdir()
    torn: dict[Path, int] = {}
    for name, (inode, is_dir) in recorder.dirs.get(str(source), {}).items():
        if is_dir:
            torn |= power_cut_image(recorder, source / name, dest / name, rng)
            continue
        kept = recorder.files.get(inode, b"")
        if rng is not None and name.endswith(fmt.LOG_SUFFIX):
            kept, partial = torn_write(kept, _current_bytes(source / name, inode), rng)
            if partial:
                torn[dest / name] = partial
        (dest / name).write_bytes(kept)
    return torn


def _current_bytes(path: Path, inode: int) -> bytes | None:
    """What the page cache holds for `inode` under `path` now (None if it moved)."""
    try:
        return path.read_bytes() if path.stat().st_ino == inode else None
    except FileNotFoundError:
        return None


def torn_write(synced: bytes, current: bytes | None, rng: random.Random) -> tuple[bytes, int]:
    """The synced bytes and the unsynced tail cut inside one of its batches, at random, and
    how many bytes of that batch remain; only the synced bytes (and 0) if the page cache
    did not append whole batches to them."""
    if current is None or len(current) <= len(synced) or not current.startswith(synced):
        return synced, 0
    tail = current[len(synced) :]
    batches = [(pos, header.size) for pos, header in rb.iter_batches(tail)]
    if not batches:
        return synced, 0
    pos, size = rng.choice(batches)
    partial = rng.randrange(1, size)
    return synced + tail[: pos + partial], partial


# --- the run ---------------------------------------------------------------------------------


@dataclass
class Produced:
    """What one partition was sent and what the broker acknowledged."""

    #: the value at every offset, in order
    values: list[bytes] = field(default_factory=list)
    #: records below this offset were acknowledged (acks=1 or acks=all)
    acked_end: int = 0
    #: records below this offset were acknowledged under acks=all
    acked_all_end: int = 0


def _servicer(manager: LogManager, data_dir: Path) -> LogStoreServicer:
    return LogStoreServicer(
        manager,
        OffsetStore(manager),
        ProducerIdManager(data_dir / "producer-id-block"),
        GroupCoordinator(partition_counts=lambda _t: PARTITIONS),
    )


def _produce(
    servicer: LogStoreServicer, produced: Produced, partition: int, acks: int, values: list[bytes]
) -> None:
    batch = rb.encode_batch([(None, v, None, 1_700_000_000_000) for v in values])
    data = pb.ProducePartitionData(partition=partition, records=batch)
    request = pb.ProduceRequest(
        acks=acks, topics=[pb.ProduceTopicData(topic=TOPIC, partitions=[data])]
    )
    result = servicer._produce(request).topics[0].partitions[0]
    assert (result.error.code, result.base_offset) == (0, len(produced.values)), result
    produced.values.extend(values)
    produced.acked_end = len(produced.values)
    if acks == ACKS_ALL:
        produced.acked_all_end = produced.acked_end


def produce_randomly(
    servicer: LogStoreServicer, manager: LogManager, rng: random.Random
) -> list[Produced]:
    """Small batches to random partitions, acks=all or acks=1 at random; the recovery
    points are checkpointed once on the way, as the background task does."""
    produced = [Produced() for _ in range(PARTITIONS)]
    requests = rng.randint(20, 60)
    checkpoint_at = rng.randrange(requests)
    for i in range(requests):
        partition = rng.randrange(PARTITIONS)
        part = produced[partition]
        values = [
            f"p{partition}-{len(part.values) + j}|".encode() + b"x" * rng.randrange(60)
            for j in range(rng.randint(1, 4))
        ]
        _produce(servicer, part, partition, rng.choice((ACKS_ALL, 1)), values)
        if i == checkpoint_at:
            manager.checkpoint_recovery_points()
    return produced


# --- the checks ------------------------------------------------------------------------------


def check_after_restart(manager: LogManager, produced: list[Produced], promised: list[int]) -> None:
    """Every promised record is there and readable; what survived beyond is exactly what
    was appended (a prefix: nothing invented, nothing reordered); offsets are dense."""
    for partition, (sent, end) in enumerate(zip(produced, promised, strict=True)):
        log = manager.partition(TOPIC, partition)
        rows = read_rows(log)
        assert log.log_start_offset == 0
        assert [r[0] for r in rows] == list(range(log.log_end_offset)), "offsets are not dense"
        assert log.log_end_offset >= end, f"partition {partition} lost acknowledged records"
        assert [r[2] for r in rows] == sent.values[: len(rows)]
        for path in sorted(log.directory.glob("*" + fmt.LOG_SUFFIX)):
            batches = scan_file(path)
            whole = batches[-1][0] + batches[-1][1].size if batches else 0
            assert whole == path.stat().st_size, f"{path.name} keeps a torn tail"


def check_appends_continue(manager: LogManager, data_dir: Path, produced: list[Produced]) -> None:
    """The recovered log takes appends at its end, acknowledged under acks=all."""
    servicer = _servicer(manager, data_dir)
    for partition, sent in enumerate(produced):
        after = Produced(values=sent.values[: manager.partition(TOPIC, partition).log_end_offset])
        _produce(servicer, after, partition, ACKS_ALL, [b"after the power cut"])
        assert read_rows(manager.partition(TOPIC, partition))[-1][2] == b"after the power cut"


# --- the tests -------------------------------------------------------------------------------

POLICIES = {"flush.messages=1": {"flush.messages": 1}, "no flush policy": {}}


@pytest.mark.parametrize("torn", [False, True], ids=["synced-only", "torn-tail"])
@pytest.mark.parametrize("policy", list(POLICIES))
def test_power_cut_keeps_every_acknowledged_record(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    rng: random.Random,
    policy: str,
    torn: bool,
) -> None:
    data_dir, image = tmp_path / "data", tmp_path / "after-power-cut"
    data_dir.mkdir()
    config = {"segment.bytes": SEGMENT_BYTES, **POLICIES[policy]}
    with recording(monkeypatch) as recorder:
        manager = LogManager(data_dir, settings=NO_THREADS)
        manager.create_topic(TOPIC, PARTITIONS, config)
        servicer = _servicer(manager, data_dir)
        produced = produce_randomly(servicer, manager, rng)
        for partition in range(PARTITIONS):  # the last appends wait for no fsync
            part = produced[partition]
            _produce(servicer, part, partition, 1, [b"last-%d" % len(part.values)])
        fsynced = [manager.partition(TOPIC, p).recovery_point for p in range(PARTITIONS)]
        torn_files = power_cut_image(recorder, data_dir.resolve(), image, rng if torn else None)
    manager.close()  # the power is already gone: this writes nothing the image holds

    if policy == "flush.messages=1":
        promised = [p.acked_end for p in produced]
        assert not torn_files, "an acknowledged append was not fsynced"
    else:  # acks=1 promises nothing durable; acks=all, and any fsync, do
        assert all(p.acked_all_end <= end for p, end in zip(produced, fsynced, strict=True))
        promised = fsynced
        assert bool(torn_files) == torn, "the last appends left no unsynced tail"
    restarted = LogManager(image, settings=NO_THREADS)
    try:
        assert restarted.recovered_after_unclean_shutdown
        for partition in range(PARTITIONS):  # sealed segments' indexes were synced
            report = restarted.partition(TOPIC, partition).recovery_report
            assert report.damaged_indexes == 0, (partition, report)
        for path, partial in torn_files.items():  # recovery cut each torn batch off, whole
            part = restarted.partition(TOPIC, int(path.parent.name.rsplit("-", 1)[1]))
            assert part.recovery_report.truncated_bytes == partial, path
        check_after_restart(restarted, produced, promised)
        check_appends_continue(restarted, image, produced)
    finally:
        restarted.close()


def test_power_cut_after_a_clean_shutdown_keeps_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rng: random.Random
) -> None:
    """A clean close syncs every log, index and checkpoint: the next start trusts the
    indexes (no recovery) and finds every record, even if the power goes right after."""
    data_dir, image = tmp_path / "data", tmp_path / "after-power-cut"
    data_dir.mkdir()
    with recording(monkeypatch) as recorder:
        manager = LogManager(data_dir, settings=NO_THREADS)
        manager.create_topic(TOPIC, PARTITIONS, {"segment.bytes": SEGMENT_BYTES})
        produced = produce_randomly(_servicer(manager, data_dir), manager, rng)
        manager.close()
        power_cut_image(recorder, data_dir.resolve(), image, None)
    restarted = LogManager(image, settings=NO_THREADS)
    try:
        assert not restarted.recovered_after_unclean_shutdown
        for partition in range(PARTITIONS):
            report = restarted.partition(TOPIC, partition).recovery_report
            assert not report.repaired_anything, (partition, report)
        check_after_restart(restarted, produced, [p.acked_end for p in produced])
        check_appends_continue(restarted, image, produced)
    finally:
        restarted.close()
