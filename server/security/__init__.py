"""TLS, authentication and ACL authorization for the broker's gRPC API.

- `settings`: what `logstore serve` is given; `tls` and `auth`: who is calling;
- `acl_store`: the bindings and the allow/deny decision (pure, no gRPC);
- `acl_rules`: which resources and operations each RPC needs (pure);
- `acl_service`: the ACL management RPCs; `interceptor`: the gRPC shell that applies all
  of it to every call; `broker_security`: the pieces assembled for one broker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from logstore.lazy import lazy_exports

if TYPE_CHECKING:
    from logstore.server.security.broker_security import BrokerSecurity
    from logstore.server.security.settings import SecurityConfigError, SecuritySettings

_EXPORTS = {
    "BrokerSecurity": "logstore.server.security.broker_security",
    "SecurityConfigError": "logstore.server.security.settings",
    "SecuritySettings": "logstore.server.security.settings",
}
__all__ = ["BrokerSecurity", "SecurityConfigError", "SecuritySettings"]
__getattr__ = lazy_exports(__name__, _EXPORTS)
