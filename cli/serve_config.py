"""`logstore serve --config FILE`: the TOML file, checked before the broker starts.

Invariant: every key the file may hold is listed here with its type, and a file with any
other key, or a value of the wrong type, is refused with a message naming the key (and
the key it most likely meant). A typo must never silently leave a setting at its default.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import click

from logstore.addresses import parse_host_port
from logstore.cli.serve_cluster import MAX_BROKER_ID

if TYPE_CHECKING:
    from logstore.storage.log_manager import ManagerSettings

#: a check returns None when the value is acceptable, or else what was expected instead
#: ("an integer >= 1"), which the refusal names
Check = Callable[[Any], str | None]


def _string(value: Any) -> str | None:
    return None if isinstance(value, str) else "a string"


def _positive_int(value: Any) -> str | None:
    # bool is an int subclass in Python; `max_workers = true` is still a mistake
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    return None if ok else "an integer >= 1"


def _non_negative_int(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return None if ok else "an integer >= 0"


def _broker_id(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_BROKER_ID
    return None if ok else f"an integer in 0..{MAX_BROKER_ID}"


def _port(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 65_535
    return None if ok else "a port number in 0..65535"


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def _table(value: Any) -> str | None:
    return None if isinstance(value, dict) else "a table"


def _listener(value: Any) -> str | None:
    if not isinstance(value, str):
        return "a string HOST:PORT"
    try:
        parse_host_port(value, port_zero=True)
    except ValueError:
        return "HOST:PORT with a port in 0..65535"
    return None


def _address(value: Any) -> str | None:
    """An address to connect to: unlike a listener's, its port cannot be 0."""
    if not isinstance(value, str):
        return "a string HOST:PORT"
    try:
        parse_host_port(value)
    except ValueError:
        return "HOST:PORT with a port in 1..65535"
    return None


def _endpoints(value: Any) -> str | None:
    if isinstance(value, str) or (
        isinstance(value, list) and all(isinstance(e, str) for e in value)
    ):
        return None
    return 'a list of HOST:PORT strings (["etcd1:2379"]) or a comma-separated string'


def _principals(value: Any) -> str | None:
    if isinstance(value, str) or (
        isinstance(value, list) and all(isinstance(p, str) for p in value)
    ):
        return None
    return 'a list of principals (["User:admin"]) or a comma-separated string'


#: broker setting -> its check; the BrokerSettings fields with the same names (sizes in bytes)
BROKER_KEYS: dict[str, Check] = {
    "data_dir": _string,
    "listen": _listener,
    "metrics_listen": _listener,
    "max_workers": _positive_int,
    "max_request_bytes": _positive_int,
    "max_fetch_bytes": _positive_int,
    "max_concurrent_rpcs": _positive_int,
    "offsets_retention_minutes": _positive_int,
    "topic-defaults": _table,
    "log-manager": _table,
    "tls_cert": _string,
    "tls_key": _string,
    "tls_client_ca": _string,
    "auth_tokens": _string,
    "inter_broker_tls_ca": _string,
    "inter_broker_token_file": _string,
    "authorizer": _string,
    "acls_enabled": _boolean,
    "super_users": _principals,
}

#: cluster-mode setting -> its check; the `serve` options of the same names (times in ms),
#: which `logstore.cli.serve_cluster.cluster_settings` combines
CLUSTER_KEYS: dict[str, Check] = {
    "broker_id": _broker_id,
    "etcd_endpoints": _endpoints,
    "cluster_name": _string,
    "advertised_listen": _address,
    "session_timeout_ms": _positive_int,
    "replica_lag_time_max_ms": _positive_int,
    "unclean_leader_election": _boolean,
    "default_replication_factor": _positive_int,
    "replication_stream": _boolean,
    "replication_port": _port,
}

#: Kafka listener setting -> its check; the `serve` options of the same names, which
#: `logstore.cli.serve_kafka.kafka_settings` combines
KAFKA_KEYS: dict[str, Check] = {
    "kafka_listen": _listener,
    "kafka_advertised_listen": _address,
    "auto_create_topics_enable": _boolean,
    "num_partitions": _positive_int,
    "group_initial_rebalance_delay_ms": _non_negative_int,
    "group_min_session_timeout_ms": _positive_int,
    "group_max_session_timeout_ms": _positive_int,
    "kafka_max_connections": _positive_int,
    "kafka_max_connections_per_ip": _positive_int,
    "kafka_connections_max_idle_ms": _positive_int,
}

#: every top-level key a file may hold
TOP_LEVEL_KEYS: dict[str, Check] = {**BROKER_KEYS, **CLUSTER_KEYS, **KAFKA_KEYS}

#: the integer BrokerSettings fields a file may set
INT_SETTINGS = tuple(key for key, check in BROKER_KEYS.items() if check is _positive_int)


def load_config(path: str | None) -> dict[str, Any]:
    """The checked contents of the TOML file at `path` ({} for None)."""
    if path is None:
        return {}
    try:
        with open(path, "rb") as f:
            conf = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise click.ClickException(f"cannot read config file {path}: {exc}") from exc
    check_table(conf, TOP_LEVEL_KEYS, path)
    check_table(conf.get("log-manager", {}), _manager_keys(), f"[log-manager] of {path}")
    return conf


def check_table(table: Mapping[str, Any], checks: Mapping[str, Check], where: str) -> None:
    """Refuse the first unknown key or badly typed value of `table`, naming it."""
    for key, value in table.items():
        check = checks.get(key)
        if check is None:
            raise click.ClickException(f"unknown key {key!r} in {where}{_hint(key, checks)}")
        expected = check(value)
        if expected is not None:
            raise click.ClickException(f"{key} in {where}: expected {expected}, got {value!r}")


def _hint(key: str, known: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest known key, else the list of known keys."""
    names = sorted(known)
    close = difflib.get_close_matches(key, names, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f"; known keys: {', '.join(names)}"


def _manager_keys() -> dict[str, Check]:
    from logstore.storage.log_manager import ManagerSettings

    # background_threads exists for tests that drive the manager by hand, not for brokers
    names = {f.name for f in dataclasses.fields(ManagerSettings)} - {"background_threads"}
    return {name: _positive_int for name in names}


def manager_settings(table: Mapping[str, Any]) -> ManagerSettings:
    """The [log-manager] table (already checked by `load_config`) as ManagerSettings."""
    from logstore.storage.log_manager import ManagerSettings

    return ManagerSettings(**table)
