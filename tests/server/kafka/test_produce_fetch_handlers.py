"""The Kafka produce, fetch and offsets handlers over a real log manager, without a socket:
each request is encoded and decoded as on the wire, served, and its answer encoded and
decoded back, as a client would see it."""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import errors as kafka_errors
from kafka.protocol.consumer import (
    FetchRequest,
    ListOffsetsRequest,
    OffsetForLeaderEpochRequest,
)
from kafka.protocol.producer import InitProducerIdRequest, ProduceRequest

from logstore.codec import record_batch as rb
from logstore.server.broker import LogStoreServicer
from logstore.server.groups.coordinator import GroupCoordinator
from logstore.server.groups.offsets_store import OFFSETS_TOPIC, OffsetStore
from logstore.server.kafka.apis import API_BY_KEY
from logstore.server.kafka.context import KafkaBroker, RequestContext, Session
from logstore.server.kafka.router import NotServed, dispatch
from logstore.server.kafka.settings import KafkaSettings
from logstore.server.producer_ids import ProducerIdManager
from logstore.storage import segment as segment_module
from logstore.storage.log_config import LogConfig
from logstore.storage.log_manager import LogManager, ManagerSettings

NONE = 0
UNSUPPORTED_VERSION = kafka_errors.UnsupportedVersionError.errno
INVALID_ACKS = kafka_errors.InvalidRequiredAcksError.errno
TXN_REFUSED = kafka_errors.TransactionalIdAuthorizationFailedError.errno
UNKNOWN_TOPIC = kafka_errors.UnknownTopicOrPartitionError.errno
CORRUPT = kafka_errors.CorruptRecordError.errno
TOO_LARGE = kafka_errors.MessageSizeTooLargeError.errno
INVALID_TOPIC = kafka_errors.InvalidTopicError.errno
TOPIC_AUTH = kafka_errors.TopicAuthorizationFailedError.errno
OUT_OF_ORDER = kafka_errors.OutOfOrderSequenceNumberError.errno
OUT_OF_RANGE = kafka_errors.OffsetOutOfRangeError.errno
NOT_LEADER = kafka_errors.NotLeaderForPartitionError.errno
UNKNOWN_EPOCH = kafka_errors.UnknownLeaderEpochError.errno
SESSION_NOT_FOUND = kafka_errors.FetchSessionIdNotFoundError.errno
INVALID_REQUEST = kafka_errors.InvalidRequestError.errno
STORAGE_ERROR = kafka_errors.KafkaStorageError.errno

_ProduceTopic = ProduceRequest.TopicProduceData
_ProducePartition = _ProduceTopic.PartitionProduceData
_FetchTopic = FetchRequest.FetchTopic
_FetchPartition = _FetchTopic.FetchPartition
_OffsetsTopic = ListOffsetsRequest.ListOffsetsTopic
_OffsetsPartition = _OffsetsTopic.ListOffsetsPartition
_EpochTopic = OffsetForLeaderEpochRequest.OffsetForLeaderTopic
_EpochPartition = _EpochTopic.OffsetForLeaderPartition


class Core:
    """A standalone broker's core, seen through the Kafka handlers."""

    def __init__(self, data_dir: Path) -> None:
        self.manager = LogManager(
            data_dir,
            default_config=LogConfig.from_properties({}),
            settings=ManagerSettings(background_threads=False),
        )
        self.servicer = LogStoreServicer(
            self.manager,
            OffsetStore(self.manager),
            ProducerIdManager(data_dir / "producer-id-block"),
            GroupCoordinator(partition_counts=lambda _t: 1),
        )
        #: (resource type, name, operation) -> allowed; unlisted ones are allowed
        self.acls: dict[tuple[str, str, str], bool] = {}
        #: every ACL question the handlers asked, in order
        self.asked: list[tuple[str, str, str]] = []
        settings = KafkaSettings(listen="127.0.0.1:0")
        self.broker = KafkaBroker(self.servicer, settings, ("127.0.0.1", 9092), self._authorize)

    def _authorize(self, principal: str, resource_type: str, name: str, operation: str) -> bool:
        key = (resource_type, name, operation)
        self.asked.append(key)
        return self.acls.get(key, True)

    def serve(self, request: Any) -> Any:
        """Serve `request` as the listener would: the handler's response object or None."""
        api = API_BY_KEY[request.API_KEY]
        assert api.supports(request.version), f"{api.name} v{request.version} is not served"
        received = api.request.decode(request.encode(), version=request.version)
        ctx = RequestContext(self.broker, Session(peer="test"), request.version, "test", 7)
        return dispatch(ctx, api.key, received)

    def call(self, request: Any) -> Any:
        """Serve `request` and decode the answer as a client would."""
        response = self.serve(request)
        api = API_BY_KEY[request.API_KEY]
        return api.response.decode(response.encode(), version=request.version)

    def close(self) -> None:
        self.manager.close()


@pytest.fixture
def core(tmp_path: Path) -> Iterator[Core]:
    made = Core(tmp_path / "data")
    made.manager.create_topic("t", 2, {})
    try:
        yield made
    finally:
        made.close()


def batch(*values: bytes, ts: int = 1_000, **fields: Any) -> bytes:
    return rb.encode_batch(
        [(b"k", v, [("h", b"1")], ts + i) for i, v in enumerate(values)], **fields
    )


def produce(
    core: Core,
    data: dict[tuple[str, int], bytes | None],
    *,
    version: int = 8,
    acks: int = -1,
    transactional_id: str | None = None,
) -> dict[tuple[str, int], Any]:
    """(topic, partition) -> its partition response."""
    by_topic: dict[str, list[Any]] = {}
    for (topic, partition), records in data.items():
        by_topic.setdefault(topic, []).append(_ProducePartition(index=partition, records=records))
    fields: dict[str, Any] = {"acks": acks, "timeout_ms": 5000}
    if version >= 3:
        fields["transactional_id"] = transactional_id
    request = ProduceRequest(
        version=version,
        topic_data=[_ProduceTopic(name=t, partition_data=p) for t, p in by_topic.items()],
        **fields,
    )
    response = core.call(request)
    return {(t.name, p.index): p for t in response.responses for p in t.partition_responses}


def fetch(
    core: Core,
    offsets: dict[tuple[str, int], int],
    *,
    version: int = 11,
    max_wait_ms: int = 0,
    max_bytes: int = 1 << 20,
    partition_max_bytes: int = 1 << 20,
    current_leader_epoch: int = -1,
    replica_id: int = -1,
    isolation_level: int = 0,
    min_bytes: int = 1,
    **session: int,
) -> Any:
    """A FetchResponse; `session`: session_id and session_epoch (v7+)."""
    by_topic: dict[str, list[Any]] = {}
    for (topic, partition), offset in offsets.items():
        by_topic.setdefault(topic, []).append(
            _FetchPartition(
                partition=partition,
                fetch_offset=offset,
                partition_max_bytes=partition_max_bytes,
                current_leader_epoch=current_leader_epoch,
            )
        )
    request = FetchRequest(
        version=version,
        replica_id=replica_id,
        max_wait_ms=max_wait_ms,
        min_bytes=min_bytes,
        max_bytes=max_bytes,
        isolation_level=isolation_level,
        topics=[_FetchTopic(topic=t, partitions=p) for t, p in by_topic.items()],
        **session,
    )
    return core.call(request)


def fetched(response: Any) -> dict[tuple[str, int], Any]:
    return {(t.topic, p.partition_index): p for t in response.responses for p in t.partitions}


def values(records: bytes) -> list[tuple[int, bytes | None]]:
    return [(r.offset, r.value) for r in rb.decode_all(records)]


def list_offsets(
    core: Core, topic: str, partition: int, timestamp: int, version: int = 5, **fields: Any
) -> Any:
    request = ListOffsetsRequest(
        version=version,
        replica_id=-1,
        isolation_level=0,
        topics=[
            _OffsetsTopic(
                name=topic,
                partitions=[
                    _OffsetsPartition(partition_index=partition, timestamp=timestamp, **fields)
                ],
            )
        ],
    )
    return core.call(request).topics[0].partitions[0]


# --- produce ---------------------------------------------------------------------------------


def test_produce_appends_and_fetch_returns_the_same_bytes(core: Core) -> None:
    first = batch(b"a", b"b")
    answers = produce(core, {("t", 0): first, ("t", 1): batch(b"c")})
    assert {k: (a.error_code, a.base_offset) for k, a in answers.items()} == {
        ("t", 0): (NONE, 0),
        ("t", 1): (NONE, 0),
    }
    assert answers[("t", 0)].log_append_time_ms == -1  # CreateTime topic
    assert answers[("t", 0)].log_start_offset == 0
    assert answers[("t", 0)].error_message is None
    second = produce(core, {("t", 0): batch(b"d")})[("t", 0)]
    assert second.base_offset == 2
    part = fetched(fetch(core, {("t", 0): 0}))[("t", 0)]
    assert part.error_code == NONE
    assert (part.high_watermark, part.last_stable_offset, part.log_start_offset) == (3, 3, 0)
    assert part.preferred_read_replica == -1
    assert part.aborted_transactions is None  # read_uncommitted
    # A byte copier: the first batch comes back as sent (its base offset was 0 already).
    assert part.records[: len(first)] == first
    assert values(part.records) == [(0, b"a"), (1, b"b"), (2, b"d")]


@pytest.mark.parametrize("version", [0, 1, 2])
def test_produce_before_v3_is_unsupported_and_writes_nothing(core: Core, version: int) -> None:
    answer = produce(core, {("t", 0): batch(b"x")}, version=version)[("t", 0)]
    assert (answer.error_code, answer.base_offset) == (UNSUPPORTED_VERSION, -1)
    assert core.manager.partition("t", 0).log_end_offset == 0


def test_bad_acks_are_refused_whole_and_write_nothing(core: Core) -> None:
    answers = produce(core, {("t", 0): batch(b"x"), ("t", 1): batch(b"y")}, acks=2)
    assert {a.error_code for a in answers.values()} == {INVALID_ACKS}
    assert core.manager.partition("t", 0).log_end_offset == 0
    assert core.manager.partition("t", 1).log_end_offset == 0


def test_transactions_are_refused_and_write_nothing(core: Core) -> None:
    by_id = produce(core, {("t", 0): batch(b"x")}, transactional_id="tx")[("t", 0)]
    assert (by_id.error_code, by_id.base_offset) == (TXN_REFUSED, -1)
    assert by_id.error_message is not None and "transactions" in by_id.error_message
    transactional = batch(
        b"y", producer_id=7, producer_epoch=0, base_sequence=0, is_transactional=True
    )
    plain = batch(b"z")
    answers = produce(core, {("t", 0): plain, ("t", 1): transactional})
    assert {a.error_code for a in answers.values()} == {TXN_REFUSED}
    assert core.manager.partition("t", 0).log_end_offset == 0


def test_a_bad_batch_fails_its_own_partition_only(core: Core) -> None:
    good = batch(b"fine")
    bad = bytearray(batch(b"bad"))
    bad[-1] ^= 0xFF  # breaks the CRC
    answers = produce(core, {("t", 0): bytes(bad), ("t", 1): good})
    assert answers[("t", 0)].error_code == CORRUPT
    assert "CRC" in answers[("t", 0)].error_message
    assert answers[("t", 1)].error_code == NONE
    assert core.manager.partition("t", 0).log_end_offset == 0
    assert core.manager.partition("t", 1).log_end_offset == 1


def test_partition_errors_use_kafka_codes(core: Core) -> None:
    core.manager.create_topic("small", 1, {"max.message.bytes": "200"})
    answers = produce(
        core,
        {
            ("nope", 0): batch(b"x"),
            ("t", 9): batch(b"x"),
            ("small", 0): batch(b"v" * 500),
            (OFFSETS_TOPIC, 0): batch(b"x"),
            ("t", 0): None,
        },
    )
    assert {k: a.error_code for k, a in answers.items()} == {
        ("nope", 0): UNKNOWN_TOPIC,
        ("t", 9): UNKNOWN_TOPIC,
        ("small", 0): TOO_LARGE,
        (OFFSETS_TOPIC, 0): INVALID_TOPIC,
        ("t", 0): CORRUPT,
    }


def test_produce_needs_the_produce_acl_per_topic(core: Core) -> None:
    core.manager.create_topic("open", 1, {})
    core.acls[("topic", "t", "produce")] = False
    answers = produce(core, {("t", 0): batch(b"x"), ("open", 0): batch(b"y")})
    assert answers[("t", 0)].error_code == TOPIC_AUTH
    assert answers[("open", 0)].error_code == NONE
    assert ("topic", "open", "produce") in core.asked
    assert core.manager.partition("t", 0).log_end_offset == 0


def test_log_append_time_topics_answer_the_append_time(core: Core) -> None:
    core.manager.create_topic("lat", 1, {"message.timestamp.type": "LogAppendTime"})
    before = int(time.time() * 1000)
    answer = produce(core, {("lat", 0): batch(b"x")})[("lat", 0)]
    assert answer.error_code == NONE
    assert before - 1000 <= answer.log_append_time_ms <= int(time.time() * 1000) + 1000


def test_idempotent_retries_are_stored_once_and_gaps_refused(core: Core) -> None:
    init = core.call(
        InitProducerIdRequest(version=1, transactional_id=None, transaction_timeout_ms=1000)
    )
    assert (init.error_code, init.producer_epoch) == (NONE, 0)
    pid = init.producer_id
    first = batch(b"a", producer_id=pid, producer_epoch=0, base_sequence=0)
    assert produce(core, {("t", 0): first})[("t", 0)].base_offset == 0
    retry = produce(core, {("t", 0): first})[("t", 0)]
    assert (retry.error_code, retry.base_offset) == (NONE, 0)  # the original's offsets
    gap = batch(b"c", producer_id=pid, producer_epoch=0, base_sequence=5)
    assert produce(core, {("t", 0): gap})[("t", 0)].error_code == OUT_OF_ORDER
    assert core.manager.partition("t", 0).log_end_offset == 1


def test_a_failed_fsync_is_answered_as_a_storage_error(
    core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    """acks=all waits for the fsync; when the disk refuses it the producer is told, the
    connection stays up, and acks=1 (which waits for no fsync) still succeeds."""

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(segment_module.os, "fsync", failing_fsync)
    answer = produce(core, {("t", 0): batch(b"x")}, acks=-1)[("t", 0)]
    assert (answer.error_code, answer.base_offset) == (STORAGE_ERROR, -1)
    assert "Input/output error" in answer.error_message
    assert produce(core, {("t", 0): batch(b"y")}, acks=1)[("t", 0)].error_code == NONE


def test_acks_zero_answers_nothing_and_closes_on_failure(core: Core) -> None:
    request = ProduceRequest(
        version=7,
        transactional_id=None,
        acks=0,
        timeout_ms=1000,
        topic_data=[
            _ProduceTopic(
                name="t", partition_data=[_ProducePartition(index=0, records=batch(b"x"))]
            )
        ],
    )
    assert core.serve(request) is None
    assert core.manager.partition("t", 0).log_end_offset == 1
    request.topic_data[0].name = "missing"
    with pytest.raises(NotServed, match="missing"):
        core.serve(request)


def test_init_producer_id_hands_out_new_ids_and_refuses_transactions(core: Core) -> None:
    ids = [
        core.call(
            InitProducerIdRequest(version=v, transactional_id=None, transaction_timeout_ms=1)
        ).producer_id
        for v in (0, 1)
    ]
    assert ids[0] >= 0 and ids[1] > ids[0]
    refused = core.call(
        InitProducerIdRequest(version=1, transactional_id="tx", transaction_timeout_ms=1)
    )
    assert (refused.error_code, refused.producer_id) == (TXN_REFUSED, -1)
    empty = core.call(
        InitProducerIdRequest(version=1, transactional_id="", transaction_timeout_ms=1)
    )
    assert empty.error_code == INVALID_REQUEST


# --- fetch -----------------------------------------------------------------------------------


def test_a_fetch_inside_a_batch_returns_the_whole_batch(core: Core) -> None:
    produce(core, {("t", 0): batch(b"a", b"b", b"c")})
    part = fetched(fetch(core, {("t", 0): 2}))[("t", 0)]
    assert values(part.records) == [(0, b"a"), (1, b"b"), (2, b"c")]


def test_fetch_errors(core: Core) -> None:
    produce(core, {("t", 0): batch(b"a")})
    answers = fetched(fetch(core, {("t", 0): 5, ("t", 7): 0, ("nope", 0): 0}))
    assert answers[("t", 0)].error_code == OUT_OF_RANGE
    assert (answers[("t", 0)].log_start_offset, answers[("t", 0)].high_watermark) == (0, 1)
    assert answers[("t", 7)].error_code == UNKNOWN_TOPIC
    assert answers[("nope", 0)].error_code == UNKNOWN_TOPIC


def test_fetch_checks_the_consume_acl(core: Core) -> None:
    produce(core, {("t", 0): batch(b"a")})
    core.acls[("topic", "t", "consume")] = False
    started = time.monotonic()
    part = fetched(fetch(core, {("t", 0): 0}, max_wait_ms=5000))[("t", 0)]
    assert (part.error_code, part.records) == (TOPIC_AUTH, b"")
    assert time.monotonic() - started < 4  # an error is answered at once, not long-polled


def test_replica_fetches_and_incremental_sessions_are_refused(core: Core) -> None:
    produce(core, {("t", 0): batch(b"a")})
    replica = fetched(fetch(core, {("t", 0): 0}, replica_id=1))[("t", 0)]
    assert replica.error_code == NOT_LEADER
    incremental = fetch(core, {("t", 0): 0}, session_id=12, session_epoch=3)
    assert (incremental.error_code, incremental.responses) == (SESSION_NOT_FOUND, [])
    full = fetch(core, {("t", 0): 0}, session_id=0, session_epoch=0)
    assert (full.error_code, full.session_id) == (NONE, 0)
    assert values(fetched(full)[("t", 0)].records) == [(0, b"a")]


def test_fetch_checks_the_leader_epoch(core: Core) -> None:
    produce(core, {("t", 0): batch(b"a")})
    current = fetched(fetch(core, {("t", 0): 0}, current_leader_epoch=0))[("t", 0)]
    assert current.error_code == NONE
    newer = fetched(fetch(core, {("t", 0): 0}, current_leader_epoch=1))[("t", 0)]
    assert newer.error_code == UNKNOWN_EPOCH


def test_read_committed_reads_to_the_high_watermark(core: Core) -> None:
    produce(core, {("t", 0): batch(b"a", b"b")})
    part = fetched(fetch(core, {("t", 0): 0}, version=4, isolation_level=1))[("t", 0)]
    assert part.aborted_transactions == []
    assert part.last_stable_offset == part.high_watermark == 2
    assert len(values(part.records)) == 2


def test_the_first_batch_comes_whole_however_large(core: Core) -> None:
    produce(core, {("t", 0): batch(b"x" * 5000)})
    produce(core, {("t", 0): batch(b"y")})
    part = fetched(fetch(core, {("t", 0): 0}, max_bytes=100, partition_max_bytes=100))[("t", 0)]
    assert values(part.records) == [(0, b"x" * 5000)]  # KIP-74: one batch, over the limit


def test_a_long_poll_returns_when_data_arrives(core: Core) -> None:
    timer = threading.Timer(0.3, lambda: produce(core, {("t", 0): batch(b"late")}, acks=1))
    started = time.monotonic()
    timer.start()
    try:
        part = fetched(fetch(core, {("t", 0): 0}, max_wait_ms=20_000))[("t", 0)]
    finally:
        timer.join()
    assert values(part.records) == [(0, b"late")]
    assert time.monotonic() - started < 10


def test_a_long_poll_waits_out_max_wait_ms_without_data(core: Core) -> None:
    started = time.monotonic()
    part = fetched(fetch(core, {("t", 0): 0}, max_wait_ms=300))[("t", 0)]
    assert (part.error_code, part.records) == (NONE, b"")
    assert 0.25 <= time.monotonic() - started < 10


def test_a_partition_twice_in_one_produce_request_writes_nothing(core: Core) -> None:
    request = ProduceRequest(
        version=8,
        acks=1,
        timeout_ms=5000,
        transactional_id=None,
        topic_data=[
            _ProduceTopic(
                name="t", partition_data=[_ProducePartition(index=0, records=batch(b"a"))]
            ),
            _ProduceTopic(
                name="t", partition_data=[_ProducePartition(index=0, records=batch(b"b"))]
            ),
        ],
    )
    codes = [p.error_code for t in core.call(request).responses for p in t.partition_responses]
    assert codes == [kafka_errors.InvalidRequestError.errno] * 2
    assert core.manager.partition("t", 0).log_end_offset == 0


def test_min_bytes_zero_answers_at_once(core: Core) -> None:
    """Kafka answers a fetch with min_bytes 0 at once, whatever max_wait_ms says."""
    started = time.monotonic()
    part = fetched(fetch(core, {("t", 0): 0}, max_wait_ms=5_000, min_bytes=0))[("t", 0)]
    assert (part.error_code, part.records) == (NONE, b"")
    assert time.monotonic() - started < 1.0


# --- offsets ---------------------------------------------------------------------------------


def test_list_offsets_earliest_latest_and_by_time(core: Core) -> None:
    produce(core, {("t", 0): batch(b"a", b"b", ts=1_000)})
    produce(core, {("t", 0): batch(b"c", ts=5_000)})
    latest = list_offsets(core, "t", 0, -1)
    assert (latest.error_code, latest.offset, latest.timestamp, latest.leader_epoch) == (
        NONE,
        3,
        -1,
        0,
    )
    earliest = list_offsets(core, "t", 0, -2)
    assert (earliest.offset, earliest.timestamp) == (0, -1)
    by_time = list_offsets(core, "t", 0, 1_001)
    assert (by_time.offset, by_time.timestamp) == (1, 1_001)
    later = list_offsets(core, "t", 0, 2_000)
    assert (later.offset, later.timestamp) == (2, 5_000)
    none = list_offsets(core, "t", 0, 9_000)
    assert (none.error_code, none.offset, none.timestamp) == (NONE, -1, -1)
    v1 = list_offsets(core, "t", 0, -1, version=1)
    assert (v1.offset, v1.timestamp) == (3, -1)


def test_list_offsets_errors(core: Core) -> None:
    assert list_offsets(core, "nope", 0, -1).error_code == UNKNOWN_TOPIC
    assert list_offsets(core, "t", 0, -1, current_leader_epoch=3).error_code == UNKNOWN_EPOCH
    core.acls[("topic", "t", "describe")] = False
    assert list_offsets(core, "t", 0, -1).error_code == TOPIC_AUTH


def test_a_partition_listed_twice_is_an_invalid_request(core: Core) -> None:
    produce(core, {("t", 0): batch(b"a", ts=1_000)})
    twice = [_OffsetsPartition(partition_index=0, timestamp=1_000)] * 2
    request = ListOffsetsRequest(
        version=5,
        replica_id=-1,
        isolation_level=0,
        topics=[
            _OffsetsTopic(name="t", partitions=twice),
            _OffsetsTopic(
                name="t", partitions=[_OffsetsPartition(partition_index=1, timestamp=-1)]
            ),
        ],
    )
    answered = [
        (p.partition_index, p.error_code, p.offset)
        for t in core.call(request).topics
        for p in t.partitions
    ]
    invalid = kafka_errors.InvalidRequestError.errno
    assert answered == [(0, invalid, -1), (0, invalid, -1), (1, NONE, 0)]


def test_offset_for_leader_epoch_ends_at_the_log_end_standalone(core: Core) -> None:
    produce(core, {("t", 0): batch(b"a", b"b")})

    def ask(leader_epoch: int, replica_id: int = -1, current: int = 0) -> Any:
        request = OffsetForLeaderEpochRequest(
            version=3,
            replica_id=replica_id,
            topics=[
                _EpochTopic(
                    topic="t",
                    partitions=[
                        _EpochPartition(
                            partition=0, current_leader_epoch=current, leader_epoch=leader_epoch
                        )
                    ],
                )
            ],
        )
        return core.call(request).topics[0].partitions[0]

    zero = ask(0)
    assert (zero.error_code, zero.leader_epoch, zero.end_offset) == (NONE, 0, 2)
    below = ask(-1)
    assert (below.error_code, below.leader_epoch, below.end_offset) == (NONE, -1, -1)
    assert ask(0, replica_id=2).error_code == NOT_LEADER
    assert ask(0, current=1).error_code == UNKNOWN_EPOCH


def test_the_fetch_limits_are_in_bytes_of_whole_batches(core: Core) -> None:
    for i in range(5):
        produce(core, {("t", 0): batch(b"%d" % i * 50)})
    one = len(batch(b"0" * 50))
    part = fetched(fetch(core, {("t", 0): 0}, partition_max_bytes=2 * one + 10))[("t", 0)]
    assert [offset for offset, _ in values(part.records)] == [0, 1]
