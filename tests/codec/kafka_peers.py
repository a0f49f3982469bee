"""Real Kafka clients' record batch encoders and decoders, as peers for LogStore's codecs.

- librdkafka (through confluent-kafka) compresses with its own C gzip, snappy, lz4 and
  zstd code. Its built-in mock cluster (`test.mock.num.brokers`) listens on 127.0.0.1 and
  stores produced batches byte for byte, so a Fetch request written with kafka-python's
  protocol classes returns exactly what librdkafka sent, and a Produce request places our
  bytes where librdkafka's consumer reads and decompresses them.
- aiokafka builds and reads batches of all four codecs (its own xerial framing, lz4
  frames with block checksums).
- kafka-python builds and reads gzip and zstd batches; its snappy and lz4 need the
  python-snappy and lz4 packages, which LogStore does not install.

Every network wait here is bounded in count and time.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import confluent_kafka
from aiokafka.record.default_records import (
    DefaultRecordBatchBuilder as AioBatchBuilder,
)
from aiokafka.record.memory_records import MemoryRecords as AioMemoryRecords
from kafka.protocol.consumer import FetchRequest, FetchResponse
from kafka.protocol.metadata import MetadataRequest, MetadataResponse
from kafka.protocol.producer import ProduceRequest, ProduceResponse
from kafka.record.default_records import DefaultRecordBatchBuilder as KafkaPythonBatchBuilder
from kafka.record.memory_records import MemoryRecords as KafkaPythonMemoryRecords

from logstore.codec import format as fmt
from logstore.codec import record_batch as rb

#: one socket operation against the mock cluster (s)
SOCKET_TIMEOUT_S = 10.0
#: a whole produce, fetch or consume against the mock cluster (s)
PEER_TIMEOUT_S = 30.0
MAX_FETCHES = 100
TOPIC = "peer"
#: non-flexible versions, so requests and responses are plain to read and write
FETCH_VERSION = 4
PRODUCE_VERSION = 3
METADATA_VERSION = 4
#: codecs kafka-python encodes and decodes with what LogStore installs
KAFKA_PYTHON_CODECS = (fmt.CODEC_GZIP, fmt.CODEC_ZSTD)


class PeerRecord(NamedTuple):
    """A record as a peer saw it: key, value, headers, timestamp (ms)."""

    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    timestamp: int


def peer_records(records: Sequence[rb.RecordInput]) -> list[PeerRecord]:
    """Encoder inputs (timestamps resolved) as the records a peer should see."""
    return [PeerRecord(k, v, tuple(h or ()), t) for k, v, h, t in records]  # type: ignore[arg-type]


def our_records(buf: bytes) -> list[PeerRecord]:
    """Every record of `buf` as LogStore's decoder reads it."""
    return [PeerRecord(r.key, r.value, r.headers, r.timestamp) for r in rb.decode_all(buf)]


# --- the mock cluster over raw Kafka requests ---------------------------------------------


def _round_trip(address: tuple[str, int], request: Any, response_type: Any, version: int) -> Any:
    request.with_header(correlation_id=1, client_id="logstore-tests")
    frame = request.encode(header=True, framed=True)
    with socket.create_connection(address, timeout=SOCKET_TIMEOUT_S) as sock:
        sock.sendall(frame)
        (size,) = struct.unpack(">i", _read_exactly(sock, 4))
        body = _read_exactly(sock, size)
    return response_type.decode(body, version=version, header=True)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    """`size` bytes; each recv brings at least one or the socket's timeout fails it."""
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"the mock broker closed after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


def _broker_address(producer: confluent_kafka.Producer) -> tuple[str, int]:
    brokers = list(producer.list_topics(timeout=SOCKET_TIMEOUT_S).brokers.values())
    assert len(brokers) == 1, brokers
    return brokers[0].host, brokers[0].port


@contextmanager
def mock_cluster(**config: Any) -> Iterator[tuple[confluent_kafka.Producer, tuple[str, int]]]:
    """A librdkafka producer on its own one-broker mock cluster, and the broker's address;
    the cluster goes with the producer."""
    producer = confluent_kafka.Producer(
        {"test.mock.num.brokers": 1, "log_level": 0, "linger.ms": 50, **config}
    )
    try:
        yield producer, _broker_address(producer)
    finally:
        producer.flush(PEER_TIMEOUT_S)
        del producer


def _create_topic(address: tuple[str, int]) -> None:
    """The mock cluster creates topics a Metadata request names, when allowed to."""
    request_type = MetadataRequest[METADATA_VERSION]
    request = request_type(
        topics=[request_type.MetadataRequestTopic(name=TOPIC)], allow_auto_topic_creation=True
    )
    response = _round_trip(address, request, MetadataResponse, METADATA_VERSION)
    assert [t.error_code for t in response.topics] == [0], response


def fetch_raw(address: tuple[str, int], end_offset: int) -> bytes:
    """The batches of partition 0 up to `end_offset`, byte for byte as the broker holds them."""
    request_type = FetchRequest[FETCH_VERSION]
    partition_type = request_type.FetchTopic.FetchPartition
    data = b""
    offset = 0
    deadline = time.monotonic() + PEER_TIMEOUT_S
    for _ in range(MAX_FETCHES):
        if offset >= end_offset or time.monotonic() > deadline:
            break
        request = request_type(
            replica_id=-1,
            max_wait_ms=0,
            min_bytes=0,
            max_bytes=64 * 1024 * 1024,
            isolation_level=0,
            topics=[
                request_type.FetchTopic(
                    topic=TOPIC,
                    partitions=[
                        partition_type(
                            partition=0, fetch_offset=offset, partition_max_bytes=64 * 1024 * 1024
                        )
                    ],
                )
            ],
        )
        response = _round_trip(address, request, FetchResponse, FETCH_VERSION)
        partition = response.responses[0].partitions[0]
        assert partition.error_code == 0, partition
        for pos, header in rb.iter_batches(partition.records):
            if header.base_offset >= offset:
                data += bytes(partition.records[pos : pos + header.size])
                offset = header.next_offset
    assert offset >= end_offset, f"fetched up to offset {offset} of {end_offset}"
    return data


def librdkafka_produce(compression: str, records: Sequence[rb.RecordInput]) -> bytes:
    """`records` produced by librdkafka with `compression` (Kafka's compression.type name)
    to partition 0 of a mock cluster, fetched back as the batches librdkafka sent."""
    with mock_cluster(**{"compression.type": compression}) as (producer, address):
        for key, value, headers, timestamp in records:
            producer.produce(
                TOPIC,
                value=value,
                key=key,
                partition=0,
                timestamp=timestamp,
                headers=list(headers or ()),
            )
        assert producer.flush(PEER_TIMEOUT_S) == 0
        return fetch_raw(address, len(records))


def librdkafka_consume(batch: bytes) -> tuple[list[PeerRecord], bytes]:
    """Produce our `batch` (raw bytes) to a mock cluster and read it back with librdkafka's
    consumer; returns the records it decoded and the batch as the mock broker stored it."""
    count = sum(header.record_count for _, header in rb.iter_batches(batch))
    with mock_cluster() as (_, address):
        _create_topic(address)
        request_type = ProduceRequest[PRODUCE_VERSION]
        topic_type = request_type.TopicProduceData
        request = request_type(
            transactional_id=None,
            acks=1,
            timeout_ms=int(PEER_TIMEOUT_S * 1000),
            topic_data=[
                topic_type(
                    name=TOPIC,
                    partition_data=[topic_type.PartitionProduceData(index=0, records=batch)],
                )
            ],
        )
        response = _round_trip(address, request, ProduceResponse, PRODUCE_VERSION)
        answer = response.responses[0].partition_responses[0]
        assert answer.error_code == 0, answer
        stored = fetch_raw(address, count)
        return _consume(address, count), stored


def _consume(address: tuple[str, int], count: int) -> list[PeerRecord]:
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": f"{address[0]}:{address[1]}",
            "group.id": "logstore-tests",
            "enable.auto.commit": False,
            "log_level": 0,
        }
    )
    records: list[PeerRecord] = []
    deadline = time.monotonic() + PEER_TIMEOUT_S
    try:
        consumer.assign([confluent_kafka.TopicPartition(TOPIC, 0, 0)])
        while len(records) < count and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            assert message.error() is None, message.error()
            headers = tuple(message.headers() or ())
            records.append(
                PeerRecord(message.key(), message.value(), headers, message.timestamp()[1])
            )
    finally:
        consumer.close()
    return records


# --- aiokafka and kafka-python ---------------------------------------------------------


def _build(builder: Any, records: Sequence[rb.RecordInput]) -> bytes:
    for offset, (key, value, headers, timestamp) in enumerate(records):
        builder.append(offset, timestamp, key, value, list(headers or ()))
    return bytes(builder.build())


def aiokafka_batch(codec: int, records: Sequence[rb.RecordInput]) -> bytes:
    """`records` as one batch built by aiokafka's producer-side builder."""
    return _build(AioBatchBuilder(2, codec, 0, -1, -1, -1, 64 * 1024 * 1024), records)


def kafka_python_batch(codec: int, records: Sequence[rb.RecordInput]) -> bytes:
    """`records` as one batch built by kafka-python's producer-side builder."""
    builder = KafkaPythonBatchBuilder(2, codec, False, -1, -1, -1, 64 * 1024 * 1024)
    return _build(builder, records)


def _read(memory_records: Any) -> list[PeerRecord]:
    records = []
    while memory_records.has_next():
        batch = memory_records.next_batch()
        assert batch.validate_crc()
        records.extend(PeerRecord(r.key, r.value, tuple(r.headers), r.timestamp) for r in batch)
    return records


def aiokafka_read(buf: bytes) -> list[PeerRecord]:
    """Every record of `buf` as aiokafka's consumer-side reader decodes it."""
    return _read(AioMemoryRecords(buf))


def kafka_python_read(buf: bytes) -> list[PeerRecord]:
    """Every record of `buf` as kafka-python's consumer-side reader decodes it."""
    return _read(KafkaPythonMemoryRecords(buf))
