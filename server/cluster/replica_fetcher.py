"""Followers pull their partitions' batches from the leaders, one thread per leader.

Invariants:
- A follower appends only batches its leader sent, byte for byte, at the offsets the
  leader gave them (`PartitionLog.append_as_follower`).
- Before it fetches from a new leader (or at a new leader epoch) a follower truncates its
  log where it diverges from the leader's, found through OffsetForLeaderEpoch (KIP-101,
  KIP-279), never by its high watermark alone: so a replica that led at an old epoch drops
  exactly the records the new leader never had.
- A follower's high watermark is min(the leader's high watermark, its own log end).
- The replicas a running reassignment is adding fetch, while a reassignment throttle is
  set, in a lane of their own: a second fetcher per leader whose requests ask for about a
  tenth of a second of the rate and wait while the broker's `TokenBucket` is in debt
  (Kafka leaves a throttled partition out of a fetch while over quota). Every other
  partition is fetched by the leader's ordinary fetcher, never slowed by the throttle.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from logstore.clock import SYSTEM_CLOCK, Clock
from logstore.codec import record_batch as rb
from logstore.errors import LogStoreError
from logstore.server.cluster.peer_channels import PeerChannels
from logstore.server.cluster.replica_manager import Key, Replica
from logstore.server.cluster.replication_stream import (
    ReplicationClient,
    ReplicationRefusedError,
    ReplicationStreamError,
)
from logstore.server.cluster.throttle import TokenBucket
from logstore.v1 import logstore_pb2 as pb
from logstore.v1 import logstore_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

#: back-off after a failed fetch from a leader (s); leadership changes arrive meanwhile
_RETRY_BACKOFF_S = 0.2
#: how long one RPC to a leader may take beyond its long poll (s)
_RPC_SLACK_S = 5.0
#: failed fetches over a replication stream that never worked before it is given up
#: for gRPC
STREAM_ATTEMPTS = 5
#: longest pause of a throttled lane before it looks again (s): a raised or removed
#: throttle, and partitions that left the lane, take effect within this
_THROTTLE_WAIT_MAX_S = 0.25


@dataclass
class _FetchState:
    """One followed partition: its replica, and whether it must truncate first."""

    replica: Replica
    leader_epoch: int
    needs_truncation: bool = True


class LeaderFetcher:
    """Fetches the partitions this broker follows from one leader broker: all of them, or
    with a `throttle`, those of the leader's partitions that are throttled."""

    def __init__(
        self,
        leader_id: int,
        address: str,
        broker_id: int,
        broker_epoch: Callable[[], int],
        max_wait_ms: int,
        max_bytes: int,
        on_high_watermark: Callable[[], None],
        peers: PeerChannels,
        throttle: TokenBucket | None = None,
        replication_address: str = "",
    ) -> None:
        self.leader_id = leader_id
        self.address = address
        # The stream is plain TCP: only between brokers that use no security at all.
        self._stream = (
            ReplicationClient(replication_address)
            if replication_address and peers.plaintext
            else None
        )
        #: consecutive failed fetches over the stream, and whether one ever succeeded
        self._stream_failures = 0
        self._stream_worked = False
        self._throttle = throttle
        #: where the throttled lane's next request starts in its list of partitions
        self._rotation = 0
        self._broker_id = broker_id
        self._broker_epoch = broker_epoch
        self._max_wait_ms = max_wait_ms
        self._max_bytes = max_bytes
        self._on_high_watermark = on_high_watermark
        self._partitions: dict[Key, _FetchState] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._channel = peers.open(
            address,
            options=[
                ("grpc.max_receive_message_length", 256 * 1024 * 1024),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ],
        )
        self._stub = pb_grpc.LogStoreStub(self._channel)
        log.info(
            "following partitions of leader %d at %s over %s%s",
            leader_id,
            address,
            f"its replication stream at {replication_address}" if self._stream else "gRPC",
            " (throttled)" if throttle is not None else "",
        )
        lane = "-throttled" if throttle is not None else ""
        self._thread = threading.Thread(
            target=self._run, name=f"logstore-replica-fetcher-{leader_id}{lane}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def add(self, replica: Replica) -> None:
        """Follow `replica` from this leader (again: truncation first)."""
        with self._lock:
            self._partitions[replica.key] = _FetchState(replica, replica.state.leader_epoch)

    def epoch_of(self, key: Key) -> int | None:
        with self._lock:
            state = self._partitions.get(key)
        return None if state is None else state.leader_epoch

    def remove(self, key: Key) -> None:
        with self._lock:
            self._partitions.pop(key, None)

    def empty(self) -> bool:
        with self._lock:
            return not self._partitions

    def stop(self) -> None:
        self._stopped.set()
        self._channel.close()
        if self._stream is not None:
            self._stream.close()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    # --- the loop ------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopped.is_set():
            with self._lock:
                states = list(self._partitions.values())
            if not states:
                self._stopped.wait(0.05)
                continue
            try:
                truncating = [s for s in states if s.needs_truncation]
                if truncating:
                    self._truncate(truncating)
                ready = [s for s in states if not s.needs_truncation]
                if ready and self._over_quota():
                    continue
                if ready:
                    self._fetch(ready)
            except ReplicationStreamError as exc:
                if self._stopped.is_set():
                    return
                self._stream_failed(exc)
                self._stopped.wait(_RETRY_BACKOFF_S)
            except grpc.RpcError as exc:
                if self._stopped.is_set():
                    return
                log.debug(
                    "fetch from leader %d at %s failed: %s", self.leader_id, self.address, exc
                )
                self._stopped.wait(_RETRY_BACKOFF_S)
            except Exception:  # keep following; the next pass retries
                log.exception("replica fetcher for leader %d failed", self.leader_id)
                self._stopped.wait(_RETRY_BACKOFF_S)

    def _stream_failed(self, exc: ReplicationStreamError) -> None:
        """A fetch over the replication stream failed. A stream that never worked after
        STREAM_ATTEMPTS tries (its port closed by a firewall, say) is given up for gRPC,
        which reaches the leader wherever clients do; one that worked before failing is
        retried (the leader restarting, or dying: leadership moves then)."""
        log.debug("fetch from leader %d over its stream failed: %s", self.leader_id, exc)
        if isinstance(exc, ReplicationRefusedError):
            self._stream_worked = True  # the leader answered: the path is open
            return
        self._stream_failures += 1
        if self._stream is None or self._stream_worked:
            return
        if self._stream_failures >= STREAM_ATTEMPTS:
            log.warning(
                "leader %d: its replication stream at %s cannot be reached (%s); fetching "
                "over gRPC at %s instead (open that port between brokers, or set "
                "--replication-port to one that is open)",
                self.leader_id,
                self._stream.address,
                exc,
                self.address,
            )
            self._stream.close()
            self._stream = None

    def _over_quota(self) -> bool:
        """Whether a throttled lane must leave its partitions out for now; if so it has
        waited (at most _THROTTLE_WAIT_MAX_S) before answering."""
        if self._throttle is None:
            return False
        delay_s = self._throttle.delay_s()
        if delay_s <= 0:
            return False
        self._stopped.wait(min(delay_s, _THROTTLE_WAIT_MAX_S))
        return True

    def _truncate(self, states: list[_FetchState]) -> None:
        """Ask the leader where each log diverges, and truncate there (KIP-279)."""
        by_topic: dict[str, list[pb.EpochQuery]] = {}
        for s in states:
            part = s.replica.log
            by_topic.setdefault(s.replica.topic, []).append(
                pb.EpochQuery(
                    partition=s.replica.partition,
                    leader_epoch=part.leader_epoch_cache.latest_epoch(),
                    current_leader_epoch=s.leader_epoch,
                )
            )
        request = pb.OffsetForLeaderEpochRequest(
            replica_id=self._broker_id,
            topics=[
                pb.OffsetForLeaderEpochTopic(topic=t, partitions=q) for t, q in by_topic.items()
            ],
        )
        response = self._stub.OffsetForLeaderEpoch(request, timeout=_RPC_SLACK_S)
        wanted = {s.replica.key: s for s in states}
        for topic_result in response.topics:
            for answer in topic_result.partitions:
                state = wanted.get((topic_result.topic, answer.partition))
                if state is None:
                    continue
                if answer.error.code:
                    log.debug(
                        "%s: OffsetForLeaderEpoch: %s", state.replica.name, answer.error.message
                    )
                    continue
                self._truncate_one(state, answer.leader_epoch, answer.end_offset)

    def _still_following(self, state: _FetchState) -> bool:
        """Whether the partition still follows this leader at the epoch fetched for (call
        with the replica's lock: a broker that became leader meanwhile must not append a
        late answer from its old leader)."""
        current = state.replica.state
        with self._lock:
            followed = self._partitions.get(state.replica.key) is state
        return (
            followed
            and current.leader == self.leader_id
            and current.leader_epoch == state.leader_epoch
        )

    def _truncate_one(self, state: _FetchState, leader_epoch: int, end_offset: int) -> None:
        replica = state.replica
        part = replica.log
        with replica.lock:
            if not self._still_following(state):
                return  # a late answer: this broker may lead now, its log must stay
            local_end = part.log_end_offset
            if end_offset < 0:
                # The leader knows no epoch at or below ours: all we can trust is what was
                # committed (Kafka's fallback before KIP-279 epochs existed).
                target = min(part.high_watermark, local_end)
            else:
                _, ours = part.end_offset_for_leader_epoch(leader_epoch)
                target = min(end_offset, local_end if ours < 0 else ours)
            if target < local_end:
                log.info(
                    "%s: truncating from %d to %d to match the leader (epoch %d ends at %d)",
                    replica.name,
                    local_end,
                    target,
                    leader_epoch,
                    end_offset,
                )
                part.truncate_to(max(target, part.log_start_offset))
            state.needs_truncation = False

    def _fetch(self, states: list[_FetchState]) -> None:
        if self._throttle is not None and len(states) > 1:
            # The leader fills a small answer in request order: start each request at the
            # next partition, so every throttled partition gets its turn (Kafka rotates
            # the partitions of its fetches the same way).
            self._rotation = (self._rotation + 1) % len(states)
            states = states[self._rotation :] + states[: self._rotation]
        by_topic: dict[str, list[pb.ReplicaFetchPartition]] = {}
        for s in states:
            by_topic.setdefault(s.replica.topic, []).append(
                pb.ReplicaFetchPartition(
                    partition=s.replica.partition,
                    fetch_offset=s.replica.log.log_end_offset,
                    leader_epoch=s.leader_epoch,
                )
            )
        max_bytes = self._max_bytes * max(1, len(states))
        if self._throttle is not None:
            # The leader caps the whole answer, not each partition: a throttled request
            # asks for one step of the rate in all.
            max_bytes = self._throttle.fetch_size(self._max_bytes)
        request = pb.ReplicaFetchRequest(
            replica_id=self._broker_id,
            broker_epoch=self._broker_epoch(),
            topics=[pb.ReplicaFetchTopic(topic=t, partitions=p) for t, p in by_topic.items()],
            max_wait_ms=self._max_wait_ms,
            min_bytes=1,
            max_bytes=max_bytes,
        )
        timeout = self._max_wait_ms / 1000 + _RPC_SLACK_S
        if self._stream is not None:
            response = self._stream.fetch(request, timeout)
            self._stream_worked, self._stream_failures = True, 0
        else:
            response = self._stub.ReplicaFetch(request, timeout=timeout)
        wanted = {s.replica.key: s for s in states}
        advanced = False
        received = 0
        for topic_result in response.topics:
            for result in topic_result.partitions:
                received += len(result.records)
                state = wanted.get((topic_result.topic, result.partition))
                if state is not None:
                    advanced |= self._apply(state, result)
        if self._throttle is not None:
            self._throttle.record(received)
        if advanced:
            self._on_high_watermark()

    def _apply(self, state: _FetchState, result: pb.FetchPartitionResult) -> bool:
        """Append what the leader sent; True when the high watermark moved."""
        replica = state.replica
        part = replica.log
        if result.error.code:
            kind = result.error.kind
            if kind == "OffsetOutOfRangeError":
                with replica.lock:
                    if not self._still_following(state):
                        return False
                    if part.log_end_offset < result.log_start_offset:
                        log.info(
                            "%s: behind the leader's log start %d; starting over there",
                            replica.name,
                            result.log_start_offset,
                        )
                        part.truncate_fully_and_start_at(result.log_start_offset)
                    else:
                        state.needs_truncation = True
            else:
                log.debug("%s: fetch error %s: %s", replica.name, kind, result.error.message)
                self._stopped.wait(_RETRY_BACKOFF_S)
            return False
        records = result.records
        if records:
            whole = _whole_batches(records)
            if whole:
                try:
                    with replica.lock:
                        if not self._still_following(state):
                            return False
                        part.append_as_follower(whole)
                except LogStoreError as exc:
                    # The leader's log and ours disagree about where we are: find out again.
                    log.warning("%s: follower append failed: %s", replica.name, exc)
                    state.needs_truncation = True
                    return False
        target = min(result.high_watermark, part.log_end_offset)
        return target > part.high_watermark and part.update_high_watermark(target)


def _whole_batches(records: bytes) -> bytes:
    """The prefix of `records` that holds whole batches (a response may end mid-batch)."""
    end = 0
    view = memoryview(records)
    size = len(view)
    while end + rb.fmt.LOG_OVERHEAD <= size:
        length = int.from_bytes(view[end + 8 : end + 12], "big", signed=True)
        batch_end = end + rb.fmt.LOG_OVERHEAD + length
        if length <= 0 or batch_end > size:
            break
        end = batch_end
    return records if end == size else bytes(view[:end])


#: (leader id, leader address, its replication stream's address or "", whether the lane
#: is throttled)
_Lane = tuple[int, str, str, bool]


class ReplicaFetchers:
    """The fetcher threads of one broker: per leader it follows partitions from, one for
    the ordinary partitions and, while any is throttled, one for the throttled ones."""

    def __init__(
        self,
        broker_id: int,
        broker_epoch: Callable[[], int],
        max_wait_ms: int,
        max_bytes: int,
        on_high_watermark: Callable[[], None],
        peers: PeerChannels,
        clock: Clock = SYSTEM_CLOCK,
        *,
        use_streams: bool = True,
    ) -> None:
        self._broker_id = broker_id
        self._peers = peers
        #: False: fetch over gRPC even from leaders that offer a replication stream
        self._use_streams = use_streams
        self._broker_epoch = broker_epoch
        self._max_wait_ms = max_wait_ms
        self._max_bytes = max_bytes
        self._on_high_watermark = on_high_watermark
        #: the broker's reassignment throttle, shared by its throttled lanes
        self.throttle = TokenBucket(0, clock=clock)
        self._fetchers: dict[_Lane, LeaderFetcher] = {}
        self._followed: dict[Key, _Lane] = {}
        self._lock = threading.Lock()

    def set_throttle(self, bytes_per_s: int) -> None:
        """The reassignment throttle's rate (0: none); the caller decides which partitions
        are throttled (`follow(..., throttled=True)`)."""
        if bytes_per_s != self.throttle.rate:
            log.info("reassignment throttle: %s", f"{bytes_per_s} B/s" if bytes_per_s else "none")
            self.throttle.set_rate(bytes_per_s)

    def follow(
        self,
        replica: Replica,
        leader_id: int,
        address: str,
        *,
        replication_address: str = "",
        throttled: bool = False,
    ) -> None:
        """Fetch `replica` from `leader_id` at `address` (from scratch: truncation first),
        over the leader's replication stream at `replication_address` when it has one and
        this broker's peer channels are plaintext too, in the throttled lane when
        `throttled`."""
        self.unfollow(replica.key)
        if leader_id < 0 or not address:
            return
        lane = (leader_id, address, replication_address, throttled)
        with self._lock:
            fetcher = self._fetchers.get(lane)
            if fetcher is None:
                fetcher = LeaderFetcher(
                    leader_id,
                    address,
                    self._broker_id,
                    self._broker_epoch,
                    self._max_wait_ms,
                    self._max_bytes,
                    self._on_high_watermark,
                    self._peers,
                    self.throttle if throttled else None,
                    replication_address if self._use_streams else "",
                )
                self._fetchers[lane] = fetcher
                fetcher.start()
            fetcher.add(replica)
            self._followed[replica.key] = lane

    def unfollow(self, key: Key) -> None:
        with self._lock:
            where = self._followed.pop(key, None)
            if where is None:
                return
            fetcher = self._fetchers.get(where)
            if fetcher is None:
                return
            fetcher.remove(key)
            if fetcher.empty():
                del self._fetchers[where]
        if fetcher.empty():
            fetcher.stop()

    def following(self, key: Key) -> tuple[int, str, str] | None:
        """(leader id, address, replication stream address or "") `key` is fetched from,
        None when it is not followed."""
        with self._lock:
            lane = self._followed.get(key)
        return None if lane is None else (lane[0], lane[1], lane[2])

    def throttled(self, key: Key) -> bool:
        """Whether `key` is fetched in a throttled lane."""
        with self._lock:
            lane = self._followed.get(key)
        return lane is not None and lane[3]

    def fetching_epoch(self, key: Key) -> int | None:
        """The leader epoch `key` is being fetched at, or None when it is not followed."""
        with self._lock:
            where = self._followed.get(key)
            fetcher = self._fetchers.get(where) if where is not None else None
        return None if fetcher is None else fetcher.epoch_of(key)

    def stop(self) -> None:
        with self._lock:
            fetchers = list(self._fetchers.values())
            self._fetchers.clear()
            self._followed.clear()
        for fetcher in fetchers:
            fetcher.stop()
