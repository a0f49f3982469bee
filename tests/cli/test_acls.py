"""`logstore acls add|list|remove` and the client security flags, against a real broker
serving TLS with bearer tokens and ACLs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.conftest import Result, run_cli
from tests.server.conftest import BrokerProcess
from tests.server.security.test_security import ADMIN, BOB, Pki, pki, start_broker, tls_credentials

__all__ = ["pki"]  # the session fixture, used here too


@pytest.fixture(scope="module")
def secure_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    args = [
        *("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)),
        *("--auth-tokens", str(pki.tokens), "--acls-enabled", "--super-users", "User:admin"),
    ]
    process = start_broker(tmp_path_factory.mktemp("cli-secure"), args, tls_credentials(pki))
    try:
        yield process
    finally:
        process.close()


def secure(broker: BrokerProcess, pki: Pki, token: str, *args: str) -> Result:
    return run_cli(*args, "--tls-ca", str(pki.ca), "--token", token, bootstrap=broker.address)


def test_token_and_tls_flags(secure_broker: BrokerProcess, pki: Pki) -> None:
    done = secure(secure_broker, pki, ADMIN, "topics", "create", "cli-orders", "--partitions", "1")
    assert done.code == 0, done.err
    plain = run_cli("topics", "list", bootstrap=secure_broker.address)
    assert plain.code != 0 and "cannot reach broker" in plain.err
    no_token = run_cli("topics", "list", "--tls-ca", str(pki.ca), bootstrap=secure_broker.address)
    assert no_token.code != 0 and "missing bearer token" in no_token.err
    produced = secure(secure_broker, pki, ADMIN, "produce", "cli-orders")
    assert produced.code == 0, produced.err


def test_env_variables_carry_security_to_produce_and_consume(
    secure_broker: BrokerProcess,
    pki: Pki,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOGSTORE_TLS_CA", str(pki.ca))
    monkeypatch.setenv("LOGSTORE_TOKEN", ADMIN)
    address = secure_broker.address
    assert run_cli("topics", "create", "cli-env", bootstrap=address).code == 0
    assert run_cli("produce", "cli-env", stdin="one\ntwo\n", bootstrap=address).code == 0
    done = run_cli(
        "consume", "cli-env", "--from-beginning", "--max-messages", "2", bootstrap=address
    )
    assert done.code == 0, done.err
    assert done.out.splitlines() == ["one", "two"]


def test_acls_add_list_remove(secure_broker: BrokerProcess, pki: Pki) -> None:
    admin_run = lambda *a: secure(secure_broker, pki, ADMIN, *a)  # noqa: E731
    assert admin_run("topics", "create", "cli-acl").code == 0
    denied = secure(secure_broker, pki, BOB, "topics", "describe", "cli-acl")
    assert denied.code != 0
    assert denied.err.strip() == "error: User:bob may not describe topic cli-acl"

    added = admin_run(
        "acls", "add", "--principal", "User:bob", "--topic", "cli-acl",
        "--operation", "describe", "--operation", "produce",
    )  # fmt: skip
    assert added.code == 0, added.err
    assert "added 2 ACL(s)" in added.out
    assert admin_run("acls", "add", "--principal", "User:bob", "--cluster", "--operation",
                     "create").code == 0  # fmt: skip
    assert secure(secure_broker, pki, BOB, "topics", "describe", "cli-acl").code == 0

    listed = admin_run("acls", "list", "--principal", "User:bob", "--json")
    assert listed.code == 0, listed.err
    rows = {
        (r["resource_type"], r["resource_name"], r["operation"]) for r in json.loads(listed.out)
    }
    assert rows == {
        ("topic", "cli-acl", "describe"),
        ("topic", "cli-acl", "produce"),
        ("cluster", "logstore-cluster", "create"),
    }
    table = admin_run("acls", "list", "--topic", "cli-acl")
    assert "User:bob" in table.out and "produce" in table.out

    removed = admin_run("acls", "remove", "--principal", "User:bob", "--topic", "cli-acl")
    assert removed.code == 0, removed.err
    assert "removed 2 ACL(s)" in removed.out
    assert secure(secure_broker, pki, BOB, "topics", "describe", "cli-acl").code != 0
    assert admin_run("acls", "remove", "--principal", "User:nobody").code != 0


def test_acls_usage_errors(secure_broker: BrokerProcess, pki: Pki) -> None:
    both = secure(secure_broker, pki, ADMIN, "acls", "add", "--principal", "User:a", "--topic",
                  "t", "--group", "g", "--operation", "read")  # fmt: skip
    assert both.code == 2 and "one of --topic, --group, --cluster" in both.err
    wrong = secure(secure_broker, pki, ADMIN, "acls", "add", "--principal", "User:a", "--group",
                   "g", "--operation", "produce")  # fmt: skip
    assert wrong.code == 2 and "does not apply to a group" in wrong.err


def test_serve_reads_security_from_the_config_file(pki: Pki, tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text(
        f'tls_cert = "{pki.server_cert}"\ntls_key = "{pki.server_key}"\n'
        f'auth_tokens = "{pki.tokens}"\nauthorizer = "acl"\nsuper_users = ["User:admin"]\n'
    )
    process = start_broker(tmp_path, ["--config", str(config)], tls_credentials(pki))
    try:
        bob = secure(process, pki, BOB, "topics", "create", "cfg")
        assert "User:bob may not create topics" in bob.err
        assert secure(process, pki, ADMIN, "topics", "create", "cfg").code == 0
    finally:
        process.close()
