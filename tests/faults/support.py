"""Raw-RPC helpers for the fault tests: create topics, produce and read back whole logs.

Reading back checks every batch's CRC and that offsets are dense, so a test that reads a
log also proves the broker served nothing corrupt.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import grpc

from logstore.codec import record_batch as rb
from logstore.codec.record_batch import Record
from logstore.v1 import logstore_pb2 as pb
from logstore.v1 import logstore_pb2_grpc as pb_grpc

RPC_TIMEOUT_S = 10.0
#: status codes that must never answer a request, however bad
FORBIDDEN_CODES = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})


@contextmanager
def connect(address: str) -> Iterator[pb_grpc.LogStoreStub]:
    with grpc.insecure_channel(
        address,
        options=[
            ("grpc.max_send_message_length", 256 * 1024 * 1024),
            ("grpc.max_receive_message_length", 256 * 1024 * 1024),
            # A shared subchannel may still be backing off from a broker that was just
            # killed; a private one connects to the restarted broker at once.
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 500),
        ],
    ) as channel:
        yield pb_grpc.LogStoreStub(channel)


def create_topic(stub: pb_grpc.LogStoreStub, name: str, partitions: int = 1, **config: str) -> None:
    stub.CreateTopic(
        pb.CreateTopicRequest(
            name=name,
            partitions=partitions,
            config={k.replace("_", "."): v for k, v in config.items()},
        ),
        timeout=RPC_TIMEOUT_S,
    )


def produce(
    stub: pb_grpc.LogStoreStub, topic: str, data: bytes, partition: int = 0, acks: int = -1
) -> pb.ProducePartitionResult:
    """One unary Produce of `data`; returns the partition result (error included)."""
    response = stub.Produce(
        pb.ProduceRequest(
            acks=acks,
            topics=[
                pb.ProduceTopicData(
                    topic=topic,
                    partitions=[pb.ProducePartitionData(partition=partition, records=data)],
                )
            ],
        ),
        timeout=RPC_TIMEOUT_S,
    )
    return response.topics[0].partitions[0]


def values_batch(values: Sequence[bytes], key: bytes | None = None) -> bytes:
    return rb.encode_batch([(key, v, None, int(time.time() * 1000)) for v in values])


def fetch_once(
    stub: pb_grpc.LogStoreStub, topic: str, partition: int, offset: int, max_bytes: int = 1 << 20
) -> pb.FetchPartitionResult:
    response = stub.Fetch(
        pb.FetchRequest(
            topics=[
                pb.FetchTopic(
                    topic=topic,
                    partitions=[
                        pb.FetchPartition(
                            partition=partition, fetch_offset=offset, partition_max_bytes=max_bytes
                        )
                    ],
                )
            ],
            max_wait_ms=0,
        ),
        timeout=RPC_TIMEOUT_S,
    )
    return response.topics[0].partitions[0]


def offsets(stub: pb_grpc.LogStoreStub, topic: str, partition: int = 0) -> tuple[int, int]:
    """(log start offset, log end offset) from DescribeTopic."""
    described = stub.DescribeTopic(pb.DescribeTopicRequest(name=topic), timeout=RPC_TIMEOUT_S)
    part = described.topic.partitions[partition]
    return part.log_start_offset, part.log_end_offset


def read_log(
    stub: pb_grpc.LogStoreStub, topic: str, partition: int = 0, *, moving_start: bool = False
) -> list[Record]:
    """Every record from the log start to the log end. Checks each batch's CRC, that
    batches are whole, and that offsets are dense from the log start offset.

    `moving_start`: retention may delete segments while reading; an offset that falls
    out of range then restarts the read from the new log start.
    """
    start, end = offsets(stub, topic, partition)
    records: list[Record] = []
    offset = start
    for _ in range(2 * (end - start) + 2):
        if offset >= end:
            break
        result = fetch_once(stub, topic, partition, offset)
        if moving_start and result.error.code == grpc.StatusCode.OUT_OF_RANGE.value[0]:
            start, _ = offsets(stub, topic, partition)
            if offset < start:
                records, offset = [], start
                continue
        assert result.error.code == 0, result.error.message
        assert result.records, f"empty fetch at {offset} below the log end {end}"
        for pos, header in rb.iter_batches(result.records):
            rb.validate_batch(result.records, pos)  # CRC and header of every served batch
            consumed = pos + header.size
        assert consumed == len(result.records), "a fetch returned a partial batch"
        for record in rb.decode_all(result.records):
            if offset <= record.offset < end:  # appends may continue meanwhile
                assert record.offset == offset, f"offset gap: {record.offset} after {offset - 1}"
                records.append(record)
                offset += 1
    assert offset == end, f"read stopped at {offset}, log end is {end}"
    return records


def rss_kib(pid: int | None) -> int:
    """Resident set size of process `pid` (KiB), from /proc."""
    assert pid is not None
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")
