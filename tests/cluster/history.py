"""What a replicated partition promised, what its readers saw, and the checks after healing.

A `History` records every produce the cluster acknowledged (value -> offset) and every
record a consumer read from a leader (offset -> value). `ProducerThread` sends batches
with acks=all without pause, each retried until acknowledged; `ConsumerThread` reads from
whichever broker leads with plain Fetch, as a client does. After the faults are healed,
`check_healed` checks Kafka's guarantees against the final logs:

- every acknowledged record is present exactly once, at the offset it was acknowledged at;
- offsets are dense from 0, values unique (every attempt sends new values, so a value
  twice is a batch stored twice), leader epochs never decrease along the log;
- every record a consumer saw (all below a high watermark) is in the final log at the same
  offset: nothing a consumer read ever vanished;
- every replica's segment files hold the same batches, byte for byte.

Every retry sends fresh values ("<producer>-<send>-<attempt>-<i>"): a produce whose answer
was lost may still have been stored, and only values no one acknowledged may be missing.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from logstore.codec import record_batch as rb
from logstore.server.errors import ERROR_KIND_KEY
from logstore.v1 import logstore_pb2 as pb
from tests.cluster.harness import ClusterHarness, UnknownPartitionError
from tests.helpers import scan_file, wait_until

TOPIC = "orders"
#: acks values on the wire
ACKS_ALL = -1
ACKS_LEADER = 1
#: deadline of one Produce RPC (s): longer than an ISR shrink (lag time + a maintenance
#: pass) so a produce waiting for a paused follower is answered, not abandoned
PRODUCE_RPC_TIMEOUT_S = 8.0
#: how long one send is retried before the producer reports it unacknowledged (s)
SEND_DEADLINE_S = 40.0
#: deadline of one consumer Fetch RPC (s), beyond its long poll
FETCH_RPC_TIMEOUT_S = 3.0
#: long poll of a consumer's fetch (ms)
FETCH_MAX_WAIT_MS = 200
#: pause after a refused or failed call before the next try (s)
RETRY_PAUSE_S = 0.05


# --- single calls ------------------------------------------------------------------------


def refusal(exc: grpc.RpcError) -> str:
    """The LogStore error kind of a failed call (its trailing metadata), else its status."""
    trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == ERROR_KIND_KEY:
            return str(value)
    return str(exc.code()) if hasattr(exc, "code") else type(exc).__name__


def create_topic(
    cluster: ClusterHarness,
    topic: str = TOPIC,
    partitions: int = 1,
    rf: int = 3,
    **config: str,
) -> None:
    cluster.call(
        "CreateTopic",
        pb.CreateTopicRequest(
            name=topic, partitions=partitions, replication_factor=rf, config=config
        ),
    )


def produce(
    cluster: ClusterHarness,
    broker_id: int,
    values: list[bytes],
    *,
    acks: int = ACKS_ALL,
    topic: str = TOPIC,
    partition: int = 0,
    timeout_s: float = PRODUCE_RPC_TIMEOUT_S,
) -> pb.ProducePartitionResult:
    """One batch of `values` to `partition` of `topic` on `broker_id`; raises
    grpc.RpcError when the call fails as a whole."""
    batch = rb.encode_values(list(values), int(time.time() * 1000))
    request = pb.ProduceRequest(
        acks=acks,
        topics=[
            pb.ProduceTopicData(
                topic=topic,
                partitions=[pb.ProducePartitionData(partition=partition, records=batch)],
            )
        ],
    )
    answer = cluster.call("Produce", request, broker_id, timeout_s)
    assert isinstance(answer, pb.ProduceResponse)
    return answer.topics[0].partitions[0]


@dataclass(frozen=True)
class Acknowledged:
    """One acknowledged batch: its values from `base_offset` on, and who acknowledged it."""

    values: list[bytes]
    base_offset: int
    leader: int
    leader_epoch: int


def send_until_acknowledged(
    cluster: ClusterHarness,
    make_values: Callable[[int], list[bytes]],
    *,
    topic: str = TOPIC,
    timeout_s: float = SEND_DEADLINE_S,
    stop: threading.Event | None = None,
    refusals: Counter[str] | None = None,
    rpc_timeout_s: float = PRODUCE_RPC_TIMEOUT_S,
) -> Acknowledged | None:
    """Send `make_values(attempt)` acks=all to whichever broker leads until one attempt is
    acknowledged; None when `timeout_s` passed or `stop` was set first. Each attempt sends
    the values `make_values` gives for it, so a retry never repeats an unanswered batch.
    `refusals` counts why attempts failed (error kind or gRPC status)."""
    deadline = time.monotonic() + timeout_s
    attempt = 0
    while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
        current = cluster.leader_of(topic)
        if current is None:
            time.sleep(RETRY_PAUSE_S)
            continue
        leader, epoch = current
        values = make_values(attempt)
        attempt += 1
        why = ""
        try:
            result = produce(cluster, leader, values, topic=topic, timeout_s=rpc_timeout_s)
        except grpc.RpcError as exc:
            why = refusal(exc)
        else:
            if not result.error.code:
                return Acknowledged(values, result.base_offset, leader, epoch)
            why = result.error.kind or str(result.error.code)
        if refusals is not None:
            refusals[why] += 1
        time.sleep(RETRY_PAUSE_S)
    return None


def produce_until_acknowledged(
    cluster: ClusterHarness, values: list[bytes], *, topic: str = TOPIC, timeout_s: float = 30
) -> int:
    """Send `values` acks=all through any failover; their base offset once acknowledged.
    A retry sends the same values again, so use it only where no attempt can be lost
    unanswered, or use `send_until_acknowledged`."""
    sent = send_until_acknowledged(
        cluster, lambda attempt: values, topic=topic, timeout_s=timeout_s
    )
    if sent is None:
        raise AssertionError(f"no acknowledgement within {timeout_s} s")
    return sent.base_offset


def fetch_all(cluster: ClusterHarness, broker_id: int, topic: str = TOPIC) -> list[rb.Record]:
    """Every record below the high watermark of `broker_id`, which must lead, in order."""
    records: list[rb.Record] = []
    offset = 0
    for _ in range(100_000):
        result = fetch(cluster, broker_id, offset, topic=topic, max_wait_ms=0)
        assert not result.error.code, result.error.message
        batch = [r for r in rb.decode_all(result.records) if r.offset >= offset]
        if not batch:
            return records
        records.extend(batch)
        offset = batch[-1].offset + 1
    raise AssertionError("fetch did not reach the end")


def fetch(
    cluster: ClusterHarness,
    broker_id: int,
    offset: int,
    *,
    topic: str = TOPIC,
    max_wait_ms: int = FETCH_MAX_WAIT_MS,
) -> pb.FetchPartitionResult:
    """A consumer's Fetch of partition 0 from `offset` (records below the high watermark)."""
    request = pb.FetchRequest(
        topics=[
            pb.FetchTopic(
                topic=topic, partitions=[pb.FetchPartition(partition=0, fetch_offset=offset)]
            )
        ],
        max_wait_ms=max_wait_ms,
    )
    answer = cluster.call("Fetch", request, broker_id, max_wait_ms / 1000 + FETCH_RPC_TIMEOUT_S)
    assert isinstance(answer, pb.FetchResponse)
    return answer.topics[0].partitions[0]


# --- the replicas' files -----------------------------------------------------------------


def log_batches(cluster: ClusterHarness, broker_id: int, topic: str = TOPIC) -> list[bytes]:
    """Every batch in the broker's segment files of `topic`-0, as bytes, oldest first (read
    after the broker stopped: a running broker may be writing the last one)."""
    directory = cluster.brokers[broker_id].data_dir / f"{topic}-0"
    batches = []
    for path in sorted(directory.glob("*.log")):
        data = path.read_bytes()
        for position, header in scan_file(path):
            batches.append(data[position : position + header.size])
    return batches


def records_of(batches: list[bytes]) -> list[rb.Record]:
    return [record for batch in batches for record in rb.decode_all(batch)]


# --- the checks --------------------------------------------------------------------------


def check_history(acknowledged: dict[bytes, int], records: list[rb.Record]) -> None:
    """Offsets dense from 0; each acknowledged value exactly once, at its offset (a record
    missing, moved or stored twice is misplaced)."""
    offsets = [r.offset for r in records]
    assert offsets == list(range(len(offsets))), "offsets are dense from 0"
    seen: dict[bytes, list[int]] = {}
    for record in records:
        assert record.value is not None
        seen.setdefault(record.value, []).append(record.offset)
    wrong = sorted(
        (offset, value, seen.get(value))
        for value, offset in acknowledged.items()
        if seen.get(value) != [offset]
    )
    details = "; ".join(f"{v!r} acknowledged at {o}, found at {f}" for o, v, f in wrong[:10])
    assert not wrong, (
        f"{len(wrong)} of {len(acknowledged)} acknowledged records misplaced: {details}"
    )


def check_unique_values(records: list[rb.Record]) -> None:
    """No value twice: every attempt sent values of its own, so a repeat is a batch stored
    twice."""
    counts = Counter(r.value for r in records)
    repeated = {v: n for v, n in counts.items() if n > 1}
    assert not repeated, f"values stored more than once: {sorted(repeated.items())[:10]}"


def check_consumed(consumed: dict[int, bytes], records: list[rb.Record]) -> None:
    """Every record a consumer read is in the final log at the offset it was read at."""
    final = {r.offset: r.value for r in records}
    vanished = {
        offset: (value, final.get(offset))
        for offset, value in consumed.items()
        if final.get(offset) != value
    }
    assert not vanished, (
        f"{len(vanished)} record(s) a consumer read are not in the final log at their "
        f"offset (offset: (read, final)): {sorted(vanished.items())[:10]}"
    )


def check_epochs_never_decrease(batches: list[bytes]) -> None:
    epochs = [rb.read_header(batch).partition_leader_epoch for batch in batches]
    drops = [(i, a, b) for i, (a, b) in enumerate(itertools.pairwise(epochs)) if b < a]
    assert not drops, f"leader epochs decrease along the log at (batch, epoch, next): {drops}"


# --- the record of a run -----------------------------------------------------------------


@dataclass
class History:
    """Acknowledged produces and consumed records of one test, shared between threads."""

    #: value -> the offset it was acknowledged at
    acknowledged: dict[bytes, int] = field(default_factory=dict)
    #: offset -> the value a consumer read there
    consumed: dict[int, bytes] = field(default_factory=dict)
    #: broken promises seen while running (e.g. an acknowledgement at an offset below an
    #: earlier one of the same producer)
    violations: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def acknowledge(self, values: list[bytes], base_offset: int) -> None:
        with self.lock:
            for i, value in enumerate(values):
                self.acknowledged[value] = base_offset + i

    def consume(self, offset: int, value: bytes) -> None:
        with self.lock:
            earlier = self.consumed.get(offset)
            if earlier is not None and earlier != value:
                self.violations.append(f"offset {offset} read as {earlier!r}, later as {value!r}")
            self.consumed[offset] = value

    def violate(self, what: str) -> None:
        with self.lock:
            self.violations.append(what)

    @property
    def acknowledged_count(self) -> int:
        with self.lock:
            return len(self.acknowledged)

    def snapshot(self) -> tuple[dict[bytes, int], dict[int, bytes], list[str]]:
        with self.lock:
            return dict(self.acknowledged), dict(self.consumed), list(self.violations)


class ProducerThread(threading.Thread):
    """Sends batches acks=all one after the other until stopped, each retried with fresh
    values until acknowledged or SEND_DEADLINE_S passed (then it is a failure).

    Records each acknowledgement in the history, checks that a later acknowledgement never
    lies below an earlier one, and counts failovers: changes of the (leader, leader epoch)
    that acknowledged consecutive sends.
    """

    def __init__(
        self,
        cluster: ClusterHarness,
        history: History,
        *,
        name: str = "p",
        batch_size: int = 3,
        topic: str = TOPIC,
        rpc_timeout_s: float = PRODUCE_RPC_TIMEOUT_S,
    ) -> None:
        super().__init__(name=f"producer-{name}", daemon=True)
        self.rpc_timeout_s = rpc_timeout_s
        self.cluster = cluster
        self.history = history
        self.prefix = name
        self.batch_size = batch_size
        self.topic = topic
        self.stopping = threading.Event()
        #: sends never acknowledged within SEND_DEADLINE_S
        self.failures: list[str] = []
        self.refusals: Counter[str] = Counter()
        self.leaders: list[tuple[int, int]] = []
        self.sends = 0
        self._last: Acknowledged | None = None
        #: (time.monotonic() when answered, the send) of the latest acknowledgements, so a
        #: failure can be placed on the timeline of the faults
        self.recent: deque[tuple[float, Acknowledged]] = deque(maxlen=200)

    @property
    def failovers(self) -> int:
        return max(0, len(self.leaders) - 1)

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # the test reads it in failures, not on stderr
            self.failures.append(f"the producer died: {exc!r}")
            raise

    def _run(self) -> None:
        for send in range(1_000_000):
            if self.stopping.is_set():
                return
            sent = send_until_acknowledged(
                self.cluster,
                lambda attempt, send=send: [
                    f"{self.prefix}-{send}-{attempt}-{i}".encode() for i in range(self.batch_size)
                ],
                topic=self.topic,
                stop=self.stopping,
                refusals=self.refusals,
                rpc_timeout_s=self.rpc_timeout_s,
            )
            if sent is None:
                if not self.stopping.is_set():
                    self.failures.append(f"send {send} unacknowledged for {SEND_DEADLINE_S} s")
                    self.stopping.wait(1.0)
                continue
            self._record(sent)

    def _record(self, sent: Acknowledged) -> None:
        last = self._last
        if last is not None and sent.base_offset < last.base_offset + len(last.values):
            # The earlier records were truncated and their offsets given to these.
            self.history.violate(
                f"{self.name}: acknowledged at {sent.base_offset} by broker {sent.leader} "
                f"(leader epoch {sent.leader_epoch} when sent) after offsets "
                f"{last.base_offset}..{last.base_offset + len(last.values) - 1} were "
                f"acknowledged by broker {last.leader} (leader epoch {last.leader_epoch} "
                "when sent)"
            )
        self._last = sent
        self.recent.append((time.monotonic(), sent))
        self.history.acknowledge(sent.values, sent.base_offset)
        self.sends += 1
        who = (sent.leader, sent.leader_epoch)
        if not self.leaders or self.leaders[-1] != who:
            self.leaders.append(who)

    def wait_for_progress(self, sends: int, what: str, timeout_s: float = 30) -> None:
        """Wait until `sends` more sends were acknowledged than now."""
        target = self.sends + sends

        def progressed() -> bool:
            assert self.is_alive(), f"the producer stopped: {self.failures}"
            return self.sends >= target

        wait_until(
            progressed,
            f"{sends} acknowledged sends {what} (refusals so far: {dict(self.refusals)})",
            timeout_s=timeout_s,
        )

    def finish(self) -> None:
        self.stopping.set()
        self.join(timeout=self.rpc_timeout_s + 5)
        assert not self.is_alive(), "the producer did not stop"


class ConsumerThread(threading.Thread):
    """Reads the partition from its leader with plain Fetch, from offset 0 on, and records
    each record it read in the history. A consumer reads only below the high watermark, so
    everything it saw must survive any fault."""

    def __init__(self, cluster: ClusterHarness, history: History, *, topic: str = TOPIC) -> None:
        super().__init__(name="consumer", daemon=True)
        self.cluster = cluster
        self.history = history
        self.topic = topic
        self.stopping = threading.Event()
        self.position = 0
        self.errors: Counter[str] = Counter()
        #: why the thread ended early, if it did
        self.died = ""

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # checked by finish(), not only printed on stderr
            self.died = repr(exc)
            raise

    def _run(self) -> None:
        leader: int | None = None
        for _ in range(10_000_000):
            if self.stopping.is_set():
                return
            if leader is None:
                current = self.cluster.leader_of(self.topic)
                if current is None:
                    self.stopping.wait(RETRY_PAUSE_S)
                    continue
                leader = current[0]
            try:
                result = fetch(self.cluster, leader, self.position, topic=self.topic)
            except grpc.RpcError as exc:
                self.errors[refusal(exc)] += 1
                leader = None
                self.stopping.wait(RETRY_PAUSE_S)
                continue
            if result.error.code:
                self.errors[result.error.kind] += 1
                leader = None
                self.stopping.wait(RETRY_PAUSE_S)
                continue
            self._take(leader, result)

    def _take(self, leader: int, result: pb.FetchPartitionResult) -> None:
        for record in rb.decode_all(result.records):
            if record.offset < self.position:
                continue
            if record.offset != self.position:
                self.history.violate(
                    f"consumer: broker {leader} returned offset {record.offset} "
                    f"where {self.position} was next"
                )
            if record.offset >= result.high_watermark:
                self.history.violate(
                    f"consumer: broker {leader} returned offset {record.offset} at or above "
                    f"its high watermark {result.high_watermark}"
                )
            assert record.value is not None
            self.history.consume(record.offset, record.value)
            self.position = record.offset + 1

    def finish(self) -> None:
        self.stopping.set()
        self.join(timeout=FETCH_RPC_TIMEOUT_S + 5)
        assert not self.is_alive(), "the consumer did not stop"
        assert not self.died, f"the consumer died: {self.died}"


# --- healing and the final checks --------------------------------------------------------


def wait_in_sync(cluster: ClusterHarness, topic: str = TOPIC, timeout_s: float = 60) -> int:
    """Wait until every replica is in the ISR and holds the whole log, the high watermark at
    its end everywhere; the leader then. Call with no producer running."""
    found: list[int] = []
    status: list[str] = ["nothing asked yet"]

    def synced() -> bool:
        current = cluster.leader_of(topic)
        if current is None:
            status[0] = "no leader"
            return False
        leader = current[0]
        try:
            state = cluster.metadata(topic, 0, leader, timeout_s=2.0)
            if state.leader != leader or sorted(state.isr) != sorted(state.replicas):
                status[0] = f"leader {leader} says leader {state.leader}, ISR {list(state.isr)}"
                return False
            ends = {
                b: cluster.describe_topic(topic, b, timeout_s=2.0).partitions[0]
                for b in state.replicas
            }
        except (grpc.RpcError, UnknownPartitionError) as exc:
            status[0] = f"call failed: {exc}"
            return False
        target = ends[leader].log_end_offset
        status[0] = ", ".join(
            f"broker {b}: log end {p.log_end_offset}, high watermark {p.high_watermark}"
            for b, p in sorted(ends.items())
        )
        if any(p.log_end_offset != target or p.high_watermark != target for p in ends.values()):
            return False
        found[:] = [leader]
        return True

    try:
        wait_until(synced, f"every replica of {topic}-0 in sync", timeout_s=timeout_s)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen: {status[0]}") from None
    return found[0]


@dataclass(frozen=True)
class FinalLogs:
    """What the checks read: the leader's records and each replica's batches."""

    leader: int
    records: list[rb.Record]
    batches: dict[int, list[bytes]]


def check_healed(cluster: ClusterHarness, history: History, topic: str = TOPIC) -> FinalLogs:
    """With every fault healed and no producer running: wait for the replicas to be in
    sync, check the leader's log against the history, stop every broker cleanly and check
    each replica's files (see the module docstring for the checks)."""
    leader = wait_in_sync(cluster, topic)
    records = fetch_all(cluster, leader, topic)
    acknowledged, consumed, violations = history.snapshot()
    assert not violations, "\n".join(violations[:20])
    check_history(acknowledged, records)
    check_unique_values(records)
    check_consumed(consumed, records)
    cluster.stop_all()
    copies = {b: log_batches(cluster, b, topic) for b in cluster.brokers}
    for broker_id, batches in copies.items():
        on_disk = records_of(batches)
        assert [(r.offset, r.value) for r in on_disk] == [(r.offset, r.value) for r in records], (
            f"broker {broker_id}'s files differ from what its leader served"
        )
        check_epochs_never_decrease(batches)
    reference = copies[leader]
    for broker_id, batches in copies.items():
        assert batches == reference, (
            f"broker {broker_id}'s batches differ from broker {leader}'s "
            f"({len(batches)} vs {len(reference)} batches)"
        )
    return FinalLogs(leader, records, copies)
