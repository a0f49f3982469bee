"""Hostile bytes on the Kafka listener: random, mutated, truncated, oversized and
unknown-version frames get an answer or a closed connection, never a crash, a hang or a
write to a log; and the broker keeps serving everyone else.

One broker serves the whole module (its Kafka port is fixed, so every example connects
afresh); a second one requires SASL, for what a client may do before it authenticates.
Both serve /metrics, which shows what reached a handler. Every socket read has a timeout,
every loop a bound.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka import KafkaConsumer
from kafka.protocol.metadata import ApiVersionsRequest, ApiVersionsResponse, MetadataRequest
from kafka.protocol.producer import ProduceRequest
from prometheus_client.parser import text_string_to_metric_families

from logstore import Admin
from logstore.codec import record_batch as rb
from tests.kafka.conftest import KafkaBrokerProcess

#: how long a response may take before the broker counts as hung (s)
ANSWER_TIMEOUT_S = 10.0
TOPIC = "hostile"
#: how long refusing a hostile frame may take, sent and closed over loopback: decoding it
#: would take from a second (a 512 KiB Metadata) to tens of seconds (a 512 KiB varint) (s)
REFUSAL_S = 0.5
#: the largest request of a connection that has not authenticated (bytes)
UNAUTHENTICATED_LIMIT = 512 * 1024
#: a token of the SASL broker's token file, and its principal
TOKEN, PRINCIPAL = "hostile-t0ken", "User:alice"


class MeteredBroker(KafkaBrokerProcess):
    """A broker process that also serves /metrics."""

    def __init__(self, data_dir: Path, extra_args: list[str] | None = None) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.metrics_port = probe.getsockname()[1]
        metrics = f"--metrics-listen=127.0.0.1:{self.metrics_port}"
        super().__init__(data_dir, [metrics, *(extra_args or [])])

    def sample(self, name: str, **labels: str) -> float:
        """One sample of /metrics (0 when absent)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=ANSWER_TIMEOUT_S) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return 0.0


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeteredBroker]:
    process = MeteredBroker(Path(tmp_path_factory.mktemp("hostile")) / "data")
    process.start()
    with Admin(process.address) as admin:
        admin.create_topic(TOPIC, partitions=1)
    try:
        yield process
    finally:
        process.close()


def _connect(broker: KafkaBrokerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", broker.kafka_port), timeout=ANSWER_TIMEOUT_S)
    sock.settimeout(ANSWER_TIMEOUT_S)
    return sock


def _read_exact(sock: socket.socket, n: int) -> bytes | None:
    """`n` bytes, or None if the broker closed the connection first."""
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            return None
        out += chunk
    return bytes(out)


def _answer(sock: socket.socket) -> bytes | None:
    """The next response frame (without its size), or None for a closed connection."""
    size = _read_exact(sock, 4)
    if size is None:
        return None
    (n,) = struct.unpack(">i", size)
    assert 4 <= n <= 64 * 1024 * 1024, f"response size {n}"
    return _read_exact(sock, n)


def _encoded(request: object, correlation_id: int = 7) -> bytes:
    request.with_header(correlation_id=correlation_id, client_id="hostile")  # type: ignore[attr-defined]
    return bytes(request.encode(header=True, framed=True))  # type: ignore[attr-defined]


def _still_serves(broker: KafkaBrokerProcess) -> None:
    """A fresh connection gets a correct ApiVersions answer."""
    with _connect(broker) as sock:
        sock.sendall(_encoded(ApiVersionsRequest(version=0), correlation_id=99))
        answer = _answer(sock)
    assert answer is not None
    response = ApiVersionsResponse.decode(answer, version=0, header=True)
    assert response.header.correlation_id == 99 and response.error_code == 0
    assert broker.proc is not None and broker.proc.poll() is None


def _send_and_settle(broker: KafkaBrokerProcess, data: bytes) -> None:
    """Send `data`, then read answers until the broker closes or goes quiet. A response
    must come whole; silence (the broker waiting for the rest of a frame) is fine."""
    with _connect(broker) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)  # nothing more is coming: a partial frame ends
        except OSError:
            return  # closed while we wrote: a refusal
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        for _ in range(64):
            assert time.monotonic() < deadline, "the broker neither answered nor closed"
            try:
                if _answer(sock) is None:
                    return
            except ConnectionResetError:
                return


def _log_end(broker: KafkaBrokerProcess) -> int:
    with Admin(broker.address) as admin:
        return admin.describe_topic(TOPIC).partitions[0].log_end_offset


def _produce_frame() -> bytes:
    batch = rb.encode_batch([(b"k", b"v", (), 1_700_000_000_000)])
    partition = ProduceRequest.TopicProduceData.PartitionProduceData(index=0, records=batch)
    request = ProduceRequest(
        version=7,
        transactional_id=None,
        acks=1,
        timeout_ms=5000,
        topic_data=[ProduceRequest.TopicProduceData(name=TOPIC, partition_data=[partition])],
    )
    return _encoded(request)


def test_an_oversized_frame_closes_only_its_connection(broker: KafkaBrokerProcess) -> None:
    with _connect(broker) as sock:
        sock.sendall(struct.pack(">i", 2**31 - 1) + b"\x00" * 64)
        assert _answer(sock) is None
    _still_serves(broker)


def test_an_unknown_api_key_or_version_closes_the_connection(broker: KafkaBrokerProcess) -> None:
    for api_key, version in ((999, 0), (3, 99), (1, 0)):  # unknown, too new, too old
        header = struct.pack(">hhih", api_key, version, 5, -1)
        with _connect(broker) as sock:
            sock.sendall(struct.pack(">i", len(header)) + header)
            assert _answer(sock) is None, (api_key, version)
    _still_serves(broker)


def test_api_versions_at_a_newer_version_answers_its_range(broker: KafkaBrokerProcess) -> None:
    header = struct.pack(">hhih", 18, 9, 41, -1)
    with _connect(broker) as sock:
        sock.sendall(struct.pack(">i", len(header)) + header)
        answer = _answer(sock)
    assert answer is not None
    response = ApiVersionsResponse.decode(answer, version=0, header=True)
    assert response.header.correlation_id == 41
    assert response.error_code == 35  # UNSUPPORTED_VERSION
    assert [(k.api_key, k.min_version, k.max_version) for k in response.api_keys] == [(18, 0, 3)]


def test_truncated_produce_requests_write_nothing(broker: KafkaBrokerProcess) -> None:
    whole = _produce_frame()
    body = whole[4:]
    before = _log_end(broker)
    for cut in range(8, len(body) - 1, 7):
        # A frame whose size says it ends at `cut`: a complete frame with a short body.
        _send_and_settle(broker, struct.pack(">i", cut) + body[:cut])
        # A frame whose size promises more than ever arrives.
        _send_and_settle(broker, whole[: 4 + cut])
    assert _log_end(broker) == before
    _still_serves(broker)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.binary(min_size=0, max_size=200))
def test_random_bytes_never_break_the_broker(broker: KafkaBrokerProcess, data: bytes) -> None:
    _send_and_settle(broker, data)
    _send_and_settle(broker, struct.pack(">i", len(data)) + data)
    _still_serves(broker)


_VALID = [
    _encoded(ApiVersionsRequest(version=3, client_software_name="x", client_software_version="1")),
    _encoded(MetadataRequest(version=8, topics=None, allow_auto_topic_creation=False)),
]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    which=st.integers(min_value=0, max_value=len(_VALID) - 1),
    flips=st.lists(
        st.tuples(st.integers(min_value=4, max_value=10_000), st.integers(0, 255)),
        min_size=1,
        max_size=6,
    ),
)
def test_mutated_requests_never_break_the_broker(
    broker: KafkaBrokerProcess, which: int, flips: list[tuple[int, int]]
) -> None:
    frame = bytearray(_VALID[which])
    for position, value in flips:
        frame[4 + (position - 4) % (len(frame) - 4)] = value
    _send_and_settle(broker, bytes(frame))
    _still_serves(broker)


def test_a_broker_killed_with_open_connections_restarts_on_its_kafka_port(
    tmp_path: Path,
) -> None:
    """The connections a crash drops linger in TIME_WAIT on the broker's side: the
    restarted broker must still bind its Kafka port (and a second broker must not)."""
    process = KafkaBrokerProcess(tmp_path / "data")
    process.start()
    try:
        port = process.kafka_port
        sockets = []
        for _ in range(3):
            sock = _connect(process)
            sock.sendall(_encoded(ApiVersionsRequest(version=0)))
            assert _answer(sock) is not None
            sockets.append(sock)
        process.kill9()
        for sock in sockets:
            sock.close()
        process.start()
        assert process.kafka_port == port
        _still_serves(process)
        second = KafkaBrokerProcess(tmp_path / "other", [f"--kafka-listen=127.0.0.1:{port}"])
        second.kafka_port = port
        with pytest.raises(RuntimeError, match="already in use"):
            second.start()
    finally:
        process.close()


# --- before authentication, and flexible versions ----------------------------------------


def _long_varint_frame() -> bytes:
    """ApiVersions v3 (allowed before SASL) whose client software name's length is a varint
    of 0xff bytes filling the unauthenticated limit: the library's decoder would spend tens
    of seconds of CPU building that number."""
    payload = struct.pack(">hhih", 18, 3, 5, 1) + b"x" + b"\x00"  # header v2, no tags
    payload += b"\xff" * (UNAUTHENTICATED_LIMIT - len(payload) - 1) + b"\x01"
    return struct.pack(">i", len(payload)) + payload


def _seconds_to_close(broker: KafkaBrokerProcess, data: bytes) -> float:
    """Send `data` on a fresh connection; how long until the broker closed it (it must
    close it, answering nothing)."""
    with _connect(broker) as sock:
        started = time.monotonic()
        try:
            sock.sendall(data)
        except OSError:  # closed while we wrote: refused before the frame was in
            return time.monotonic() - started
        with contextlib.suppress(ConnectionResetError):  # closed with our bytes unread
            assert _answer(sock) is None
        return time.monotonic() - started


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeteredBroker]:
    root = Path(tmp_path_factory.mktemp("hostile-sasl"))
    tokens = root / "tokens.toml"
    tokens.write_text(f'[tokens]\n"{TOKEN}" = "{PRINCIPAL}"\n')
    process = MeteredBroker(root / "data", ["--auth-tokens", str(tokens)])
    process.start()
    try:
        yield process
    finally:
        process.close()


@pytest.mark.parametrize("secured", [False, True], ids=["plaintext", "sasl"])
def test_a_long_varint_closes_at_once_and_costs_others_nothing(
    broker: MeteredBroker, sasl_broker: MeteredBroker, secured: bool
) -> None:
    """Four such frames at once, before any authentication: each connection closes within
    `REFUSAL_S`, and a client asking meanwhile is answered as fast."""
    target = sasl_broker if secured else broker
    violations = target.sample("logstore_kafka_protocol_violations_total")
    took: list[float] = []
    attackers = [
        threading.Thread(
            target=lambda: took.append(_seconds_to_close(target, _long_varint_frame()))
        )
        for _ in range(4)
    ]
    for attacker in attackers:
        attacker.start()
    probe_started = time.monotonic()
    _still_serves(target)
    probe_s = time.monotonic() - probe_started
    for attacker in attackers:
        attacker.join(ANSWER_TIMEOUT_S * 2)
    assert len(took) == 4 and max(took) < REFUSAL_S, took
    assert probe_s < REFUSAL_S
    assert target.sample("logstore_kafka_protocol_violations_total") == violations + 4


def test_unmodified_clients_still_speak_api_versions_v3(broker: MeteredBroker) -> None:
    """librdkafka (confluent-kafka) and kafka-python ask ApiVersions v3, the one flexible
    version served, through the bounded decoder."""
    v3 = {"api": "ApiVersions", "version": "3"}
    before = broker.sample("logstore_kafka_requests_total", **v3)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap, "socket.timeout.ms": 5000})
    assert TOPIC in admin.list_topics(timeout=10).topics
    after_librdkafka = broker.sample("logstore_kafka_requests_total", **v3)
    assert after_librdkafka > before
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, request_timeout_ms=5000)
    try:
        assert TOPIC in consumer.topics()
    finally:
        consumer.close()
    assert broker.sample("logstore_kafka_requests_total", **v3) > after_librdkafka


def test_an_unauthenticated_large_metadata_is_refused_undecoded(
    sasl_broker: MeteredBroker,
) -> None:
    """A 512 KiB Metadata frame (about a second of decoding) before SASL: closed from its
    API key, before the rest of it is read; no handler sees it."""
    names = (UNAUTHENTICATED_LIMIT - 64) // 2
    payload = struct.pack(">hhih", 3, 4, 9, 1) + b"x" + struct.pack(">i", names)
    payload += struct.pack(">h", 0) * names + b"\x00"
    assert len(payload) <= UNAUTHENTICATED_LIMIT
    violations = sasl_broker.sample("logstore_kafka_protocol_violations_total")
    took = _seconds_to_close(sasl_broker, struct.pack(">i", len(payload)) + payload)
    assert took < REFUSAL_S
    assert sasl_broker.sample("logstore_kafka_protocol_violations_total") == violations + 1
    assert sasl_broker.sample("logstore_kafka_requests_total", api="Metadata", version="4") == 0
    _still_serves(sasl_broker)
