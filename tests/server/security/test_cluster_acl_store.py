"""The cluster's ACL store against a real etcd: changes through any store land and reach
every store, concurrent changes do not lose each other, an unreachable etcd keeps the last
bindings, and a standalone broker's ``__acls.json`` is imported, accepted or refused."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from logstore.acls import AclBinding, AclFilter
from logstore.errors import ClusterMetadataUnavailableError, InvalidAclError
from logstore.server.cluster.metadata_store import ClusterMetadataStore
from logstore.server.security.acl_store import ACL_FILE, AclStore, Authorizer
from logstore.server.security.cluster_acl_store import IMPORTED_SUFFIX, ClusterAclStore
from logstore.server.security.settings import SecurityConfigError
from tests.cluster.etcd import EtcdServer, etcd_server
from tests.helpers import wait_until

__all__ = ["etcd_server"]

PREFIX = "/logstore/acl-test/"
#: etcd calls of these stores give up after this long (s), so an outage fails fast
ETCD_TIMEOUT_S = 1.0
#: how long another store may take to see a change (s): one watch event, normally ms
SEEN_WITHIN_S = 5.0


def alice_may(operation: str, topic: str = "orders") -> AclBinding:
    return AclBinding("User:alice", "topic", topic, operation)


@pytest.fixture
def stores(etcd_server: EtcdServer) -> Iterator[list[ClusterAclStore]]:
    """Three started stores over one etcd prefix, as three brokers have; each polls etcd
    only every 60 s, so what they see in time comes from the watch."""
    made = [
        ClusterAclStore(
            ClusterMetadataStore([etcd_server.endpoint], PREFIX, timeout_s=ETCD_TIMEOUT_S),
            refresh_interval_s=60.0,
        )
        for _ in range(3)
    ]
    for store in made:
        store.start()
    try:
        yield made
    finally:
        for store in made:
            store.close()


def test_a_change_through_one_store_is_enforced_through_the_others(
    stores: list[ClusterAclStore],
) -> None:
    first, second, third = stores
    authorizer = Authorizer(third)
    assert not authorizer.authorize("User:alice", "topic", "orders", "produce")
    assert first.add([alice_may("produce")]) == [alice_may("produce")]
    # The broker that made the change enforces it before answering.
    assert Authorizer(first).authorize("User:alice", "topic", "orders", "produce")
    wait_until(
        lambda: authorizer.authorize("User:alice", "topic", "orders", "produce"),
        "the third store to allow what the first added",
        timeout_s=SEEN_WITHIN_S,
    )
    assert second.remove(AclFilter(principal="User:alice")) == [alice_may("produce")]
    wait_until(
        lambda: not authorizer.authorize("User:alice", "topic", "orders", "produce"),
        "the third store to deny what the second removed",
        timeout_s=SEEN_WITHIN_S,
    )
    wait_until(lambda: first.describe() == [], "the first store to see the removal too")


def test_adding_what_is_there_changes_nothing(stores: list[ClusterAclStore]) -> None:
    first, second, _ = stores
    first.add([alice_may("produce")])
    version = second.version
    assert second.add([alice_may("produce")]) == []
    assert second.describe() == [alice_may("produce")]
    assert second.version >= version
    with pytest.raises(InvalidAclError, match="at least one field"):
        second.remove(AclFilter())


def test_concurrent_adds_through_two_stores_all_land(stores: list[ClusterAclStore]) -> None:
    """Two brokers adding at the same moment, many times: every compare-and-swap that
    loses reads again and re-applies its binding on top, so none is lost."""
    first, second, third = stores
    rounds = 15
    start = threading.Barrier(2, timeout=10)
    failures: list[BaseException] = []

    def add_all(store: ClusterAclStore, principal: str) -> None:
        try:
            for i in range(rounds):
                start.wait()
                store.add([AclBinding(principal, "topic", f"t{i}", "produce")])
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [
        threading.Thread(target=add_all, args=(first, "User:alice")),
        threading.Thread(target=add_all, args=(second, "User:bob")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures, failures
    assert not any(t.is_alive() for t in threads)
    expected = sorted(
        AclBinding(p, "topic", f"t{i}", "produce")
        for p in ("User:alice", "User:bob")
        for i in range(rounds)
    )
    wait_until(
        lambda: third.describe() == first.describe() == second.describe() == expected,
        "every store to hold all the concurrent adds",
        timeout_s=SEEN_WITHIN_S,
    )


def test_concurrent_removes_and_adds_through_two_stores_all_land(
    stores: list[ClusterAclStore],
) -> None:
    first, second, _ = stores
    first.add([alice_may(op) for op in ("produce", "consume", "describe")])
    start = threading.Barrier(2, timeout=10)
    results: dict[str, list[AclBinding]] = {}

    def remove() -> None:
        start.wait()
        results["removed"] = first.remove(AclFilter(operation="consume"))

    def add() -> None:
        start.wait()
        results["added"] = second.add([alice_may("alter")])

    threads = [threading.Thread(target=remove), threading.Thread(target=add)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == {"removed": [alice_may("consume")], "added": [alice_may("alter")]}
    expected = sorted(alice_may(op) for op in ("produce", "describe", "alter"))
    wait_until(
        lambda: first.describe() == second.describe() == expected,
        "both stores to hold the add and not the removed binding",
        timeout_s=SEEN_WITHIN_S,
    )


def test_without_etcd_decisions_go_on_and_changes_fail_clearly(
    stores: list[ClusterAclStore], etcd_server: EtcdServer
) -> None:
    first, second, _ = stores
    first.add([alice_may("produce")])
    wait_until(lambda: second.describe() == [alice_may("produce")], "the add to reach the second")
    authorizer = Authorizer(second)
    etcd_server.kill()
    with pytest.raises(ClusterMetadataUnavailableError, match=r"etcd at .* is unavailable"):
        second.refresh()
    assert authorizer.authorize("User:alice", "topic", "orders", "produce")
    assert not authorizer.authorize("User:alice", "topic", "orders", "consume")
    with pytest.raises(ClusterMetadataUnavailableError, match=r"etcd at .* is unavailable"):
        second.add([alice_may("consume")])
    with pytest.raises(ClusterMetadataUnavailableError):
        second.remove(AclFilter(principal="User:alice"))
    assert second.describe() == [alice_may("produce")]
    etcd_server.start()
    # Back: the watch is established again, and what changed meanwhile is read.
    assert first.add([alice_may("consume")]) == [alice_may("consume")]
    wait_until(
        lambda: authorizer.authorize("User:alice", "topic", "orders", "consume"),
        "the second store to follow etcd again",
        timeout_s=SEEN_WITHIN_S + 5,
    )


class _ScriptedReads(ClusterMetadataStore):
    """The real store, except that its next ACL reads follow `script`: READ_ETCD reads
    etcd, an exception is raised, a (document, revision) pair is answered as if read.
    Stands in for a read that fails or lands late, which a real etcd does not do on cue."""

    READ_ETCD = object()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.script: list[Any] = []

    def acl_document(self) -> tuple[bytes, int] | None:
        if not self.script:
            return super().acl_document()
        step = self.script.pop(0)
        if step is self.READ_ETCD:
            return super().acl_document()
        if isinstance(step, BaseException):
            raise step
        return cast("tuple[bytes, int]", step)


def test_a_revoke_whose_read_back_fails_is_not_undone_by_a_late_older_read(
    etcd_server: EtcdServer,
) -> None:
    documents = _ScriptedReads([etcd_server.endpoint], PREFIX, timeout_s=ETCD_TIMEOUT_S)
    store = ClusterAclStore(documents, refresh_interval_s=60.0)
    try:
        authorizer = Authorizer(store)
        store.add([alice_may("produce")])
        assert authorizer.authorize("User:alice", "topic", "orders", "produce")
        before_revoke = documents.acl_document()  # what a watch read in flight holds
        assert before_revoke is not None
        # The revoke is written, then etcd goes away before the store can read it back.
        documents.script = [
            _ScriptedReads.READ_ETCD,
            ClusterMetadataUnavailableError("etcd went away"),
        ]
        assert store.remove(AclFilter(principal="User:alice")) == [alice_may("produce")]
        assert not authorizer.authorize("User:alice", "topic", "orders", "produce")
        # The older read lands late: the revoked allow must not come back.
        documents.script = [before_revoke]
        store.refresh()
        assert not authorizer.authorize("User:alice", "topic", "orders", "produce")
        assert store.describe() == []
    finally:
        store.close()


def test_a_corrupt_document_keeps_the_last_bindings(
    stores: list[ClusterAclStore], etcd_server: EtcdServer
) -> None:
    first, second, _ = stores
    first.add([alice_may("produce")])
    wait_until(lambda: second.describe() == [alice_may("produce")], "the add to reach the second")
    with ClusterMetadataStore([etcd_server.endpoint], PREFIX) as raw:
        document = raw.acl_document()
        assert document is not None
        assert raw.replace_acl_document(b"{not json", document[1])
    with pytest.raises(InvalidAclError, match="cannot read ACLs from the cluster's ACLs"):
        second.refresh()
    assert second.describe() == [alice_may("produce")]
    # A store starting now refuses to start rather than start with no ACLs.
    late = ClusterAclStore(ClusterMetadataStore([etcd_server.endpoint], PREFIX))
    try:
        with pytest.raises(InvalidAclError):
            late.start()
    finally:
        late.close()


# --- a standalone broker's __acls.json -------------------------------------------------------


def local_file(directory: Path, *bindings: AclBinding) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    AclStore(directory).add(bindings)
    return directory / ACL_FILE


def fresh_store(etcd_server: EtcdServer) -> ClusterAclStore:
    return ClusterAclStore(
        ClusterMetadataStore([etcd_server.endpoint], PREFIX, timeout_s=ETCD_TIMEOUT_S)
    )


def test_a_local_file_is_imported_once_when_etcd_has_no_acls(
    etcd_server: EtcdServer, tmp_path: Path
) -> None:
    path = local_file(tmp_path / "b1", alice_may("produce"), alice_may("consume"))
    store = fresh_store(etcd_server)
    try:
        store.start(path)
        assert store.describe() == sorted([alice_may("produce"), alice_may("consume")])
        assert not path.exists()
        assert (tmp_path / "b1" / (ACL_FILE + IMPORTED_SUFFIX)).exists()
    finally:
        store.close()
    # A second broker whose file holds the same bindings joins; its file is set aside too.
    same = local_file(tmp_path / "b2", alice_may("consume"), alice_may("produce"))
    other = fresh_store(etcd_server)
    try:
        other.start(same)
        assert not same.exists()
        assert other.describe() == sorted([alice_may("produce"), alice_may("consume")])
    finally:
        other.close()


def test_a_local_file_that_differs_from_etcd_is_refused(
    etcd_server: EtcdServer, tmp_path: Path
) -> None:
    first = fresh_store(etcd_server)
    try:
        first.start()
        first.add([alice_may("produce")])
    finally:
        first.close()
    path = local_file(tmp_path, alice_may("produce"), alice_may("delete"))
    store = fresh_store(etcd_server)
    try:
        with pytest.raises(SecurityConfigError, match="2 ACL bindings that differ from the"):
            store.start(path)
    finally:
        store.close()
    assert path.exists()  # left for the operator to decide


def test_an_empty_or_absent_local_file_changes_nothing(
    etcd_server: EtcdServer, tmp_path: Path
) -> None:
    path = local_file(tmp_path, alice_may("produce"))
    AclStore(tmp_path).remove(AclFilter(principal="User:alice"))  # leaves {"acls": []}
    assert path.exists()
    store = fresh_store(etcd_server)
    try:
        store.start(path)
        assert store.describe() == []
    finally:
        store.close()
    assert path.exists()
    absent = fresh_store(etcd_server)
    try:
        absent.start(tmp_path / "nowhere" / ACL_FILE)
    finally:
        absent.close()
    with ClusterMetadataStore([etcd_server.endpoint], PREFIX) as raw:
        assert raw.acl_document() is None
