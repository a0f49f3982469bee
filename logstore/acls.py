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

`AclStore` keeps the bindings in ``<data_dir>/__acls.json`` (replaced atomically and
fsynced on every change, so a crash keeps either the old or the new set). This module is
part of the core: it never imports gRPC.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from logstore.errors import (  # noqa: F401 (re-exported: the errors of this module)
    AuthenticationError,
    AuthorizationError,
    InvalidAclError,
)
from logstore.fileutil import write_file_atomically

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
ACL_FILE = "__acls.json"
_FILE_VERSION = 1

#: the operations each resource type knows
OPERATIONS: dict[str, frozenset[str]] = {
    TOPIC: frozenset({"produce", "consume", "describe", "alter", "delete"}),
    GROUP: frozenset({"read", "describe", "delete"}),
    #: create = create topics; alter = manage ACLs; describe = list ACLs
    CLUSTER: frozenset({"create", "alter", "describe"}),
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


class AclStore:
    """The broker's ACL bindings, durable in ``<data_dir>/__acls.json``.

    Thread-safe. `version` grows on every change so callers can drop caches.
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / ACL_FILE
        self._lock = threading.Lock()
        self._bindings: set[AclBinding] = set(self._load())
        self.version = 0

    def _load(self) -> list[AclBinding]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        try:
            document = json.loads(raw)
            return [AclBinding(**entry) for entry in document["acls"]]
        except (ValueError, KeyError, TypeError, InvalidAclError) as exc:
            # Starting with no ACLs would silently change who may do what: refuse instead.
            raise InvalidAclError(f"cannot read ACLs from {self.path}: {exc}") from exc

    def _save(self) -> None:
        document: dict[str, Any] = {
            "version": _FILE_VERSION,
            "acls": [b.to_dict() for b in sorted(self._bindings)],
        }
        write_file_atomically(self.path, json.dumps(document, indent=1).encode() + b"\n")

    def bindings(self) -> list[AclBinding]:
        with self._lock:
            return sorted(self._bindings)

    def describe(self, selector: AclFilter | None = None) -> list[AclBinding]:
        """The bindings `selector` matches, sorted (all of them without a selector)."""
        return [b for b in self.bindings() if selector is None or selector.matches(b)]

    def add(self, bindings: Iterable[AclBinding]) -> list[AclBinding]:
        """Add bindings (durably); return those that were not there already."""
        with self._lock:
            new = sorted(set(bindings) - self._bindings)
            if new:
                self._bindings.update(new)
                try:
                    self._save()
                except OSError:
                    self._bindings.difference_update(new)  # memory must match the disk
                    raise
                self.version += 1
            return new

    def remove(self, selector: AclFilter) -> list[AclBinding]:
        """Remove (durably) every binding `selector` matches; return them.

        An empty filter is refused: removing every ACL must be asked for field by field.
        """
        if selector.is_empty():
            raise InvalidAclError("give at least one field to select the ACLs to remove")
        with self._lock:
            gone = sorted(b for b in self._bindings if selector.matches(b))
            if gone:
                self._bindings.difference_update(gone)
                try:
                    self._save()
                except OSError:
                    self._bindings.update(gone)
                    raise
                self.version += 1
            return gone


class Authorizer:
    """Decides requests from an `AclStore`: deny by default, deny beats allow."""

    def __init__(self, store: AclStore, super_users: Iterable[str] = ()) -> None:
        self.store = store
        self.super_users = frozenset(validate_principal(p) for p in super_users)
        self._cache: dict[tuple[str, str, str, str], bool] = {}
        self._cache_version = -1
        self._lock = threading.Lock()

    def authorize(self, principal: str, resource_type: str, name: str, operation: str) -> bool:
        """Whether `principal` may perform `operation` on the named resource."""
        if principal in self.super_users:
            return True
        key = (principal, resource_type, name, operation)
        # Read before the bindings: a decision is cached only if no change came in between.
        version = self.store.version
        with self._lock:
            if self._cache_version != version:
                self._cache.clear()
                self._cache_version = version
            found = self._cache.get(key)
        if found is not None:
            return found
        decision = self._decide(principal, resource_type, name, operation)
        with self._lock:
            if self._cache_version == version == self.store.version:
                if len(self._cache) > 100_000:  # unbounded names must not grow memory forever
                    self._cache.clear()
                self._cache[key] = decision
        return decision

    def _decide(self, principal: str, resource_type: str, name: str, operation: str) -> bool:
        allowed = False
        for binding in self.store.bindings():
            if (
                binding.resource_type != resource_type
                or not binding.matches_principal(principal)
                or not binding.matches_name(name)
                or not binding.covers(operation)
            ):
                continue
            if binding.permission == DENY:
                return False
            allowed = True
        return allowed
