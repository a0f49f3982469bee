"""ApiVersions (key 18): the APIs and version ranges this listener serves.

The range table is `logstore.server.kafka.apis.APIS`. A version above the served range
never reaches this handler: the connection answers it (KIP-511).
"""

from __future__ import annotations

from typing import Any

from kafka.protocol.metadata import ApiVersionsRequest, ApiVersionsResponse

from logstore.server.kafka.apis import APIS
from logstore.server.kafka.context import RequestContext
from logstore.server.kafka.router import HANDLERS, handles


@handles(ApiVersionsRequest.API_KEY)
def api_versions(ctx: RequestContext, request: Any) -> Any:
    entry = ApiVersionsResponse.ApiVersion
    keys = [
        entry(api_key=api.key, min_version=api.min_version, max_version=api.max_version)
        for api in APIS
        if api.key in HANDLERS
    ]
    return ApiVersionsResponse(
        version=ctx.version,
        error_code=0,
        api_keys=keys,
        throttle_time_ms=0,
    )
