"""Partition offset ranges asked of each partition's leader (group lag, offset resets).

A group's coordinator may hold no replica of the partitions the group reads, or a
follower's copy that trails: the leader's log start offset and high watermark are the
ones a consumer sees, so the coordinator asks the leader with ListOffsets.
"""

from __future__ import annotations

import threading

import grpc

from logstore.codec.wire import EARLIEST_TIMESTAMP, LATEST_TIMESTAMP
from logstore.errors import (
    BrokerUnavailableError,
    LogStoreError,
    NotLeaderOrFollowerError,
    UnknownTopicOrPartitionError,
)
from logstore.server.cluster.node import ClusterNode
from logstore.v1 import logstore_pb2 as pb
from logstore.v1 import logstore_pb2_grpc as pb_grpc

#: how long one ListOffsets to a leader may take (s)
_TIMEOUT_S = 5.0


class LeaderOffsets:
    """`offset_reset.PartitionOffsets` answered by each partition's leader."""

    def __init__(self, node: ClusterNode) -> None:
        self._node = node
        self._stubs: dict[str, pb_grpc.LogStoreStub] = {}
        self._channels: list[grpc.Channel] = []
        self._lock = threading.Lock()

    def offset_range(self, topic: str, partition: int) -> tuple[int, int]:
        start = self._list_offset(topic, partition, EARLIEST_TIMESTAMP)
        end = self._list_offset(topic, partition, LATEST_TIMESTAMP)
        assert start is not None and end is not None
        return start, end

    def offset_for_time(self, topic: str, partition: int, timestamp_ms: int) -> int | None:
        return self._list_offset(topic, partition, timestamp_ms)

    def _list_offset(self, topic: str, partition: int, timestamp: int) -> int | None:
        state = self._node.partition_state(topic, partition)
        if state is None:
            raise UnknownTopicOrPartitionError(f"{topic}-{partition} does not exist")
        leader = self._node.view.brokers.get(state.leader)
        if leader is None:
            raise NotLeaderOrFollowerError(f"{topic}-{partition} has no live leader")
        request = pb.ListOffsetsRequest(
            topics=[
                pb.ListOffsetsTopic(
                    topic=topic,
                    partitions=[pb.ListOffsetsPartition(partition=partition, timestamp=timestamp)],
                )
            ]
        )
        try:
            answer = self._stub(leader.address).ListOffsets(request, timeout=_TIMEOUT_S)
        except grpc.RpcError as exc:
            raise BrokerUnavailableError(
                f"{topic}-{partition}: leader {leader.broker_id} at {leader.address}: {exc.code()}"
            ) from exc
        result = answer.topics[0].partitions[0]
        if result.error.code:
            raise LogStoreError(f"{topic}-{partition}: {result.error.message}")
        return None if result.offset < 0 else result.offset

    def _stub(self, address: str) -> pb_grpc.LogStoreStub:
        with self._lock:
            stub = self._stubs.get(address)
            if stub is None:
                channel = self._node.peers.open(address)
                self._channels.append(channel)
                stub = self._stubs[address] = pb_grpc.LogStoreStub(channel)
            return stub

    def close(self) -> None:
        with self._lock:
            for channel in self._channels:
                channel.close()
            self._channels.clear()
            self._stubs.clear()
