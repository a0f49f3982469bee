"""The cluster's records in etcd v3; the only module of LogStore that talks to etcd.

Key layout under the cluster's prefix (`ClusterSettings.etcd_prefix`, `/logstore/<cluster>/`):

    cluster-id                        a random id, created once, never changed
    brokers/<id>                      JSON BrokerRegistration, on that broker's lease
    controller                        JSON {"broker_id": N}, on the controller broker's lease
    topics/<name>                     JSON TopicRecord
    partitions/<topic>/<partition>    JSON PartitionState
    producer-id-block                 the next free producer id, decimal
    acls                              the ACL document (JSON)
    replication-throttle              JSON {"bytes_per_s": N}: the reassignment throttle

Epochs are etcd revisions. A broker's epoch is the create revision of `brokers/<id>`, the
controller epoch that of `controller`. Both keys live on the broker's lease, so etcd
deletes them when the broker stops renewing it, and a key created again gets a larger
create revision: revisions only grow across the whole etcd cluster, so every epoch is
larger than every epoch before it (etcd's contrib/lock guidance: use the lock key's
revision as the fencing token, and compare it in the same transaction as the write).

Fencing invariants:
- Every write made in a role compares, in the same transaction, the create revision of the
  writer's role key with the writer's epoch: `update_partition_as_controller` compares
  `controller`, `update_partition_as_leader` compares `brokers/<id>`. A write from a deposed
  controller or from a broker whose registration lapsed is refused by etcd itself, however
  late it arrives and whatever the writer still believes.
- Every partition state write is also a compare-and-swap on the key's mod revision, so two
  writers never silently overwrite each other: the loser re-reads and decides again.
- A topic's record is created (create-if-absent) before its partition states, which are
  written in chunks that each fit one transaction, and the record is grown before the
  states of added partitions: the record's partition count is the truth, and a reader may
  see a partition with no state yet (not available yet: no leader), never a state of a
  partition the record does not count. Each chunk writes only keys that are absent and
  only while the topic is the incarnation it was written for (its create revision), so a
  retried, concurrent or late writer never overwrites a state, nor revives a deleted
  topic. The controller writes the states a crashed writer left missing.
- A topic and all its partition states are deleted in one transaction (a prefix delete is
  one operation).
- `lease_valid()` measures the lease from the moment the last successful refresh was sent,
  which is before etcd received it: a broker considers itself fenced no later than etcd
  expires its lease, even when it wakes from a pause (SIGSTOP, a long GC) past its TTL
  before any refresh has had a chance to fail.

Failures: every etcd failure (refused, timed out, no leader) raises
`logstore.errors.ClusterMetadataUnavailableError` naming the endpoints, within about
`timeout_s` per endpoint tried. Reads try the next endpoint; writes are never retried here,
because a write whose answer was lost may have been applied (the caller re-reads).

etcd refuses a transaction of more than `--max-txn-ops` compares or operations (128 by
default, `max_txn_ops` here): partition states are written in chunks of `chunk_size`.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import etcd3
import etcd3.exceptions
import grpc
from etcd3 import etcdrpc, utils

from logstore.addresses import parse_host_port
from logstore.errors import (
    BrokerNotRegisteredError,
    ClusterMetadataUnavailableError,
    InvalidPartitionsError,
    InvalidRequestError,
    LogStoreError,
    TopicExistsError,
    UnknownTopicOrPartitionError,
)
from logstore.server.cluster.state import BrokerRegistration, PartitionState, TopicRecord, Versioned

log = logging.getLogger(__name__)

T = TypeVar("T")

#: etcd's default `--max-txn-ops`: most operations in one transaction
DEFAULT_MAX_TXN_OPS = 128
#: compare-and-swap rounds `allocate_producer_ids` tries before giving up
PRODUCER_ID_ATTEMPTS = 64
#: the watch is re-established after this pause (s), doubled per failure up to the max
WATCH_BACKOFF_MIN_S = 0.1
WATCH_BACKOFF_MAX_S = 2.0
#: a failed lease refresh is retried after at most this long (s)
REFRESH_RETRY_S = 0.25

#: gRPC reconnects to a restarted etcd within a second (its default backoff grows to 120 s);
#: the keepalive (above etcd's 5 s minimum) notices a silent etcd under an idle watch
_CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
_WATCH_KEEPALIVE_MS = 10_000


class BrokerIdInUseError(InvalidRequestError):
    """Another live broker holds the broker id this broker tried to register."""


class NotControllerError(LogStoreError):
    """A write made as controller was refused: another broker is controller now."""


class _Endpoint(etcd3.Endpoint):
    """An etcd endpoint that is always worth trying: the store does its own failover, so
    the client's "failed for 300 s" bookkeeping must never make it refuse a call."""

    def is_failed(self) -> bool:
        return False


@dataclass
class _Session:
    """This store's registration: its lease, and the keepalive thread that renews it."""

    broker_id: int
    lease_id: int
    ttl_s: int
    epoch: int
    #: time.monotonic() when the last successful refresh (or the grant) was sent (s)
    last_renewed: float
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    lost: bool = False
    #: time.monotonic() when the first refresh of the current etcd outage was sent, and
    #: when the latest failed one was (s); None while etcd answers
    outage_started: float | None = None
    last_failed: float | None = None
    #: time.monotonic() when the latest refresh, failed or not, was sent (s)
    last_attempt: float | None = None


class ClusterMetadataStore:
    """Brokers, controller, topics and partition states of one cluster, in etcd.

    Synchronous and thread-safe: any broker thread may call any method. The store's own
    threads are the lease keepalive (after `register_broker`) and the watch (after
    `watch`); `close()` stops both.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        prefix: str,
        *,
        timeout_s: float = 5.0,
        max_txn_ops: int = DEFAULT_MAX_TXN_OPS,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        if not prefix.endswith("/"):
            raise ValueError(f"the key prefix {prefix!r} must end with '/'")
        self.endpoints: tuple[str, ...] = tuple(endpoints)
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.max_txn_ops = max_txn_ops
        self._addresses = [parse_host_port(e) for e in self.endpoints]
        self._clients = [
            etcd3.MultiEndpointEtcd3Client(
                endpoints=[_Endpoint(host, port, secure=False, opts=_CHANNEL_OPTIONS)],
                timeout=timeout_s,
            )
            for host, port in self._addresses
        ]
        self._tx = self._clients[0].transactions
        self._lock = threading.Lock()
        self._current = 0
        self._session: _Session | None = None
        self._closed = threading.Event()
        self._watch_callbacks: list[Callable[[], None]] = []
        self._watch_thread: threading.Thread | None = None
        self._watch_call: Any = None
        #: called once, from the keepalive thread, when the registration is lost (lease
        #: expired or key deleted); re-registering is the caller's decision
        self.on_session_lost: Callable[[], None] | None = None

    # -- keys --------------------------------------------------------------------------

    def _broker_key(self, broker_id: int) -> str:
        return f"{self.prefix}brokers/{broker_id}"

    def _topic_key(self, name: str) -> str:
        return f"{self.prefix}topics/{name}"

    def _partitions_prefix(self, topic: str) -> str:
        return f"{self.prefix}partitions/{topic}/"

    def _partition_key(self, topic: str, partition: int) -> str:
        return f"{self._partitions_prefix(topic)}{partition}"

    @property
    def _controller_key(self) -> str:
        return f"{self.prefix}controller"

    # -- calls -------------------------------------------------------------------------

    def _unavailable(self, what: str, why: str) -> ClusterMetadataUnavailableError:
        return ClusterMetadataUnavailableError(
            f"etcd at {', '.join(self.endpoints)} is unavailable ({what}): {why}"
        )

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, etcd3.exceptions.ConnectionTimeoutError):
            return f"no answer within {self.timeout_s} s"
        if isinstance(exc, grpc.RpcError):
            code = exc.code() if hasattr(exc, "code") else None
            details = exc.details() if hasattr(exc, "details") else str(exc)
            return f"{getattr(code, 'name', code)}: {details}"
        return str(exc) or type(exc).__name__

    def _call(self, what: str, op: Callable[[Any], T], *, retry: bool) -> T:
        """Run `op(client)` on the current endpoint. Reads (`retry`) move on to the next
        endpoint after a failure while time remains; writes fail at once. Every etcd
        failure becomes ClusterMetadataUnavailableError."""
        deadline = time.monotonic() + self.timeout_s
        attempts = len(self._clients) if retry else 1
        why = "no endpoint tried"
        for _ in range(attempts):
            with self._lock:
                index = self._current
            try:
                return op(self._clients[index])
            except (etcd3.exceptions.Etcd3Exception, grpc.RpcError) as exc:
                self._refuse_if_not_transient(exc)
                why = f"{self.endpoints[index]}: {self._describe(exc)}"
                self._fail_over(index)
            if time.monotonic() >= deadline:
                break
        raise self._unavailable(what, why)

    def _refuse_if_not_transient(self, exc: BaseException) -> None:
        """Errors that another endpoint or a later try would not cure."""
        if not isinstance(exc, grpc.RpcError) or not hasattr(exc, "code"):
            return
        details = exc.details() or ""
        if exc.code() == grpc.StatusCode.NOT_FOUND and "lease not found" in details:
            raise BrokerNotRegisteredError(f"this broker's etcd lease has expired: {details}")
        if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
            raise InvalidRequestError(f"etcd refused the request: {details}")

    def _fail_over(self, index: int) -> None:
        with self._lock:
            if self._current == index:
                self._current = (index + 1) % len(self._clients)

    def _get(self, key: str) -> tuple[bytes, Any] | None:
        value, meta = self._call(f"get {key}", lambda c: c.get(key), retry=True)
        return None if meta is None else (value, meta)

    def _get_prefix(self, key_prefix: str) -> list[tuple[bytes, Any]]:
        return self._call(
            f"get {key_prefix}*", lambda c: list(c.get_prefix(key_prefix)), retry=True
        )

    def _txn(
        self, what: str, compare: list[Any], success: list[Any], failure: list[Any] | None = None
    ) -> tuple[bool, list[Any]]:
        return self._call(
            what,
            lambda c: c.transaction(compare=compare, success=success, failure=failure or []),
            retry=False,
        )

    @staticmethod
    def _first_kv(responses: list[Any], index: int) -> tuple[bytes, Any] | None:
        """The key-value of the `index`th response of a transaction (a get), if any."""
        kvs = responses[index]
        return kvs[0] if kvs else None

    # -- cluster id --------------------------------------------------------------------

    def cluster_id(self) -> str:
        """The cluster's id: created at random by the first caller, the same for all."""
        key = f"{self.prefix}cluster-id"
        fresh = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        succeeded, responses = self._txn(
            "create cluster-id",
            [self._tx.create(key) == 0],
            [self._tx.put(key, fresh), self._tx.get(key)],
            [self._tx.get(key)],
        )
        kv = self._first_kv(responses, 1 if succeeded else 0)
        if kv is None:
            raise self._unavailable("create cluster-id", "the key vanished")
        return kv[0].decode()

    # -- brokers -----------------------------------------------------------------------

    def register_broker(self, reg: BrokerRegistration, ttl_s: int) -> int:
        """Register `reg` on a fresh lease of `ttl_s` seconds; returns the broker epoch.

        The key is created only if absent: BrokerIdInUseError when a live broker holds the
        id. A keepalive thread then refreshes the lease every ttl_s/3 s. Registering again
        ends this store's previous registration first, and gives a larger epoch.
        """
        if ttl_s < 1:
            raise ValueError(f"the lease TTL must be at least 1 s, not {ttl_s}")
        self._end_session(revoke=True)
        key = self._broker_key(reg.broker_id)
        granted_at = time.monotonic()
        lease = self._call("grant lease", lambda c: c.lease(ttl_s), retry=False)
        try:
            succeeded, responses = self._txn(
                f"register broker {reg.broker_id}",
                [self._tx.create(key) == 0],
                [self._tx.put(key, reg.to_json(), lease=lease.id), self._tx.get(key)],
                [self._tx.get(key)],
            )
        except BaseException:
            self._revoke_quietly(lease.id)
            raise
        kv = self._first_kv(responses, 1 if succeeded else 0)
        if not succeeded or kv is None:
            self._revoke_quietly(lease.id)
            holder = BrokerRegistration.from_json(kv[0]) if kv else reg
            raise BrokerIdInUseError(
                f"broker id {reg.broker_id} is already registered by a live broker at "
                f"{holder.address}"
            )
        session = _Session(
            broker_id=reg.broker_id,
            lease_id=lease.id,
            ttl_s=int(lease.ttl) or ttl_s,
            epoch=kv[1].create_revision,
            last_renewed=granted_at,
        )
        session.thread = threading.Thread(
            target=self._keepalive,
            args=(session,),
            name=f"etcd-lease-broker-{reg.broker_id}",
            daemon=True,
        )
        with self._lock:
            self._session = session
        session.thread.start()
        return session.epoch

    @property
    def broker_epoch(self) -> int:
        """The epoch of this store's live registration, -1 when there is none."""
        with self._lock:
            session = self._session
        return session.epoch if session is not None and not session.lost else -1

    @property
    def last_renewed_monotonic(self) -> float | None:
        """time.monotonic() (s) when the last successful lease refresh was sent."""
        with self._lock:
            session = self._session
        return None if session is None else session.last_renewed

    def lease_valid(self, now: float | None = None) -> bool:
        """Whether the lease is surely still alive: registered, not lost, and the last
        successful refresh was sent less than the TTL ago (`now` is time.monotonic(), s)."""
        with self._lock:
            session = self._session
        if session is None or session.lost:
            return False
        now = time.monotonic() if now is None else now
        return now - session.last_renewed < session.ttl_s

    def leadership_valid(self, now: float | None = None) -> bool:
        """Whether this broker may still act as a leader (`now` is time.monotonic(), s).

        True while the lease is surely alive (`lease_valid`). Also true while etcd itself
        is unreachable, if the lease was alive when the outage began and a refresh failed
        less than the TTL ago: etcd renews every lease when it comes back, so no other
        broker can have been elected in between. A broker that was paused (SIGSTOP, a
        long GC) past both has to hear from etcd again first.
        """
        with self._lock:
            session = self._session
        if session is None or session.lost:
            return False
        now = time.monotonic() if now is None else now
        if now - session.last_renewed < session.ttl_s:
            return True
        started, failed = session.outage_started, session.last_failed
        if started is None or failed is None:
            return False
        alive_when_it_began = started - session.last_renewed < session.ttl_s
        return alive_when_it_began and now - failed < session.ttl_s

    def _keepalive(self, session: _Session) -> None:
        interval = session.ttl_s / 3
        wait = interval
        failing = False  # warn once per outage, not once per retry
        while not session.stop.wait(wait):
            sent_at = time.monotonic()
            previous_attempt, session.last_attempt = session.last_attempt, sent_at
            try:
                responses = self._call(
                    "refresh lease",
                    lambda c: list(c.refresh_lease(session.lease_id)),
                    retry=True,
                )
                ttl = max((r.TTL for r in responses), default=0)
                if ttl <= 0:
                    self._lose_session(session, "its lease expired")
                    return
                session.last_renewed = sent_at
                kv = self._get(self._broker_key(session.broker_id))
            except BrokerNotRegisteredError:
                self._lose_session(session, "its lease was not found")
                return
            except ClusterMetadataUnavailableError as exc:
                if not failing:
                    log.warning("broker %d: lease refresh failed: %s", session.broker_id, exc)
                # An outage is one unbroken run of failed refreshes: after a gap (the broker
                # was paused) a failure starts a new one, which began with the lease already
                # lapsed, so it does not let the broker lead (see leadership_valid).
                gap = previous_attempt is None or sent_at - previous_attempt >= session.ttl_s
                if session.outage_started is None or gap:
                    session.outage_started = sent_at
                session.last_failed = sent_at
                failing = True
                wait = min(interval, REFRESH_RETRY_S)
                continue
            if failing:
                log.info("broker %d: lease refreshed again", session.broker_id)
                failing = False
                session.outage_started = session.last_failed = None
            if kv is None or kv[1].create_revision != session.epoch:
                self._lose_session(session, "its registration key was deleted")
                return
            wait = interval

    def _lose_session(self, session: _Session, why: str) -> None:
        with self._lock:
            if session.lost or session.stop.is_set():
                return
            session.lost = True
            session.stop.set()
        log.warning("broker %d lost its etcd registration: %s", session.broker_id, why)
        # The lease may still hold the controller key; a broker without registration
        # must not stay controller.
        self._revoke_quietly(session.lease_id)
        callback = self.on_session_lost
        if callback is not None:
            try:
                callback()
            except Exception:
                log.exception("on_session_lost failed")

    def _end_session(self, *, revoke: bool) -> None:
        with self._lock:
            session, self._session = self._session, None
        if session is None:
            return
        session.stop.set()
        thread = session.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.timeout_s + 1.0)
        if revoke and not session.lost:
            self._revoke_quietly(session.lease_id)

    def _revoke_quietly(self, lease_id: int) -> None:
        try:
            self._call("revoke lease", lambda c: c.revoke_lease(lease_id), retry=False)
        except (ClusterMetadataUnavailableError, BrokerNotRegisteredError) as exc:
            # etcd deletes the keys anyway when the lease runs out
            log.info("could not revoke etcd lease %x: %s", lease_id, exc)

    def _live_session(self, broker_id: int) -> _Session:
        with self._lock:
            session = self._session
        if session is None or session.lost:
            raise BrokerNotRegisteredError(f"broker {broker_id} is not registered in etcd")
        if session.broker_id != broker_id:
            raise ValueError(f"this store registered broker {session.broker_id}, not {broker_id}")
        return session

    def live_brokers(self) -> dict[int, BrokerRegistration]:
        """Registered brokers by id, each with its epoch."""
        out: dict[int, BrokerRegistration] = {}
        for value, meta in self._get_prefix(f"{self.prefix}brokers/"):
            reg = BrokerRegistration.from_json(value, epoch=meta.create_revision)
            out[reg.broker_id] = reg
        return out

    # -- controller --------------------------------------------------------------------

    def campaign_controller(self, broker_id: int) -> int | None:
        """Become controller if there is none: returns the controller epoch when this
        broker won, None when another broker holds the role. The key lives on this
        broker's lease, and the campaign compares the broker's epoch, so a broker whose
        registration lapsed cannot win (BrokerNotRegisteredError)."""
        session = self._live_session(broker_id)
        key = self._controller_key
        broker_key = self._broker_key(broker_id)
        value = json.dumps({"broker_id": broker_id})
        succeeded, responses = self._txn(
            f"campaign for controller as broker {broker_id}",
            [self._tx.create(key) == 0, self._tx.create(broker_key) == session.epoch],
            [self._tx.put(key, value, lease=session.lease_id), self._tx.get(key)],
            [self._tx.get(broker_key)],
        )
        if succeeded:
            kv = self._first_kv(responses, 1)
            if kv is None:
                raise self._unavailable("campaign for controller", "the key vanished")
            return int(kv[1].create_revision)
        kv = self._first_kv(responses, 0)
        if kv is None or kv[1].create_revision != session.epoch:
            raise BrokerNotRegisteredError(
                f"broker {broker_id} epoch {session.epoch} is no longer registered"
            )
        return None

    def controller(self) -> tuple[int, int] | None:
        """(broker id, controller epoch) of the current controller, None if there is none."""
        kv = self._get(self._controller_key)
        if kv is None:
            return None
        return int(json.loads(kv[0])["broker_id"]), int(kv[1].create_revision)

    # -- topics ------------------------------------------------------------------------

    @property
    def chunk_size(self) -> int:
        """Most partition states one transaction writes: each needs a compare (absent) and
        a put, and the compares also hold the topic's and perhaps the controller's fence."""
        return max(1, self.max_txn_ops - 2)

    def create_topic(self, topic: TopicRecord, states: Mapping[int, PartitionState]) -> int:
        """Create the topic, only if the name is free (TopicExistsError otherwise), then
        write its partition states (`write_missing_partition_states`); returns the topic's
        create revision. `states` holds partitions 0..topic.partitions-1 exactly.

        The record goes first and alone: it says how many partitions exist, so if this
        broker dies before every state is written, the controller writes the rest.
        UnknownTopicOrPartitionError if the topic is deleted while its states are written.
        """
        if set(states) != set(range(topic.partitions)):
            raise ValueError(f"states of partitions 0..{topic.partitions - 1} are needed")
        key = self._topic_key(topic.name)
        succeeded, responses = self._txn(
            f"create topic {topic.name}",
            [self._tx.create(key) == 0],
            [self._tx.put(key, topic.to_json()), self._tx.get(key)],
        )
        if not succeeded:
            raise TopicExistsError(f"topic {topic.name!r} already exists")
        kv = self._first_kv(responses, 1)
        if kv is None:  # deleted between the put and the get of one transaction: impossible
            raise self._unavailable(f"create topic {topic.name}", "the key vanished")
        revision = int(kv[1].create_revision)
        self.write_missing_partition_states(topic.name, revision, states)
        return revision

    def write_missing_partition_states(
        self,
        name: str,
        topic_revision: int,
        states: Mapping[int, PartitionState],
        *,
        controller_epoch: int | None = None,
    ) -> int:
        """Write those of `states` whose partition has no state yet; returns how many
        this call wrote.

        Chunks of at most `chunk_size` partitions, each one transaction that writes only if
        every one of its keys is absent (a state that exists was written by someone else
        and may have moved on since: it is never overwritten), the topic is still the one
        created at `topic_revision` (a late writer cannot give states to a topic deleted
        or created again meanwhile) and, with `controller_epoch`, the writer is still the
        controller. A chunk refused because some of its keys exist is written again without
        them. UnknownTopicOrPartitionError when the topic is gone, NotControllerError when
        `controller_epoch` is no longer the controller's.
        """
        key = self._topic_key(name)
        pending = dict(sorted(states.items()))
        written = 0
        # Each refusal that is not a raise finds at least one more key present.
        for _ in range(2 * (len(pending) // self.chunk_size + 1) + len(pending)):
            if not pending:
                return written
            chunk = dict(itertools.islice(pending.items(), self.chunk_size))
            compare = [self._tx.create(key) == topic_revision]
            if controller_epoch is not None:
                compare.append(self._tx.create(self._controller_key) == controller_epoch)
            compare += [self._tx.create(self._partition_key(name, p)) == 0 for p in chunk]
            puts = [
                self._tx.put(self._partition_key(name, p), state.to_json())
                for p, state in chunk.items()
            ]
            succeeded, _ = self._txn(
                f"write states of {name} partitions {min(chunk)}..{max(chunk)}", compare, puts
            )
            if succeeded:
                written += len(chunk)
                for p in chunk:
                    del pending[p]
                continue
            self._check_topic_revision(name, topic_revision)
            if controller_epoch is not None:
                self._check_controller_epoch(controller_epoch)
            present = {p for (_, p) in self.partition_states(name)}
            for p in present:
                pending.pop(p, None)
        if pending:
            raise self._unavailable(f"write states of {name}", "its partition states kept changing")
        return written

    def _check_topic_revision(self, name: str, topic_revision: int) -> None:
        kv = self._get(self._topic_key(name))
        if kv is None or int(kv[1].create_revision) != topic_revision:
            raise UnknownTopicOrPartitionError(
                f"topic {name!r} was deleted while its partition states were written"
            )

    def _check_controller_epoch(self, controller_epoch: int) -> None:
        found = self.controller()
        if found is None or found[1] != controller_epoch:
            raise NotControllerError(
                f"controller epoch {controller_epoch} is over"
                + (f" (broker {found[0]} is controller at epoch {found[1]})" if found else "")
            )

    def delete_topic(self, name: str) -> None:
        """Delete the topic and all its partition states in one transaction (a prefix
        delete is one operation, whatever the partition count); UnknownTopicOrPartitionError
        if it does not exist."""
        key = self._topic_key(name)
        partitions = self._partitions_prefix(name)
        succeeded, _ = self._txn(
            f"delete topic {name}",
            [self._tx.version(key) > 0],
            [
                self._tx.delete(key),
                self._tx.delete(partitions, range_end=utils.prefix_range_end(partitions.encode())),
            ],
        )
        if not succeeded:
            raise UnknownTopicOrPartitionError(f"topic {name!r} does not exist")

    def topic(self, name: str) -> Versioned:
        """The topic's record with its mod and create revisions (UnknownTopicOrPartitionError
        if it does not exist)."""
        kv = self._get(self._topic_key(name))
        if kv is None:
            raise UnknownTopicOrPartitionError(f"topic {name!r} does not exist")
        return Versioned(
            TopicRecord.from_json(kv[0]), int(kv[1].mod_revision), int(kv[1].create_revision)
        )

    def update_topic_config(
        self, name: str, config: Mapping[str, str], expected_mod_revision: int
    ) -> bool:
        """Replace the topic's config overrides if the topic is still at
        `expected_mod_revision`; False when it changed meanwhile."""
        current = self.topic(name)
        if current.mod_revision != expected_mod_revision:
            return False
        key = self._topic_key(name)
        updated = replace(current.value, config=dict(config))
        succeeded, _ = self._txn(
            f"update config of topic {name}",
            [self._tx.mod(key) == expected_mod_revision],
            [self._tx.put(key, updated.to_json())],
        )
        return bool(succeeded)

    def add_partitions(
        self,
        name: str,
        new_total: int,
        new_states: Mapping[int, PartitionState],
        expected_topic_mod_revision: int,
    ) -> bool:
        """Grow the topic to `new_total` partitions if it is still at
        `expected_topic_mod_revision` (False when it changed meanwhile), then write the new
        partitions' states (`write_missing_partition_states`).

        As at creation the record goes first: if this broker dies before every new state
        is written, the controller writes the rest."""
        current = self.topic(name)
        record: TopicRecord = current.value
        if current.mod_revision != expected_topic_mod_revision:
            return False
        if new_total <= record.partitions:
            raise InvalidPartitionsError(
                f"topic {name!r} has {record.partitions} partitions; {new_total} is not more"
            )
        if set(new_states) != set(range(record.partitions, new_total)):
            raise ValueError(f"states of partitions {record.partitions}..{new_total - 1} needed")
        key = self._topic_key(name)
        succeeded, _ = self._txn(
            f"add partitions to {name}",
            [self._tx.mod(key) == expected_topic_mod_revision],
            [self._tx.put(key, replace(record, partitions=new_total).to_json())],
        )
        if not succeeded:
            return False
        self.write_missing_partition_states(name, current.create_revision, new_states)
        return True

    def topics(self) -> dict[str, Versioned]:
        """Every topic: name -> Versioned(TopicRecord, mod revision, create revision)."""
        out: dict[str, Versioned] = {}
        for value, meta in self._get_prefix(f"{self.prefix}topics/"):
            record = TopicRecord.from_json(value)
            out[record.name] = Versioned(record, int(meta.mod_revision), int(meta.create_revision))
        return out

    # -- partitions --------------------------------------------------------------------

    def partition_states(self, topic: str | None = None) -> dict[tuple[str, int], Versioned]:
        """(topic, partition) -> Versioned(PartitionState, mod revision), of one topic or
        of all."""
        all_partitions = f"{self.prefix}partitions/"
        key_prefix = all_partitions if topic is None else self._partitions_prefix(topic)
        out: dict[tuple[str, int], Versioned] = {}
        strip = len(all_partitions)
        for value, meta in self._get_prefix(key_prefix):
            name, _, partition = meta.key.decode()[strip:].rpartition("/")
            out[(name, int(partition))] = Versioned(
                PartitionState.from_json(value), int(meta.mod_revision)
            )
        return out

    def partition_state(self, topic: str, partition: int) -> Versioned | None:
        """One partition's state and mod revision, None if it does not exist."""
        kv = self._get(self._partition_key(topic, partition))
        if kv is None:
            return None
        return Versioned(PartitionState.from_json(kv[0]), int(kv[1].mod_revision))

    def _write_partition(
        self,
        what: str,
        topic: str,
        partition: int,
        state: PartitionState,
        compare: list[Any],
    ) -> int | None:
        key = self._partition_key(topic, partition)
        succeeded, responses = self._txn(
            what, compare, [self._tx.put(key, state.to_json()), self._tx.get(key)]
        )
        if not succeeded:
            return None
        kv = self._first_kv(responses, 1)
        return None if kv is None else int(kv[1].mod_revision)

    def update_partition_as_controller(
        self,
        topic: str,
        partition: int,
        state: PartitionState,
        expected_mod_revision: int,
        controller_epoch: int,
    ) -> int | None:
        """Write a partition state as controller: the new mod revision, or None when the
        state changed since `expected_mod_revision` or `controller_epoch` is no longer the
        controller's (a deposed controller's write is refused by etcd)."""
        key = self._partition_key(topic, partition)
        return self._write_partition(
            f"update {topic}-{partition} as controller epoch {controller_epoch}",
            topic,
            partition,
            state,
            [
                self._tx.mod(key) == expected_mod_revision,
                self._tx.create(self._controller_key) == controller_epoch,
            ],
        )

    def update_partition_as_leader(
        self,
        topic: str,
        partition: int,
        state: PartitionState,
        expected_mod_revision: int,
        broker_id: int,
        broker_epoch: int,
    ) -> int | None:
        """Write a partition state (an ISR change) as its leader: the new mod revision, or
        None when the state changed since `expected_mod_revision` or broker `broker_id` is
        no longer registered with `broker_epoch` (a leader whose lease lapsed cannot
        change the ISR).

        This is how Kafka's leaders changed the ISR in the ZooKeeper era (a conditional
        update of the partition's state znode); KIP-497 later moved ISR changes behind the
        controller (AlterPartition). The fence is the same either way: the write names the
        state version it read and the writer's epoch.
        """
        key = self._partition_key(topic, partition)
        return self._write_partition(
            f"update {topic}-{partition} as leader {broker_id} epoch {broker_epoch}",
            topic,
            partition,
            state,
            [
                self._tx.mod(key) == expected_mod_revision,
                self._tx.create(self._broker_key(broker_id)) == broker_epoch,
            ],
        )

    # -- producer ids ------------------------------------------------------------------

    def allocate_producer_ids(self, block_size: int) -> int:
        """Reserve `block_size` producer ids no one else will get; returns the first.

        A compare-and-swap on `producer-id-block` (the next free id), retried at most
        PRODUCER_ID_ATTEMPTS times under contention, so blocks never overlap.
        """
        if block_size <= 0:
            raise ValueError(f"block size must be positive, not {block_size}")
        key = f"{self.prefix}producer-id-block"
        kv = self._get(key)
        for attempt in range(PRODUCER_ID_ATTEMPTS):
            if kv is None:
                start, compare = 0, self._tx.create(key) == 0
            else:
                start, compare = int(kv[0]), self._tx.mod(key) == kv[1].mod_revision
            succeeded, responses = self._txn(
                "allocate producer ids",
                [compare],
                [self._tx.put(key, str(start + block_size))],
                [self._tx.get(key)],
            )
            if succeeded:
                return start
            kv = self._first_kv(responses, 0)
            # Spread the contenders out a little so they stop colliding.
            time.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))
        raise self._unavailable(
            "allocate producer ids", f"still contended after {PRODUCER_ID_ATTEMPTS} attempts"
        )

    # -- ACLs --------------------------------------------------------------------------

    @property
    def _acls_key(self) -> str:
        return f"{self.prefix}acls"

    def acl_document(self) -> tuple[bytes, int] | None:
        """The cluster's ACL document (the JSON a standalone broker keeps in its
        ``__acls.json``) and its etcd mod revision; None if no ACL was ever written."""
        kv = self._get(self._acls_key)
        return None if kv is None else (kv[0], int(kv[1].mod_revision))

    def replace_acl_document(self, document: bytes, expected_mod_revision: int) -> bool:
        """Write the ACL document if it is still at `expected_mod_revision` (0: only if
        absent). False if another broker changed it first: re-read and try again."""
        key = self._acls_key
        compare = (
            self._tx.create(key) == 0
            if expected_mod_revision == 0
            else self._tx.mod(key) == expected_mod_revision
        )
        succeeded, _ = self._txn("write ACLs", [compare], [self._tx.put(key, document)])
        return bool(succeeded)

    # -- replication throttle ----------------------------------------------------------

    @property
    def _throttle_key(self) -> str:
        return f"{self.prefix}replication-throttle"

    def replication_throttle(self) -> int:
        """The reassignment throttle (bytes/s) every broker applies to the fetches of the
        replicas a reassignment is adding; 0 when there is none. A value that is not the
        JSON this store writes counts as none (and is logged), so a hand-edited key cannot
        stop a broker's control loop."""
        kv = self._get(self._throttle_key)
        if kv is None:
            return 0
        try:
            rate = int(json.loads(kv[0])["bytes_per_s"])
        except (ValueError, KeyError, TypeError) as exc:
            log.warning(
                'ignoring %s: %r is not {"bytes_per_s": N} (%s)', self._throttle_key, kv[0], exc
            )
            return 0
        return max(0, rate)

    def set_replication_throttle(self, bytes_per_s: int) -> None:
        """Set the reassignment throttle to `bytes_per_s` (> 0), or remove it (0). Not a
        compare-and-swap: the rate is an operator's setting, and the latest one wins (as
        Kafka's throttle configs do)."""
        if bytes_per_s < 0:
            raise InvalidRequestError(f"a throttle is a rate >= 0 bytes/s, not {bytes_per_s}")
        key = self._throttle_key
        if bytes_per_s == 0:
            op = self._tx.delete(key)
        else:
            op = self._tx.put(key, json.dumps({"bytes_per_s": bytes_per_s}))
        self._txn(f"set the replication throttle to {bytes_per_s} B/s", [], [op])

    # -- watch -------------------------------------------------------------------------

    def watch(self, callback: Callable[[], None]) -> None:
        """Call `callback()` (from the store's watch thread) whenever anything under the
        prefix changes, and once each time the watch is established, the first time
        included: changes made while it was down (etcd restarting) may have been missed,
        so the caller re-reads what it needs. Re-established after failures with a
        backoff of WATCH_BACKOFF_MIN_S doubling up to WATCH_BACKOFF_MAX_S."""
        with self._lock:
            if self._closed.is_set():
                raise RuntimeError("the metadata store is closed")
            self._watch_callbacks.append(callback)
            if self._watch_thread is not None:
                return
            self._watch_thread = threading.Thread(
                target=self._watch_loop, name="etcd-watch", daemon=True
            )
            thread = self._watch_thread
        thread.start()

    def _fire(self) -> None:
        with self._lock:
            callbacks = list(self._watch_callbacks)
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("metadata watch callback failed")

    def _watch_loop(self) -> None:
        backoff = WATCH_BACKOFF_MIN_S
        index = 0
        while not self._closed.is_set():
            endpoint = self.endpoints[index % len(self.endpoints)]
            try:
                established = self._watch_once(endpoint)
                why = "the watch ended"
            except grpc.RpcError as exc:
                established = False
                why = self._describe(exc)
            if self._closed.is_set():
                return
            if established:
                backoff = WATCH_BACKOFF_MIN_S
            else:
                index += 1
            log.info("etcd watch at %s: %s; again in %.1f s", endpoint, why, backoff)
            if self._closed.wait(backoff):
                return
            backoff = min(backoff * 2, WATCH_BACKOFF_MAX_S)

    def _watch_once(self, endpoint: str) -> bool:
        """One watch stream on `endpoint` until it ends; whether it was established."""
        options = [
            *_CHANNEL_OPTIONS,
            ("grpc.keepalive_time_ms", _WATCH_KEEPALIVE_MS),
            ("grpc.keepalive_timeout_ms", int(self.timeout_s * 1000)),
        ]
        done = threading.Event()
        create = etcdrpc.WatchCreateRequest(
            key=self.prefix.encode(), range_end=utils.prefix_range_end(self.prefix.encode())
        )

        def requests() -> Iterator[Any]:
            yield etcdrpc.WatchRequest(create_request=create)
            done.wait()  # keeps the stream open until it is over

        established = False
        with grpc.insecure_channel(endpoint, options=options) as channel:
            call = etcdrpc.WatchStub(channel).Watch(requests())
            with self._lock:
                if self._closed.is_set():
                    call.cancel()
                self._watch_call = call
            try:
                for response in call:
                    if response.created and not response.canceled:
                        established = True
                        self._fire()
                    elif response.canceled or response.compact_revision:
                        return established
                    elif response.events:
                        self._fire()
            finally:
                done.set()
                with self._lock:
                    self._watch_call = None
        return established

    # -- health and shutdown -----------------------------------------------------------

    def health(self) -> tuple[bool, str]:
        """(True, "etcd 3.4.23 at H:P, leader <member id>") from the first endpoint that
        answers with a leader elected; (False, why) otherwise."""
        problems: list[str] = []
        for endpoint, client in zip(self.endpoints, self._clients, strict=True):
            try:
                status = client.status()
            except (etcd3.exceptions.Etcd3Exception, grpc.RpcError) as exc:
                problems.append(f"{endpoint}: {self._describe(exc)}")
                continue
            if status.leader is None:
                problems.append(f"{endpoint}: etcd {status.version} has no leader")
                continue
            return True, f"etcd {status.version} at {endpoint}, leader {status.leader.id:x}"
        return False, f"etcd unavailable: {'; '.join(problems)}"

    def close(self, revoke: bool = True) -> None:
        """Stop the keepalive and watch threads and, with `revoke`, revoke the lease, so
        a clean shutdown deregisters the broker (and gives up the controller) at once."""
        with self._lock:
            self._closed.set()
            call, thread = self._watch_call, self._watch_thread
        if call is not None:
            call.cancel()
        self._end_session(revoke=revoke)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.timeout_s + 1.0)
        for client in self._clients:
            client.close()

    def __enter__(self) -> ClusterMetadataStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
