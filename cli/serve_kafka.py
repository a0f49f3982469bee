"""`logstore serve --kafka-listen HOST:PORT`: the Kafka listener's options and settings.

Invariants: the Kafka listener is on exactly when a Kafka listen address is given (flag,
environment or config file; the command line wins); its other options without one are
refused, never ignored; it never advertises a wildcard address (0.0.0.0 or ::) in cluster
mode, where other brokers' clients must reach it by name. Refusals are one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import click

from logstore.addresses import parse_host_port
from logstore.cli.serve_options import ServeOption, given_options, remembered_options

if TYPE_CHECKING:
    from logstore.server.kafka.settings import KafkaSettings


_META_KAFKA = "logstore.serve.kafka"
#: listen hosts meaning "every interface": bindable, but no address to connect to
_WILDCARDS = frozenset({"0.0.0.0", "::", ""})

#: the options; see `logstore.cli.serve_options.ServeOption`
_OPTIONS: list[ServeOption] = [
    (
        "kafka_listen",
        "LOGSTORE_KAFKA_LISTEN",
        ("--kafka-listen",),
        "HOST:PORT",
        str,
        "Also serve the Kafka wire protocol here, for unmodified Kafka clients "
        "(kcat, confluent-kafka, kafka-python, aiokafka, kafkajs) [default: off; port 0 "
        "picks a free one].",
    ),
    (
        "kafka_advertised_listen",
        "LOGSTORE_KAFKA_ADVERTISED_LISTEN",
        ("--kafka-advertised-listen",),
        "HOST:PORT",
        str,
        "Where Kafka clients are told to connect [default: the --kafka-listen address].",
    ),
    (
        "auto_create_topics_enable",
        "LOGSTORE_AUTO_CREATE_TOPICS_ENABLE",
        ("--auto-create-topics-enable/--no-auto-create-topics-enable",),
        None,
        click.BOOL,
        "Kafka's auto.create.topics.enable: a Kafka client's Metadata request for an "
        "unknown topic creates it [default: on].",
    ),
    (
        "num_partitions",
        "LOGSTORE_NUM_PARTITIONS",
        ("--num-partitions",),
        "N",
        click.IntRange(min=1),
        "Kafka's num.partitions: partitions of an auto-created topic [default: 1].",
    ),
    (
        "group_initial_rebalance_delay_ms",
        "LOGSTORE_GROUP_INITIAL_REBALANCE_DELAY_MS",
        ("--group-initial-rebalance-delay-ms",),
        "MS",
        click.IntRange(min=0),
        "Kafka's group.initial.rebalance.delay.ms: the first rebalance of an empty group of "
        "Kafka consumers waits this long for more to join, so consumers started together "
        "rebalance once [default: 3000, Kafka's; 0 for tests].",
    ),
    (
        "group_min_session_timeout_ms",
        "LOGSTORE_GROUP_MIN_SESSION_TIMEOUT_MS",
        ("--group-min-session-timeout-ms",),
        "MS",
        click.IntRange(min=1),
        "Kafka's group.min.session.timeout.ms: the shortest session timeout a Kafka consumer "
        "may ask for [default: 6000].",
    ),
    (
        "group_max_session_timeout_ms",
        "LOGSTORE_GROUP_MAX_SESSION_TIMEOUT_MS",
        ("--group-max-session-timeout-ms",),
        "MS",
        click.IntRange(min=1),
        "Kafka's group.max.session.timeout.ms: the longest [default: 1800000].",
    ),
    (
        "kafka_max_connections",
        "LOGSTORE_KAFKA_MAX_CONNECTIONS",
        ("--kafka-max-connections",),
        "N",
        click.IntRange(min=1),
        "Kafka clients' connections beyond this many are closed at once; each holds a "
        "thread [default: 1024].",
    ),
    (
        "kafka_max_connections_per_ip",
        "LOGSTORE_KAFKA_MAX_CONNECTIONS_PER_IP",
        ("--kafka-max-connections-per-ip",),
        "N",
        click.IntRange(min=1),
        "Kafka's max.connections.per.ip: connections from one address beyond this many "
        "are closed at once, so one host cannot take every connection [default: no limit, "
        "as Kafka; clients behind one NAT or proxy share an address].",
    ),
    (
        "kafka_connections_max_idle_ms",
        "LOGSTORE_KAFKA_CONNECTIONS_MAX_IDLE_MS",
        ("--kafka-connections-max-idle-ms",),
        "MS",
        click.IntRange(min=1),
        "Kafka's connections.max.idle.ms: a Kafka client's connection silent this long is "
        "closed [default: 600000].",
    ),
]

#: config file keys (and option names) of the Kafka listener
KAFKA_OPTIONS = tuple(option[0] for option in _OPTIONS)


serve_kafka_options = remembered_options(_OPTIONS, _META_KAFKA)


def given_kafka_options() -> dict[str, Any]:
    """The Kafka options the running command got (from flags or the environment)."""
    return given_options(_META_KAFKA)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def kafka_settings(
    given: Mapping[str, Any], file_conf: Mapping[str, Any], cluster_mode: bool
) -> KafkaSettings | None:
    """The broker's `KafkaSettings`, or None when it serves no Kafka clients. Raises
    click.UsageError, one line, for options that cannot run."""
    from logstore.server.groups.classic import DEFAULT_INITIAL_REBALANCE_DELAY_MS
    from logstore.server.kafka.settings import KafkaSettings

    chosen = {key: given[key] for key in KAFKA_OPTIONS if given.get(key) is not None}
    for key in KAFKA_OPTIONS:
        if key not in chosen and key in file_conf:
            chosen[key] = file_conf[key]
    listen = chosen.get("kafka_listen")
    if listen is None:
        if chosen:
            raise click.UsageError(
                f"{_flag(next(iter(chosen)))} configures the Kafka listener: give "
                "--kafka-listen HOST:PORT too"
            )
        return None
    for key in ("kafka_listen", "kafka_advertised_listen"):
        if key in chosen:
            _check_address(key, chosen[key], port_zero=key == "kafka_listen")
    advertised = chosen.get("kafka_advertised_listen")
    # As Kafka, which refuses to advertise the non-routable 0.0.0.0: Metadata sends this
    # address to every client, which must be able to connect to it.
    if advertised is None and parse_host_port(listen, port_zero=True)[0] in _WILDCARDS:
        raise click.UsageError(
            f"--kafka-listen {listen} listens on every interface: give "
            "--kafka-advertised-listen HOST:PORT, the address Kafka clients reach it at"
        )
    if advertised is not None and parse_host_port(advertised)[0] in _WILDCARDS:
        raise click.UsageError(
            f"--kafka-advertised-listen {advertised}: clients cannot connect to a wildcard "
            "address; give this broker's name or IP"
        )
    defaults = KafkaSettings(listen=listen)
    min_session = int(
        chosen.get("group_min_session_timeout_ms", defaults.group_min_session_timeout_ms)
    )
    max_session = int(
        chosen.get("group_max_session_timeout_ms", defaults.group_max_session_timeout_ms)
    )
    if min_session > max_session:
        raise click.UsageError(
            f"--group-min-session-timeout-ms {min_session} exceeds "
            f"--group-max-session-timeout-ms {max_session}"
        )
    per_ip = chosen.get("kafka_max_connections_per_ip")
    return KafkaSettings(
        listen=listen,
        advertised_listen=advertised,
        auto_create_topics=bool(chosen.get("auto_create_topics_enable", True)),
        num_partitions=int(chosen.get("num_partitions", 1)),
        max_connections=int(chosen.get("kafka_max_connections", defaults.max_connections)),
        max_connections_per_ip=None if per_ip is None else int(per_ip),
        connections_max_idle_ms=int(
            chosen.get("kafka_connections_max_idle_ms", defaults.connections_max_idle_ms)
        ),
        group_initial_rebalance_delay_ms=int(
            chosen.get("group_initial_rebalance_delay_ms", DEFAULT_INITIAL_REBALANCE_DELAY_MS)
        ),
        group_min_session_timeout_ms=min_session,
        group_max_session_timeout_ms=max_session,
    )


def _check_address(key: str, value: Any, port_zero: bool) -> None:
    try:
        parse_host_port(str(value), port_zero=port_zero)
    except ValueError as exc:
        raise click.UsageError(f"{_flag(key)} {value}: {exc}") from None
