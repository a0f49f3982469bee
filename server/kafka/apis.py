"""The Kafka APIs this listener serves, the versions it advertises, and their classes.

The request and response classes are kafka-python's (`kafka.protocol`), generated from
Kafka's own JSON schemas; one class per API, any version through `version=`.

Why these ranges (see the reference table in the project notes and KIP-896):
- Non-flexible versions wherever a client needs them: aiokafka and kafkajs speak no
  flexible versions, so every API keeps a non-flexible range.
- librdkafka before 2.11.1 enables features by single versions (Produce 3, Fetch 4,
  OffsetCommit 1-2, OffsetFetch 1, the group APIs 0, SaslHandshake 0-1, SaslAuthenticate 0,
  InitProducerId 0): each must lie inside the advertised range. Produce keeps a minimum of
  0 (librdkafka drops compression otherwise) and the handler refuses v0-2, as Kafka 4 does.
- ApiVersions 3 answers with response header v0, whatever the body (KIP-511).

Invariants:
- `API_BY_KEY[k].min_version <= v <= API_BY_KEY[k].max_version` is exactly what the
  connection decodes; any other (key, version) is refused before a handler runs.
- A flexible version (today only ApiVersions 3) is served only with a bounded decoder in
  `flexible.BOUNDED_DECODERS`: the library's own decoder reads varints without a length
  cap, so `connection` refuses to import if a range here reaches a flexible version
  without one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from kafka.protocol.admin import (
    AlterConfigsRequest,
    AlterConfigsResponse,
    CreatePartitionsRequest,
    CreatePartitionsResponse,
    CreateTopicsRequest,
    CreateTopicsResponse,
    DeleteGroupsRequest,
    DeleteGroupsResponse,
    DeleteTopicsRequest,
    DeleteTopicsResponse,
    DescribeConfigsRequest,
    DescribeConfigsResponse,
    DescribeGroupsRequest,
    DescribeGroupsResponse,
    IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse,
    ListGroupsRequest,
    ListGroupsResponse,
)
from kafka.protocol.consumer import (
    FetchRequest,
    FetchResponse,
    HeartbeatRequest,
    HeartbeatResponse,
    JoinGroupRequest,
    JoinGroupResponse,
    LeaveGroupRequest,
    LeaveGroupResponse,
    ListOffsetsRequest,
    ListOffsetsResponse,
    OffsetCommitRequest,
    OffsetCommitResponse,
    OffsetFetchRequest,
    OffsetFetchResponse,
    OffsetForLeaderEpochRequest,
    OffsetForLeaderEpochResponse,
    SyncGroupRequest,
    SyncGroupResponse,
)
from kafka.protocol.metadata import (
    ApiVersionsRequest,
    ApiVersionsResponse,
    FindCoordinatorRequest,
    FindCoordinatorResponse,
    MetadataRequest,
    MetadataResponse,
)
from kafka.protocol.producer import (
    InitProducerIdRequest,
    InitProducerIdResponse,
    ProduceRequest,
    ProduceResponse,
)
from kafka.protocol.sasl import (
    SaslAuthenticateRequest,
    SaslAuthenticateResponse,
    SaslHandshakeRequest,
    SaslHandshakeResponse,
)


@dataclass(frozen=True)
class Api:
    """One API as served here: its key, name, classes and advertised version range."""

    key: int
    name: str
    request: Any
    response: Any
    min_version: int
    max_version: int

    def supports(self, version: int) -> bool:
        return self.min_version <= version <= self.max_version


def _api(request: Any, response: Any, min_version: int, max_version: int) -> Api:
    return Api(request.API_KEY, request.name, request, response, min_version, max_version)


APIS: Final = (
    _api(ProduceRequest, ProduceResponse, 0, 8),
    _api(FetchRequest, FetchResponse, 4, 11),
    _api(ListOffsetsRequest, ListOffsetsResponse, 1, 5),
    _api(MetadataRequest, MetadataResponse, 0, 8),
    _api(OffsetCommitRequest, OffsetCommitResponse, 2, 7),
    _api(OffsetFetchRequest, OffsetFetchResponse, 1, 5),
    _api(FindCoordinatorRequest, FindCoordinatorResponse, 0, 2),
    _api(JoinGroupRequest, JoinGroupResponse, 0, 5),
    _api(HeartbeatRequest, HeartbeatResponse, 0, 3),
    _api(LeaveGroupRequest, LeaveGroupResponse, 0, 3),
    _api(SyncGroupRequest, SyncGroupResponse, 0, 3),
    _api(DescribeGroupsRequest, DescribeGroupsResponse, 0, 4),
    _api(ListGroupsRequest, ListGroupsResponse, 0, 2),
    _api(SaslHandshakeRequest, SaslHandshakeResponse, 0, 1),
    _api(ApiVersionsRequest, ApiVersionsResponse, 0, 3),
    _api(CreateTopicsRequest, CreateTopicsResponse, 2, 4),
    _api(DeleteTopicsRequest, DeleteTopicsResponse, 1, 3),
    _api(InitProducerIdRequest, InitProducerIdResponse, 0, 1),
    _api(OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse, 2, 3),
    _api(DescribeConfigsRequest, DescribeConfigsResponse, 1, 3),
    _api(AlterConfigsRequest, AlterConfigsResponse, 0, 1),
    _api(SaslAuthenticateRequest, SaslAuthenticateResponse, 0, 1),
    _api(CreatePartitionsRequest, CreatePartitionsResponse, 0, 1),
    _api(DeleteGroupsRequest, DeleteGroupsResponse, 0, 1),
    _api(IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, 0, 0),
)

API_BY_KEY: Final = {api.key: api for api in APIS}

API_VERSIONS_KEY: Final = ApiVersionsRequest.API_KEY
