"""Access control lists: who may do what to which topic, group or the cluster.

The model follows Kafka's: an ACL binding allows (or denies) one principal one operation
on the resources whose names match a pattern. With ACLs enabled the broker denies
everything no binding allows (deny by default); a matching `deny` binding beats any
`allow`; super users bypass the check.

- Principals are ``Type:name`` strings, e.g. ``User:alice``; ``User:*`` (or ``*``) in a
  binding matches every principal.
- Resource name patterns: an exact name, ``*`` (every resource of the type), or a prefix
  ending in ``*`` (``orders-*`` matches ``orders-eu`` and ``orders-``).
- Operations per resource type are listed in `OPERATIONS`; ``all`` in a binding stands
  for every one of them. As in Kafka, ``describe`` is implied by the other operations
  that need to see the resource (`IMPLIES_DESCRIBE`).

This module is the data model, shared by the client (`Admin.create_acls`) and the
broker; the broker's store and decisions are `logstore.server.security.acl_store`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from logstore.errors import (  # noqa: F401 (re-exported: the errors of this module)
    AuthenticationError,
    AuthorizationError,
    InvalidAclError,
)

TOPIC = "topic"
GROUP = "group"
CLUSTER = "cluster"
#: the one cluster resource's name (Kafka's is "kafka-cluster")
CLUSTER_NAME = "logstore-cluster"
ALLOW = "allow"
DENY = "deny"
ALL = "all"
WILDCARD = "*"
#: the principal of a client that presents neither a token nor a client certificate
ANONYMOUS = "User:ANONYMOUS"

#: the operations each resource type knows
OPERATIONS: dict[str, frozenset[str]] = {
    TOPIC: frozenset({"produce", "consume", "describe", "alter", "delete"}),
    GROUP: frozenset({"read", "describe", "delete"}),
    #: create = create topics; alter = manage ACLs and reassign partitions; describe =
    #: list ACLs; cluster_action = act as a broker (fetch as a replica), Kafka's
    #: ClusterAction, apart from alter so that managing ACLs does not mean reading every
    #: record
    CLUSTER: frozenset({"create", "alter", "describe", "cluster_action"}),
}
#: operations that let a principal describe the same resource too
IMPLIES_DESCRIBE: dict[str, frozenset[str]] = {
    TOPIC: frozenset({"produce", "consume", "alter", "delete"}),
    GROUP: frozenset({"read", "delete"}),
    CLUSTER: frozenset({"alter"}),
}


def validate_principal(principal: str) -> str:
    """Return `principal` if it is ``Type:name`` (or the wildcard ``*``); raise otherwise."""
    kind, sep, name = principal.partition(":")
    if principal != WILDCARD and (not sep or not kind or not name):
        raise InvalidAclError(f"principal {principal!r} is not Type:name (e.g. User:alice)")
    return principal


@dataclass(frozen=True, order=True)
class AclBinding:
    """One rule: `permission` `principal` to `operation` on matching resources."""

    principal: str
    resource_type: str
    resource_name: str
    operation: str
    permission: str = ALLOW

    def __post_init__(self) -> None:
        validate_principal(self.principal)
        operations = OPERATIONS.get(self.resource_type)
        if operations is None:
            raise InvalidAclError(
                f"resource type {self.resource_type!r} is not one of {sorted(OPERATIONS)}"
            )
        if self.operation != ALL and self.operation not in operations:
            raise InvalidAclError(
                f"operation {self.operation!r} does not apply to a {self.resource_type}; "
                f"allowed: {', '.join(sorted(operations | {ALL}))}"
            )
        if self.permission not in (ALLOW, DENY):
            raise InvalidAclError(f"permission {self.permission!r} is not allow or deny")
        if not self.resource_name:
            raise InvalidAclError("resource name must not be empty (use * for every one)")
        if self.resource_type == CLUSTER and self.resource_name not in (CLUSTER_NAME, WILDCARD):
            raise InvalidAclError(f"the cluster resource is named {CLUSTER_NAME!r}")

    def matches_principal(self, principal: str) -> bool:
        return self.principal in (principal, WILDCARD) or (
            self.principal.endswith(":*")
            and principal.partition(":")[0] == self.principal.partition(":")[0]
        )

    def matches_name(self, name: str) -> bool:
        pattern = self.resource_name
        if pattern.endswith(WILDCARD):
            return name.startswith(pattern[:-1])
        return pattern == name

    def covers(self, operation: str) -> bool:
        """Whether this binding speaks about `operation` (directly, via all, or implied)."""
        if self.operation in (operation, ALL):
            return True
        if operation != "describe" or self.permission == DENY:
            # A deny of produce must not deny describe: implication only widens allows.
            return False
        return self.operation in IMPLIES_DESCRIBE[self.resource_type]

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class AclFilter:
    """Selects bindings by exact field values; None matches any value."""

    principal: str | None = None
    resource_type: str | None = None
    resource_name: str | None = None
    operation: str | None = None
    permission: str | None = None

    def matches(self, binding: AclBinding) -> bool:
        return all(
            wanted is None or wanted == getattr(binding, name)
            for name, wanted in asdict(self).items()
        )

    def is_empty(self) -> bool:
        return all(value is None for value in asdict(self).values())
