"""A full disk: the broker's data directory on a small tmpfs.

Producing until the disk is full must give RESOURCE_EXHAUSTED with a message saying so
(never INTERNAL, never a crash), leave every acknowledged record readable, and once space
is freed (a filler file removed, or a topic deleted) producing works again.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import grpc
import pytest

from logstore.v1 import logstore_pb2 as pb
from tests.faults.conftest import BrokerFactory
from tests.faults.support import connect, create_topic, produce, read_log, values_batch

DISK_BYTES = 8 * 1024 * 1024
VALUE = b"x" * 4000


def cannot_run(why: str) -> NoReturn:
    """Skip a test that needs a small disk, saying why; in CI (the `CI` variable set),
    where it runs as root and must not pass unseen, fail instead."""
    if os.environ.get("CI"):
        pytest.fail(f"the disk-full tests must run in CI, but {why}", pytrace=False)
    pytest.skip(f"{why}: the disk-full tests need root to mount an {DISK_BYTES} byte tmpfs")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs, unmounted afterwards. Skipped, with the reason, where mounting is
    not possible; a failure in CI."""
    if os.geteuid() != 0:
        cannot_run(f"this process runs as uid {os.geteuid()}, not root")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        cannot_run(f"mount -t tmpfs failed: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(
    stub: object, topic: str, limit: int = 10_000
) -> tuple[list[tuple[int, bytes]], grpc.RpcError | pb.ProducePartitionResult]:
    """Produce 40 KB batches until one fails; return (base offset, value) of every
    acknowledged batch and the failure."""
    acked: list[tuple[int, bytes]] = []
    for i in range(limit):
        value = b"%06d" % i + VALUE
        try:
            result = produce(stub, topic, values_batch([value] * 10), acks=-1)  # type: ignore[arg-type]
        except grpc.RpcError as exc:
            return acked, exc
        if result.error.code != 0:
            return acked, result
        acked.append((result.base_offset, value))
    raise AssertionError(f"{limit} batches did not fill an 8 MiB disk")


def _status(failure: grpc.RpcError | pb.ProducePartitionResult) -> tuple[grpc.StatusCode, str]:
    if isinstance(failure, grpc.RpcError):
        return failure.code(), failure.details()  # type: ignore[attr-defined]
    code = next(c for c in grpc.StatusCode if c.value[0] == failure.error.code)
    return code, failure.error.message


def _check_acked(stub: object, topic: str, acked: list[tuple[int, bytes]]) -> None:
    records = read_log(stub, topic)  # type: ignore[arg-type]
    by_offset = {r.offset: r.value for r in records}
    for base, value in acked:
        for i in range(10):
            assert by_offset.get(base + i) == value, f"acknowledged offset {base + i} damaged"


@pytest.mark.parametrize("free_by", ["filler", "delete-topic"])
def test_full_disk_is_resource_exhausted_and_recovers(
    make_broker: BrokerFactory, small_disk: Path, free_by: str
) -> None:
    broker = make_broker(data_dir=small_disk / "data")
    with connect(broker.address) as stub:
        create_topic(stub, "fill", segment_bytes="262144")
        if free_by == "filler":
            (small_disk / "filler").write_bytes(b"\0" * (2 * 1024 * 1024))
        else:
            create_topic(stub, "victim")
            for _ in range(40):
                assert produce(stub, "victim", values_batch([VALUE] * 10)).error.code == 0
        acked, failure = _fill(stub, "fill")
        assert acked, "the disk was full before anything was produced"
        code, message = _status(failure)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, message)
        assert "disk full" in message or "No space" in message, message
        # still full: a second attempt gets the same answer, and the broker still serves
        code, _ = _status(_fill(stub, "fill", limit=3)[1])
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert broker.proc is not None and broker.proc.poll() is None
        _check_acked(stub, "fill", acked)
        if free_by == "filler":
            (small_disk / "filler").unlink()
        else:
            stub.DeleteTopic(pb.DeleteTopicRequest(name="victim"), timeout=10)
        more = [produce(stub, "fill", values_batch([b"after"] * 10)) for _ in range(5)]
        assert all(r.error.code == 0 for r in more), [r.error.message for r in more]
        _check_acked(stub, "fill", acked)
        # offsets commits work again too
        stub.CommitOffsets(
            pb.CommitOffsetsRequest(
                group_id="g",
                topics=[
                    pb.CommitTopic(
                        topic="fill", partitions=[pb.CommitPartition(partition=0, offset=1)]
                    )
                ],
            ),
            timeout=10,
        )
    assert broker.stop() == 0
    broker.start()
    with connect(broker.address) as stub:
        _check_acked(stub, "fill", acked)


_APPEND_ON_A_FULL_DISK = """
import errno, os, sys
from pathlib import Path
from logstore.storage.partition_log import PartitionLog
from tests.helpers import make_config
from tests.faults.support import values_batch

disk = Path(sys.argv[1])
log = PartitionLog(disk / "t-0", make_config({"index.interval.bytes": 0}), clean_shutdown=True)
fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
for size in (65536, 4096, 1):  # fill every last block
    try:
        while True:
            os.write(fd, b"\\0" * size)
    except OSError:
        pass
os.close(fd)
for i in range(3):
    try:
        log.append(values_batch([b"v" * 100]))
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
        print("ENOSPC", i)
        break
(disk / "filler").unlink()
log.append(values_batch([b"after"]))
print("end", log.log_end_offset)
"""


def test_index_entries_on_a_full_disk_raise_enospc_not_sigbus(small_disk: Path) -> None:
    """Regression: index files are sparse mmaps; the first store into a page without a
    disk block used to kill the broker with SIGBUS. Blocks are now reserved first."""
    script = small_disk.parent / "append_full.py"
    script.write_text(_APPEND_ON_A_FULL_DISK)
    done = subprocess.run(
        [sys.executable, str(script), str(small_disk)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[2],
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2])),
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert "ENOSPC" in done.stdout and "end" in done.stdout, done.stdout


def test_a_storage_error_caused_by_a_full_disk_is_resource_exhausted() -> None:
    """Regression: a producer-state snapshot that failed for lack of space was wrapped in
    StorageError and answered UNAVAILABLE, hiding the cause."""
    from logstore.errors import StorageError
    from logstore.server.errors import status_for

    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as cause:
            raise StorageError(f"cannot write producer state snapshot: {cause}") from cause
    except StorageError as exc:
        code, message, kind = status_for(exc)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "disk full" in message and kind == "StorageError"


def test_atomic_write_on_a_full_disk_leaves_no_temp_file(small_disk: Path) -> None:
    """Regression: a failed atomic replace left its half-written temp file behind, holding
    on to space on a disk that was already full."""
    from logstore.storage.fileutil import write_file_atomically

    target = small_disk / "checkpoint"
    write_file_atomically(target, b"old")
    filler = small_disk / "filler"
    with pytest.raises(OSError) as info:
        filler.write_bytes(b"\0" * (2 * DISK_BYTES))
    assert info.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as info:
        write_file_atomically(target, b"n" * (1024 * 1024))
    assert info.value.errno == errno.ENOSPC
    assert sorted(p.name for p in small_disk.iterdir()) == ["checkpoint", "filler"]
    assert target.read_bytes() == b"old"
