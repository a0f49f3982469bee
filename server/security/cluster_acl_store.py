"""The cluster's ACL bindings, kept in etcd so that every broker enforces the same ones.

In cluster mode the bindings are one document in etcd (`ClusterMetadataStore`'s
``acls`` key; the format of a standalone broker's ``__acls.json``), not a file per
broker: an ACL created or deleted through any broker is enforced by every broker.

Invariants:
- A change is a compare-and-swap from the revision read: a change made meanwhile by
  another broker makes it read again and re-apply itself on top, so concurrent changes
  through different brokers all land (at most `CAS_ATTEMPTS` rounds).
- What `bindings` answers only moves forward: a read is applied only if its etcd revision
  is not older than the one applied last, and `version` grows whenever it changes (the
  `Authorizer` drops its cached decisions then).
- The broker that made a change enforces it before answering; the others within one
  watch event (etcd's watch under the cluster prefix), or `REFRESH_INTERVAL_S` when the
  watch is down.
- While etcd is unreachable, requests are authorized with the bindings read last, and
  changes fail with ClusterMetadataUnavailableError.

Adopting a standalone broker's ``__acls.json`` when it joins (`adopt_local_file`): if
etcd holds no ACL document yet, the file's bindings become the cluster's (once: the file
is then renamed ``__acls.json.imported``). If etcd holds one, the file must hold the same
bindings (it is renamed too), or the broker refuses to start: merging would silently
re-grant what the cluster revoked, and ignoring it would drop its deny bindings, either
way changing who may do what without anyone deciding it.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

from logstore.acls import AclBinding, AclFilter
from logstore.errors import ClusterMetadataUnavailableError, InvalidAclError
from logstore.server.security.acl_store import decode_acls, encode_acls
from logstore.server.security.settings import SecurityConfigError

log = logging.getLogger(__name__)

#: compare-and-swap rounds one change tries before it gives up
CAS_ATTEMPTS = 32
#: the bindings are read again at least this often (s), even without a watch event
REFRESH_INTERVAL_S = 5.0
#: suffix of a local ACL file once its bindings are the cluster's
IMPORTED_SUFFIX = ".imported"


class AclDocuments(Protocol):
    """The part of `ClusterMetadataStore` the ACL store uses."""

    def acl_document(self) -> tuple[bytes, int] | None: ...

    def replace_acl_document(self, document: bytes, expected_mod_revision: int) -> bool: ...

    def watch(self, callback: Callable[[], None]) -> None: ...

    def close(self) -> None: ...


class ClusterAclStore:
    """`acl_store.AclBindings` kept in etcd (see the module docstring). Thread-safe.

    `start` reads the bindings (raising ClusterMetadataUnavailableError when etcd cannot
    be reached: a broker must not start without its ACLs) and keeps them fresh from then
    on; `close` stops that and closes `documents`.
    """

    def __init__(
        self,
        documents: AclDocuments,
        *,
        refresh_interval_s: float = REFRESH_INTERVAL_S,
        where: str = "etcd",
    ) -> None:
        self._documents = documents
        self._refresh_interval_s = refresh_interval_s
        #: names the document in messages
        self.where = where
        self._lock = threading.Lock()
        self._bindings: frozenset[AclBinding] = frozenset()
        self._sorted: list[AclBinding] = []
        #: etcd mod revision of what `_bindings` holds (0: no document)
        self._revision = 0
        self.version = 0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._stale = False
        self._thread: threading.Thread | None = None

    # --- life cycle ----------------------------------------------------------------------

    def start(self, local_file: Path | None = None) -> None:
        """Read the bindings (adopting `local_file` first, see `adopt_local_file`), then
        follow changes from a thread of this store."""
        if local_file is not None:
            self.adopt_local_file(local_file)
        self.refresh()
        self._documents.watch(self._wake.set)
        self._thread = threading.Thread(target=self._follow, name="logstore-acls", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._documents.close()

    def _follow(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self._refresh_interval_s)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self.refresh()
            except ClusterMetadataUnavailableError as exc:
                if not self._stale:
                    log.warning(
                        "cannot read the cluster's ACLs (%s): authorizing with the %d "
                        "bindings read last until etcd answers",
                        exc,
                        len(self._sorted),
                    )
                self._stale = True
                continue
            except InvalidAclError as exc:
                log.error("%s; authorizing with the %d bindings read last", exc, len(self._sorted))
                continue
            if self._stale:
                log.warning("the cluster's ACLs are read from etcd again")
                self._stale = False

    # --- reading -------------------------------------------------------------------------

    def _read(self) -> tuple[frozenset[AclBinding], int]:
        """The bindings in etcd now and their mod revision (0: no document)."""
        found = self._documents.acl_document()
        if found is None:
            return frozenset(), 0
        document, revision = found
        return frozenset(decode_acls(document, f"the cluster's ACLs in {self.where}")), revision

    def refresh(self) -> bool:
        """Read the bindings from etcd; True when what this store answers changed."""
        bindings, revision = self._read()
        return self._apply(bindings, revision)

    def _apply(self, bindings: frozenset[AclBinding], revision: int) -> bool:
        """Answer `bindings` from now on, unless a newer revision was applied already."""
        with self._lock:
            if revision < self._revision:
                return False
            self._revision = revision
            if bindings == self._bindings:
                return False
            self._bindings = bindings
            self._sorted = sorted(bindings)
            self.version += 1
            return True

    def bindings(self) -> list[AclBinding]:
        with self._lock:
            return list(self._sorted)

    def describe(self, selector: AclFilter | None = None) -> list[AclBinding]:
        """The bindings `selector` matches, sorted (all of them without a selector)."""
        return [b for b in self.bindings() if selector is None or selector.matches(b)]

    # --- changing ------------------------------------------------------------------------

    def add(self, bindings: Iterable[AclBinding]) -> list[AclBinding]:
        """Add bindings to the cluster's; return those that were not there already."""
        wanted = frozenset(bindings)
        return self._change(lambda current: sorted(wanted - current), lambda old, new: old | new)

    def remove(self, selector: AclFilter) -> list[AclBinding]:
        """Remove every binding `selector` matches from the cluster's; return them.

        An empty filter is refused: removing every ACL must be asked for field by field.
        """
        if selector.is_empty():
            raise InvalidAclError("give at least one field to select the ACLs to remove")
        return self._change(
            lambda current: sorted(b for b in current if selector.matches(b)),
            lambda old, gone: old - gone,
        )

    def _change(
        self,
        select: Callable[[frozenset[AclBinding]], list[AclBinding]],
        combine: Callable[[frozenset[AclBinding], frozenset[AclBinding]], frozenset[AclBinding]],
    ) -> list[AclBinding]:
        """Write combine(current, select(current)) from the revision read, again from a
        fresh read while another broker wrote first; returns select(current)."""
        for attempt in range(CAS_ATTEMPTS):
            current, revision = self._read()
            selected = select(current)
            if not selected:
                self._apply(current, revision)
                return []
            wanted = combine(current, frozenset(selected))
            if self._documents.replace_acl_document(encode_acls(wanted), revision):
                self._written(wanted, revision)
                return selected
            # Spread contending brokers out a little so they stop colliding.
            time.sleep(random.uniform(0, min(0.1, 0.002 * 2**attempt)))
        raise ClusterMetadataUnavailableError(
            f"the cluster's ACLs kept changing during {CAS_ATTEMPTS} attempts; try again"
        )

    def _written(self, bindings: frozenset[AclBinding], read_revision: int) -> None:
        """Enforce what was just written from `read_revision` before answering: read it
        back (its revision orders it with the watch's reads), or, if etcd went away, apply
        it as written at the least revision it can have, read_revision + 1, so a read of
        the older document still in flight can no longer put a revoked allow back."""
        try:
            self.refresh()
        except (ClusterMetadataUnavailableError, InvalidAclError):
            self._apply(bindings, read_revision + 1)

    # --- a standalone broker's file ------------------------------------------------------

    def adopt_local_file(self, path: Path) -> None:
        """Deal with a local ``__acls.json`` (see the module docstring): import it when etcd
        has no ACLs, accept it when it holds etcd's, else refuse (SecurityConfigError)."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise SecurityConfigError(f"cannot read {path}: {exc}") from exc
        local = frozenset(decode_acls(raw, str(path)))
        if not local:
            return
        cluster, revision = self._read()
        imported = False
        if revision == 0:
            imported = self._documents.replace_acl_document(encode_acls(local), 0)
            if not imported:  # another broker wrote first: compare with what it wrote
                cluster, revision = self._read()
        if not imported and cluster != local:
            raise SecurityConfigError(
                f"{path} holds {len(local)} ACL bindings that differ from the cluster's "
                f"{len(cluster)} in etcd, which every broker enforces: move the file away "
                "(add what you still need with `logstore acls add`) and start again"
            )
        target = path.with_name(path.name + IMPORTED_SUFFIX)
        os.replace(path, target)
        if imported:
            log.warning(
                "imported the %d ACL bindings of %s into the cluster's ACLs in etcd; the "
                "file is now %s and no longer read",
                len(local),
                path,
                target,
            )
        else:
            log.info("%s holds the cluster's ACLs; it is now %s and no longer read", path, target)
