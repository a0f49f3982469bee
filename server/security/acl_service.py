"""The ACL management RPCs (CreateAcls, DeleteAcls, DescribeAcls) over the broker's
ACL bindings: its own file, or in cluster mode the cluster's in etcd."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc

from logstore.acls import (
    ALLOW,
    CLUSTER,
    CLUSTER_NAME,
    AclBinding,
    AclFilter,
    InvalidAclError,
)
from logstore.errors import ClusterMetadataUnavailableError
from logstore.server.broker import lenient_parser, rejecting_malformed
from logstore.server.errors import abort
from logstore.server.security.acl_store import AclBindings
from logstore.v1 import logstore_pb2 as pb

log = logging.getLogger(__name__)


def binding_from_proto(message: pb.AclBinding) -> AclBinding:
    name = message.resource_name
    if message.resource_type == CLUSTER and not name:
        name = CLUSTER_NAME
    return AclBinding(
        message.principal,
        message.resource_type,
        name,
        message.operation,
        message.permission or ALLOW,
    )


def binding_to_proto(binding: AclBinding) -> pb.AclBinding:
    return pb.AclBinding(**binding.to_dict())


def filter_from_proto(message: pb.AclFilter) -> AclFilter:
    return AclFilter(
        principal=message.principal or None,
        resource_type=message.resource_type or None,
        resource_name=message.resource_name or None,
        operation=message.operation or None,
        permission=message.permission or None,
    )


#: what a change can fail with: a bad binding, the file, or etcd (cluster mode: retriable)
_CHANGE_ERRORS = (InvalidAclError, ClusterMetadataUnavailableError, OSError)


class AclService:
    """CreateAcls / DeleteAcls / DescribeAcls over the broker's `AclBindings`."""

    def __init__(self, store: AclBindings, enabled: bool) -> None:
        self.store = store
        self.enabled = enabled

    def _require_enabled(self, context: grpc.ServicerContext) -> None:
        if not self.enabled:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "ACLs are not enabled on this broker (start it with --acls-enabled)",
            )

    def create(
        self, request: pb.CreateAclsRequest, context: grpc.ServicerContext
    ) -> pb.CreateAclsResponse:
        self._require_enabled(context)
        try:
            bindings = [binding_from_proto(b) for b in request.acls]
            created = self.store.add(bindings)
        except _CHANGE_ERRORS as exc:
            abort(context, exc)
        for binding in created:
            log.info("ACL added: %s", binding)
        return pb.CreateAclsResponse(created=[binding_to_proto(b) for b in created])

    def delete(
        self, request: pb.DeleteAclsRequest, context: grpc.ServicerContext
    ) -> pb.DeleteAclsResponse:
        self._require_enabled(context)
        try:
            deleted = self.store.remove(filter_from_proto(request.filter))
        except _CHANGE_ERRORS as exc:
            abort(context, exc)
        for binding in deleted:
            log.info("ACL removed: %s", binding)
        return pb.DeleteAclsResponse(deleted=[binding_to_proto(b) for b in deleted])

    def describe(
        self, request: pb.DescribeAclsRequest, context: grpc.ServicerContext
    ) -> pb.DescribeAclsResponse:
        self._require_enabled(context)
        found = self.store.describe(filter_from_proto(request.filter))
        return pb.DescribeAclsResponse(acls=[binding_to_proto(b) for b in found])

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        def handler(method: Callable[..., Any], request_type: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                rejecting_malformed(method, streaming_request=False),
                request_deserializer=lenient_parser(request_type),
                response_serializer=lambda m: m.SerializeToString(),
            )

        return {
            "CreateAcls": handler(self.create, pb.CreateAclsRequest),
            "DeleteAcls": handler(self.delete, pb.DeleteAclsRequest),
            "DescribeAcls": handler(self.describe, pb.DescribeAclsRequest),
        }
