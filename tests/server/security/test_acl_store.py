"""The ACL model, store and authorizer (pure: no broker, no gRPC)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from logstore.acls import CLUSTER_NAME, AclBinding, AclFilter, InvalidAclError
from logstore.server.security.acl_store import ACL_FILE, AclStore, Authorizer


def authorizer(
    tmp_path: Path, *bindings: AclBinding, super_users: tuple[str, ...] = ()
) -> Authorizer:
    store = AclStore(tmp_path)
    store.add(bindings)
    return Authorizer(store, super_users)


def test_deny_by_default(tmp_path: Path) -> None:
    assert not authorizer(tmp_path).authorize("User:alice", "topic", "orders", "produce")


def test_exact_wildcard_and_prefix_names(tmp_path: Path) -> None:
    auth = authorizer(
        tmp_path,
        AclBinding("User:alice", "topic", "orders", "produce"),
        AclBinding("User:alice", "topic", "eu-*", "consume"),
        AclBinding("User:alice", "group", "*", "read"),
    )
    assert auth.authorize("User:alice", "topic", "orders", "produce")
    assert not auth.authorize("User:alice", "topic", "orders2", "produce")
    assert auth.authorize("User:alice", "topic", "eu-orders", "consume")
    assert not auth.authorize("User:alice", "topic", "us-orders", "consume")
    assert auth.authorize("User:alice", "group", "anything", "read")
    assert not auth.authorize("User:alice", "group", "anything", "delete")
    assert not auth.authorize("User:bob", "topic", "orders", "produce")


def test_describe_is_implied_but_not_the_reverse(tmp_path: Path) -> None:
    auth = authorizer(
        tmp_path,
        AclBinding("User:alice", "topic", "orders", "consume"),
        AclBinding("User:bob", "topic", "orders", "describe"),
        AclBinding("User:ops", "cluster", CLUSTER_NAME, "create"),
    )
    assert auth.authorize("User:alice", "topic", "orders", "describe")
    assert not auth.authorize("User:bob", "topic", "orders", "consume")
    # create topics does not reveal the ACLs
    assert not auth.authorize("User:ops", "cluster", CLUSTER_NAME, "describe")


def test_deny_beats_allow_and_all_and_wildcard_principal(tmp_path: Path) -> None:
    auth = authorizer(
        tmp_path,
        AclBinding("User:*", "topic", "*", "all"),
        AclBinding("User:bob", "topic", "payroll", "consume", "deny"),
    )
    assert auth.authorize("User:alice", "topic", "payroll", "consume")
    assert auth.authorize("User:bob", "topic", "orders", "delete")
    assert not auth.authorize("User:bob", "topic", "payroll", "consume")
    # a deny of consume does not take describe away
    assert auth.authorize("User:bob", "topic", "payroll", "describe")


def test_super_users_bypass(tmp_path: Path) -> None:
    auth = authorizer(tmp_path, super_users=("User:admin",))
    assert auth.authorize("User:admin", "cluster", CLUSTER_NAME, "alter")
    assert not auth.authorize("User:admins", "cluster", CLUSTER_NAME, "alter")


def test_changes_reach_a_cached_decision(tmp_path: Path) -> None:
    auth = authorizer(tmp_path)
    assert not auth.authorize("User:alice", "topic", "t", "produce")
    auth.store.add([AclBinding("User:alice", "topic", "t", "produce")])
    assert auth.authorize("User:alice", "topic", "t", "produce")
    auth.store.remove(AclFilter(principal="User:alice"))
    assert not auth.authorize("User:alice", "topic", "t", "produce")


@pytest.mark.parametrize(
    "fields",
    [
        ("alice", "topic", "t", "produce"),  # no principal type
        ("User:alice", "queue", "t", "produce"),  # unknown resource type
        ("User:alice", "topic", "t", "read"),  # a group operation on a topic
        ("User:alice", "group", "g", "produce"),
        ("User:alice", "topic", "", "produce"),
        ("User:alice", "cluster", "other", "create"),
    ],
)
def test_invalid_bindings_are_refused(fields: tuple[str, str, str, str]) -> None:
    with pytest.raises(InvalidAclError):
        AclBinding(*fields)
    with pytest.raises(InvalidAclError):
        AclBinding("User:alice", "topic", "t", "produce", "maybe")


def test_store_persists_and_filters(tmp_path: Path) -> None:
    store = AclStore(tmp_path)
    a = AclBinding("User:alice", "topic", "orders", "produce")
    b = AclBinding("User:bob", "group", "g", "read")
    assert store.add([a, b]) == [a, b]
    assert store.add([a]) == []
    reopened = AclStore(tmp_path)
    assert reopened.bindings() == [a, b]
    assert reopened.describe(AclFilter(resource_type="group")) == [b]
    assert reopened.remove(AclFilter(principal="User:alice")) == [a]
    assert AclStore(tmp_path).bindings() == [b]
    with pytest.raises(InvalidAclError):
        reopened.remove(AclFilter())
    assert json.loads((tmp_path / ACL_FILE).read_text())["version"] == 1


def test_corrupt_store_is_an_error_not_an_empty_set(tmp_path: Path) -> None:
    (tmp_path / ACL_FILE).write_text("{not json")
    with pytest.raises(InvalidAclError, match="cannot read ACLs"):
        AclStore(tmp_path)


names = st.text(alphabet="ab-", min_size=1, max_size=6)


@given(pattern=names, name=names, prefix=st.booleans())
def test_name_matching_is_exact_or_prefix(pattern: str, name: str, prefix: bool) -> None:
    binding = AclBinding("User:x", "topic", pattern + ("*" if prefix else ""), "produce")
    assert binding.matches_name(name) == (name.startswith(pattern) if prefix else name == pattern)
