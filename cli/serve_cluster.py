"""`logstore serve` in cluster mode: the options, and the `ClusterSettings` they make.

Invariants: cluster mode is on exactly when a broker id and etcd endpoints are both given
(on the command line, in the environment or in the config file; the command line wins);
every cluster knob given without them is refused, never ignored; and a broker never
advertises a wildcard address (0.0.0.0 or ::), which no client or broker could connect to.
Each refusal is one line naming the option and what is allowed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import click

from logstore.addresses import parse_host_port
from logstore.cli.serve_options import ServeOption, given_options, remembered_options

if TYPE_CHECKING:
    from logstore.server.cluster.settings import ClusterSettings


_META_CLUSTER = "logstore.serve.cluster"
#: broker ids travel in int32 fields
MAX_BROKER_ID = 2**31 - 1
#: an etcd key prefix segment: the topic-name alphabet, so it needs no escaping
_CLUSTER_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")
#: listen hosts that mean "every interface": bindable, but no address to connect to
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})

#: what cluster mode is, for the help of `serve` and `dev-cluster`
CLUSTER_MODE_HELP = """\
Cluster mode: with --broker-id and --etcd-endpoints the broker joins a cluster.
etcd (v3; Debian package etcd-server) holds the cluster's metadata under
/logstore/<cluster-name>/: the live brokers, the controller, the topics and each
partition's replicas, leader, leader epoch and ISR. Without those two options
(the default) the broker is standalone and needs no other service.

\b
When etcd is unreachable, brokers keep serving the partitions they lead with
their current ISR, but no leadership or ISR changes until it returns. When a
broker dies, each partition it led gets a new leader from its ISR within about
the session timeout (--session-timeout-ms); a leader outside the ISR is chosen
only with --unclean-leader-election, which loses the records it never copied."""

#: how the security options apply in cluster mode, for the help of `serve`
CLUSTER_SECURITY_HELP = """\
Security in cluster mode (Kafka's model): brokers reach each other as clients do.
With --tls-cert they use TLS and check each other's certificates against
--inter-broker-tls-ca (default --tls-client-ca); with --tls-client-ca each
presents its own certificate as its client certificate; with --auth-tokens each
sends the token of --inter-broker-token-file. With --acls-enabled the ACLs live
in etcd and every broker enforces them; replication needs cluster_action on the
cluster, so list the broker principal in --super-users. A local __acls.json is imported
into etcd when etcd has no ACLs yet, accepted when it holds the same ones, and
refused otherwise. Inconsistent combinations are refused at start."""

#: (name, which is also the config file key; environment variable; flags; metavar; click
#: type; help) of each option. None of them has a default: not given means "not given",
#: so the config file or ClusterSettings' own default applies.
_OPTIONS: tuple[ServeOption, ...] = (
    (
        "broker_id",
        "LOGSTORE_BROKER_ID",
        ("--broker-id",),
        "N",
        click.IntRange(0, MAX_BROKER_ID),
        "This broker's id in the cluster (Kafka's broker.id), unique, >= 0. Cluster mode "
        "needs it with --etcd-endpoints.",
    ),
    (
        "etcd_endpoints",
        "LOGSTORE_ETCD_ENDPOINTS",
        ("--etcd-endpoints",),
        "HOST:PORT[,...]",
        click.STRING,
        "etcd client endpoints, HOST:PORT[,HOST:PORT...] (no http://). Cluster mode needs "
        "it with --broker-id.",
    ),
    (
        "cluster_name",
        "LOGSTORE_CLUSTER_NAME",
        ("--cluster-name",),
        "NAME",
        click.STRING,
        "Names the etcd key prefix, so clusters can share one etcd [default: logstore].",
    ),
    (
        "advertised_listen",
        "LOGSTORE_ADVERTISED_LISTEN",
        ("--advertised-listen",),
        "HOST:PORT",
        click.STRING,
        "HOST:PORT clients and other brokers use to reach this broker [default: --listen]; "
        "required when --listen binds a wildcard such as 0.0.0.0.",
    ),
    (
        "session_timeout_ms",
        "LOGSTORE_SESSION_TIMEOUT_MS",
        ("--session-timeout-ms",),
        "MS",
        click.IntRange(min=1),
        "A broker whose etcd lease is not renewed for this long counts as dead and loses "
        "its leaderships (broker.session.timeout.ms) [default: 4000].",
    ),
    (
        "replica_lag_time_max_ms",
        "LOGSTORE_REPLICA_LAG_TIME_MAX_MS",
        ("--replica-lag-time-max-ms",),
        "MS",
        click.IntRange(min=1),
        "A follower not caught up for this long leaves the ISR (replica.lag.time.max.ms) "
        "[default: 30000].",
    ),
    (
        "unclean_leader_election",
        "LOGSTORE_UNCLEAN_LEADER_ELECTION",
        ("--unclean-leader-election/--no-unclean-leader-election",),
        None,
        click.BOOL,
        "Elect a leader outside the ISR when no ISR member is alive, losing the records it "
        "lacks (unclean.leader.election.enable) [default: off].",
    ),
    (
        "default_replication_factor",
        "LOGSTORE_DEFAULT_REPLICATION_FACTOR",
        ("--default-replication-factor",),
        "N",
        click.IntRange(min=1),
        "Copies of each partition of a topic created without --replication-factor "
        "(default.replication.factor) [default: 1].",
    ),
    (
        "replication_stream",
        "LOGSTORE_REPLICATION_STREAM",
        ("--replication-stream/--no-replication-stream",),
        None,
        click.BOOL,
        "On a cluster with no TLS, tokens or ACLs, followers fetch over a plain TCP stream "
        "(records as raw bytes, several times cheaper than gRPC); off: always over gRPC. A "
        "secured broker always replicates over gRPC [default: on].",
    ),
    (
        "replication_port",
        "LOGSTORE_REPLICATION_PORT",
        ("--replication-port",),
        "PORT",
        click.IntRange(0, 65_535),
        "The replication stream's TCP port, on the --listen host; other brokers learn it "
        "through etcd [default: 0, any free port].",
    ),
)
#: the option names, which are also the config file keys
CLUSTER_OPTIONS = tuple(name for name, *_ in _OPTIONS)
#: the two options that switch cluster mode on
_MODE_KEYS = ("broker_id", "etcd_endpoints")


def flag(key: str) -> str:
    """The command-line flag of the setting `key` ("broker_id" -> "--broker-id")."""
    return "--" + key.replace("_", "-")


serve_cluster_options = remembered_options(_OPTIONS, _META_CLUSTER)


def given_cluster_options() -> dict[str, Any]:
    """The cluster options the running command got (from flags or the environment)."""
    return given_options(_META_CLUSTER)


def cluster_settings(
    given: Mapping[str, Any], file_conf: Mapping[str, Any], listen: str
) -> ClusterSettings | None:
    """The broker's `ClusterSettings`, or None for a standalone broker.

    `given` holds the options given on the command line (names as in `CLUSTER_OPTIONS`),
    `file_conf` the config file (already type-checked by `load_config`), `listen` the
    gRPC listener the broker will bind. Raises click.UsageError, one line, for a
    combination that cannot run.
    """
    chosen = {key: given[key] for key in CLUSTER_OPTIONS if given.get(key) is not None}
    for key in CLUSTER_OPTIONS:
        if key not in chosen and key in file_conf:
            chosen[key] = file_conf[key]
    mode = [key for key in _MODE_KEYS if key in chosen]
    if not mode:
        if chosen:
            raise click.UsageError(
                f"{flag(next(iter(chosen)))} is a cluster setting: give --broker-id and "
                "--etcd-endpoints for cluster mode, or drop it for a standalone broker"
            )
        return None
    if len(mode) == 1:
        (missing,) = set(_MODE_KEYS) - set(mode)
        raise click.UsageError(
            f"{flag(mode[0])} needs {flag(missing)}: cluster mode takes both, a standalone "
            "broker neither"
        )
    return _build(chosen, listen)


def _build(chosen: Mapping[str, Any], listen: str) -> ClusterSettings:
    from logstore.server.cluster.settings import ClusterSettings

    advertised = chosen.get("advertised_listen")
    if advertised is not None:
        _check_advertised(advertised)
    elif parse_host_port(listen, port_zero=True)[0] in WILDCARD_HOSTS:
        raise click.UsageError(
            f"--listen {listen} binds every interface: in cluster mode give "
            "--advertised-listen HOST:PORT, an address clients and other brokers can reach"
        )
    name = chosen.get("cluster_name", "logstore")
    if not _CLUSTER_NAME.fullmatch(name):
        raise click.UsageError(f"--cluster-name {name!r}: use 1-249 characters of [a-zA-Z0-9._-]")
    knobs = {
        key: chosen[key]
        for key in (
            "session_timeout_ms",
            "replica_lag_time_max_ms",
            "unclean_leader_election",
            "default_replication_factor",
            "replication_stream",
            "replication_port",
        )
        if key in chosen
    }
    return ClusterSettings(
        broker_id=chosen["broker_id"],
        etcd_endpoints=parse_etcd_endpoints(chosen["etcd_endpoints"]),
        cluster_name=name,
        advertised_listen=advertised,
        **knobs,
    )


def _check_advertised(value: str) -> None:
    try:
        host, _ = parse_host_port(value)
    except ValueError as exc:
        raise click.UsageError(f"--advertised-listen {exc}") from None
    if host in WILDCARD_HOSTS:
        raise click.UsageError(
            f"--advertised-listen {value}: advertise an address others can connect to, "
            "not a wildcard"
        )


def parse_etcd_endpoints(value: str | list[str]) -> tuple[str, ...]:
    """`"h1:p1,h2:p2"` (or a list of them) -> ("h1:p1", "h2:p2"), each checked as HOST:PORT.
    Blank entries are skipped; an empty list or an entry with a scheme is refused."""
    entries = value.split(",") if isinstance(value, str) else value
    endpoints: list[str] = []
    for entry in (e.strip() for e in entries):
        if not entry:
            continue
        if "://" in entry:
            raise click.UsageError(
                f"--etcd-endpoints {entry!r}: give HOST:PORT, without the scheme"
            )
        try:
            parse_host_port(entry)
        except ValueError as exc:
            raise click.UsageError(f"--etcd-endpoints {exc}") from None
        if entry not in endpoints:
            endpoints.append(entry)
    if not endpoints:
        raise click.UsageError("--etcd-endpoints is empty: give HOST:PORT[,HOST:PORT...]")
    return tuple(endpoints)
