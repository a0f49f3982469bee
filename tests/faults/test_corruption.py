"""Torn writes and damaged files, end to end: a real broker is killed (or stopped), its
files are damaged, and it is started again.

The broker must keep every batch that is still valid, log what it repaired, never serve a
batch that fails its CRC (read_log checks every batch), and go on serving: producing more
and reading everything back works after each repair. The same repairs are unit-tested on
PartitionLog in tests/storage/test_partition_log.py; these are the whole-broker versions.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from logstore.v1 import logstore_pb2 as pb
from tests.faults.conftest import BrokerFactory
from tests.faults.support import (
    RPC_TIMEOUT_S,
    connect,
    create_topic,
    fetch_once,
    produce,
    read_log,
    values_batch,
)
from tests.server.conftest import BrokerProcess

BATCHES = 40
PER_BATCH = 5


def _segments(directory: Path, suffix: str = ".log") -> list[Path]:
    return sorted(directory.glob("*" + suffix))


def _commit(broker: BrokerProcess, offset: int) -> None:
    with connect(broker.address) as stub:
        stub.CommitOffsets(
            pb.CommitOffsetsRequest(
                group_id="g",
                topics=[
                    pb.CommitTopic(
                        topic="t", partitions=[pb.CommitPartition(partition=0, offset=offset)]
                    )
                ],
            ),
            timeout=RPC_TIMEOUT_S,
        )


def _committed(broker: BrokerProcess) -> int:
    with connect(broker.address) as stub:
        response = stub.FetchCommittedOffsets(
            pb.FetchCommittedOffsetsRequest(group_id="g"), timeout=RPC_TIMEOUT_S
        )
    return {(c.topic, c.partition): c.offset for c in response.offsets}.get(("t", 0), -1)


def _loaded_broker(make_broker: BrokerFactory) -> BrokerProcess:
    """A broker whose topic t holds BATCHES batches over several 1 KiB segments, and whose
    group g committed 10 and then 20."""
    broker = make_broker()
    with connect(broker.address) as stub:
        create_topic(stub, "t", segment_bytes="1024", index_interval_bytes="0")
        for i in range(BATCHES):
            values = [b"t-%d" % (i * PER_BATCH + j) for j in range(PER_BATCH)]
            assert produce(stub, "t", values_batch(values)).base_offset == i * PER_BATCH
    _commit(broker, 10)
    _commit(broker, 20)
    return broker


def _check_serving(broker: BrokerProcess, expected_end: int) -> None:
    """Every remaining record is the one produced at its offset; appends continue."""
    with connect(broker.address) as stub:
        records = read_log(stub, "t")
        assert [r.value for r in records] == [b"t-%d" % i for i in range(expected_end)]
        result = produce(stub, "t", values_batch([b"t-%d" % expected_end]))
        assert result.error.code == 0 and result.base_offset == expected_end
        assert read_log(stub, "t")[-1].value == b"t-%d" % expected_end
        # a read from the middle uses the (rebuilt) indexes
        middle = fetch_once(stub, "t", 0, expected_end // 2)
        assert middle.error.code == 0 and middle.records


def _truncate_mid_batch(part: Path) -> int:
    last = _segments(part)[-1]
    size = last.stat().st_size
    os.truncate(last, size - 7)  # inside the last batch: a torn write
    return BATCHES * PER_BATCH - PER_BATCH


def _garble_last_batch(part: Path) -> int:
    last = _segments(part)[-1]
    with open(last, "r+b") as f:
        f.seek(-10, os.SEEK_END)  # record bytes of the last batch: its CRC fails
        f.write(b"\xff" * 4)
    return BATCHES * PER_BATCH - PER_BATCH


def _zero_tail(part: Path) -> int:
    last = _segments(part)[-1]
    with open(last, "ab") as f:
        f.write(b"\0" * 4096)  # preallocated-but-unwritten space after a crash
    return BATCHES * PER_BATCH


#: damage -> (apply it, what t-0's recovery line says: the log manager's words, one line
#: per repaired partition)
DAMAGE: dict[str, tuple[Callable[[Path], int], str]] = {
    "torn-tail": (_truncate_mid_batch, r"t-0: recovery dropped \d+ bytes of torn tail"),
    "garbled-tail": (_garble_last_batch, r"t-0: recovery dropped \d+ bytes of torn tail"),
    "zero-filled-tail": (_zero_tail, "t-0: recovery dropped 4096 bytes of torn tail"),
}


STRAYS = [
    "00000000000000000000.log.deleted",
    "00000000000000000005.index.swap",
    "00000000000000000010.log.cleaned",
    ".0123abcd.tmp",
    "00000000000099999999.timeindex",  # an index without its .log
]


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_active_segment_after_a_crash(make_broker: BrokerFactory, damage: str) -> None:
    """Also, per case: stray files of interrupted operations (torn-tail), and a torn last
    commit in __consumer_offsets (garbled-tail), which loses only that commit."""
    broker = _loaded_broker(make_broker)
    broker.kill9()
    apply, logged = DAMAGE[damage]
    part = broker.data_dir / "t-0"
    expected_end = apply(part)
    if damage == "torn-tail":
        for name in STRAYS:
            (part / name).write_bytes(b"junk")
    expected_commit = 20
    if damage == "garbled-tail":
        offsets_log = _segments(broker.data_dir / "__consumer_offsets-0")[-1]
        os.truncate(offsets_log, offsets_log.stat().st_size - 3)
        expected_commit = 10
    broker.start()
    logs = broker.logs()
    if damage == "torn-tail":
        logged += f", removed {len(STRAYS)} stray files"
        for name in STRAYS:
            assert not (part / name).exists()
    assert re.search(f"{logged}$", logs, re.MULTILINE), logs
    if damage == "garbled-tail":
        assert re.search(
            r"__consumer_offsets-0: recovery dropped \d+ bytes of torn tail$", logs, re.M
        )
    _check_serving(broker, expected_end)
    assert _committed(broker) == expected_commit
    _commit(broker, 30)
    assert _committed(broker) == 30


def test_missing_and_garbage_indexes_are_rebuilt_after_a_clean_stop(
    make_broker: BrokerFactory,
) -> None:
    """After a clean shutdown nothing is re-validated unless an index looks wrong."""
    broker = _loaded_broker(make_broker)
    assert broker.stop() == 0
    part = broker.data_dir / "t-0"
    indexes = _segments(part, ".index")
    time_indexes = _segments(part, ".timeindex")
    assert len(indexes) >= 4
    indexes[0].unlink()
    time_indexes[1].unlink()
    indexes[2].write_bytes(os.urandom(37))  # not a whole number of entries
    with open(indexes[3], "r+b") as f:  # whole entries, but positions out of order
        f.write(b"\x00\x00\x00\x09\xff\xff\x00\x00" + b"\x00\x00\x00\x0a\x00\x00\x00\x01")
    time_indexes[2].write_bytes(b"\xff" * 24)
    broker.start()
    # segments 0 to 3 each lost or garbled an index (segment 2 two of them): four rebuilt
    assert "t-0: recovery rebuilt 4 missing or corrupt indexes\n" in broker.logs()
    _check_serving(broker, BATCHES * PER_BATCH)


def test_garbage_consumer_offsets_segment_does_not_stop_the_broker(
    make_broker: BrokerFactory,
) -> None:
    broker = _loaded_broker(make_broker)
    broker.kill9()
    offsets_log = _segments(broker.data_dir / "__consumer_offsets-0")[-1]
    offsets_log.write_bytes(os.urandom(offsets_log.stat().st_size))
    broker.start()
    assert re.search(
        r"__consumer_offsets-0: recovery dropped \d+ bytes of torn tail", broker.logs()
    )
    assert _committed(broker) == -1  # nothing valid was left
    _commit(broker, 7)
    assert _committed(broker) == 7
    _check_serving(broker, BATCHES * PER_BATCH)
    with connect(broker.address) as stub:
        assert stub.ListTopics(pb.ListTopicsRequest(), timeout=RPC_TIMEOUT_S).topics
