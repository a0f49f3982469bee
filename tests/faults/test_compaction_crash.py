"""kill -9 a broker while it compacts: no acknowledged latest value is lost, no deleted key
comes back, and the log opens and reads back whole.

The cleaner runs every 20 ms over one-record batches in 1 KiB segments, so the kills land
in every phase of a pass: building the key map, copying segments, and the renames that
swap a copy in. Each write is acknowledged with acks=-1 (fsynced). After each restart the
partition is read batch by batch through Fetch, and for every key the newest record in
the log must be at or after its newest acknowledged write, which itself must still be
there unless a later write of the key superseded it.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import grpc

from logstore.codec import record_batch as rb
from logstore.v1 import logstore_pb2_grpc as pb_grpc
from tests.faults.conftest import LONG, BrokerFactory
from tests.faults.support import connect, create_topic, fetch_once, offsets, produce

CONFIG = """
[log-manager]
cleaner_backoff_ms = 20
flush_check_interval_ms = 50
"""
TOPIC = "kv"
KEYS = 12
CYCLES = 12 if LONG else 4
WRITES_PER_CYCLE = 400 if LONG else 150


def write_until_killed(
    stub: pb_grpc.LogStoreStub,
    cycle: int,
    acked: dict[bytes, tuple[int, bytes]],
    stop: threading.Event,
) -> None:
    """Write keyed records one batch at a time until `stop` or an RPC fails (the kill);
    record every acknowledged write as the key's latest."""
    for i in range(WRITES_PER_CYCLE):
        if stop.is_set():
            return
        key = b"key%d" % (i % KEYS)
        value = b"c%d-%d" % (cycle, i)
        try:
            result = produce(
                stub, TOPIC, rb.encode_batch([(key, value, (), int(time.time() * 1000))])
            )
        except grpc.RpcError:
            return
        if result.error.code != 0:
            return
        acked[key] = (result.base_offset, value)


def read_compacted(stub: pb_grpc.LogStoreStub) -> list[rb.Record]:
    """Every record of the partition, checking CRCs and that batches tile the offsets."""
    start, end = offsets(stub, TOPIC)
    records: list[rb.Record] = []
    offset = start
    for _ in range(end - start + 1):
        if offset >= end:
            break
        result = fetch_once(stub, TOPIC, 0, offset)
        assert result.error.code == 0, result.error.message
        assert result.records, f"nothing served at {offset} below the log end {end}"
        for pos, header in rb.iter_batches(result.records):
            rb.validate_batch(result.records, pos, dense=False)
            if header.next_offset <= offset:
                continue
            assert header.base_offset <= offset, f"offsets {offset}..{header.base_offset} missing"
            records += [
                r for r in rb.decode_batch(result.records, pos).records if r.offset >= offset
            ]
            offset = header.next_offset
    assert offset == end
    return records


def check(records: list[rb.Record], acked: dict[bytes, tuple[int, bytes]]) -> None:
    by_offset = {r.offset: r for r in records}
    newest = {r.key: r for r in records}
    assert [r.offset for r in records] == sorted({r.offset for r in records})
    for key, (offset, value) in acked.items():
        assert key in newest, f"{key!r} lost all its records"
        assert newest[key].offset >= offset, f"{key!r}: acknowledged offset {offset} lost"
        if newest[key].offset == offset:
            assert by_offset[offset].value == value


def test_kill9_during_compaction_loses_no_acknowledged_latest_value(
    make_broker: BrokerFactory, tmp_path: Path, rng: random.Random
) -> None:
    data_dir = tmp_path / "data"
    broker = make_broker(CONFIG, data_dir=data_dir)
    with connect(broker.address) as stub:
        create_topic(
            stub, TOPIC, segment_bytes="1024", cleanup_policy="compact", delete_retention_ms="0"
        )
    acked: dict[bytes, tuple[int, bytes]] = {}
    for cycle in range(CYCLES):
        stop = threading.Event()
        with connect(broker.address) as stub:
            writer = threading.Thread(target=write_until_killed, args=(stub, cycle, acked, stop))
            writer.start()
            time.sleep(rng.uniform(0.2, 1.0))
            broker.kill9()
            stop.set()
            writer.join(timeout=30)
            assert not writer.is_alive()
        broker.start()
        with connect(broker.address) as stub:
            check(read_compacted(stub), acked)
    log = (broker.logs()).lower()
    assert "compacted" in log, "no compaction pass completed; the test did not exercise it"
