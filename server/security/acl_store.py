"""The broker's ACL bindings and the decisions made from them.

`AclStore` keeps the bindings in ``<data_dir>/__acls.json`` (replaced atomically and
fsynced on every change, so a crash keeps either the old or the new set); in cluster mode
`cluster_acl_store.ClusterAclStore` keeps them in etcd instead, as the same document.
`Authorizer` decides from either (`AclBindings`): deny by default, a matching deny beats
any allow, super users bypass the check. Pure: no gRPC.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from logstore.acls import DENY, AclBinding, AclFilter, validate_principal
from logstore.errors import InvalidAclError
from logstore.storage.fileutil import write_file_atomically

ACL_FILE = "__acls.json"
_FILE_VERSION = 1


class AclBindings(Protocol):
    """Where a broker's ACL bindings live: its own file, or the cluster's etcd.

    Invariant: `version` grows whenever what `bindings` answers changes, so callers that
    cache decisions drop them.
    """

    version: int

    def bindings(self) -> list[AclBinding]: ...

    def describe(self, selector: AclFilter | None = None) -> list[AclBinding]: ...

    def add(self, bindings: Iterable[AclBinding]) -> list[AclBinding]: ...

    def remove(self, selector: AclFilter) -> list[AclBinding]: ...


def encode_acls(bindings: Iterable[AclBinding]) -> bytes:
    """The ACL document (JSON, sorted bindings): the contents of ``__acls.json``."""
    document: dict[str, Any] = {
        "version": _FILE_VERSION,
        "acls": [b.to_dict() for b in sorted(bindings)],
    }
    return json.dumps(document, indent=1).encode() + b"\n"


def decode_acls(raw: bytes, source: str) -> list[AclBinding]:
    """The bindings of an ACL document; InvalidAclError naming `source` when it is not one
    (starting with no ACLs would silently change who may do what)."""
    try:
        document = json.loads(raw)
        return [AclBinding(**entry) for entry in document["acls"]]
    except (ValueError, KeyError, TypeError, InvalidAclError) as exc:
        raise InvalidAclError(f"cannot read ACLs from {source}: {exc}") from exc


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
        return decode_acls(raw, str(self.path))

    def _save(self) -> None:
        write_file_atomically(self.path, encode_acls(self._bindings))

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
    """Decides requests from `AclBindings`: deny by default, deny beats allow."""

    def __init__(self, store: AclBindings, super_users: Iterable[str] = ()) -> None:
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
