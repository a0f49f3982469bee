"""`logstore serve` Kafka listener options: flags, environment and config file combine into
`KafkaSettings` (`kafka_settings`, what `serve` calls), and what cannot run is one line."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from confluent_kafka.admin import AdminClient

from logstore.cli.serve_config import load_config
from logstore.cli.serve_kafka import given_kafka_options, kafka_settings, serve_kafka_options
from logstore.server.kafka.settings import KafkaSettings
from tests.kafka.conftest import KafkaBrokerProcess


@click.command()
@serve_kafka_options
def options_probe() -> None:
    """Prints what the Kafka options gathered, as `serve` reads them."""
    click.echo(json.dumps(given_kafka_options()))


def _given(*args: str, env: dict[str, str] | None = None) -> dict[str, object]:
    result = CliRunner().invoke(options_probe, list(args), env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_no_kafka_option_means_no_kafka_listener() -> None:
    assert kafka_settings(_given(), {}, cluster_mode=False) is None


def test_every_flag_reaches_kafka_settings() -> None:
    given = _given(
        "--kafka-listen", "127.0.0.1:9094",
        "--kafka-advertised-listen", "kafka.example.com:9094",
        "--no-auto-create-topics-enable",
        "--num-partitions", "6",
        "--group-initial-rebalance-delay-ms", "0",
        "--group-min-session-timeout-ms", "1000",
        "--group-max-session-timeout-ms", "60000",
        "--kafka-max-connections", "200",
        "--kafka-max-connections-per-ip", "20",
        "--kafka-connections-max-idle-ms", "30000",
    )  # fmt: skip
    assert kafka_settings(given, {}, cluster_mode=False) == KafkaSettings(
        listen="127.0.0.1:9094",
        advertised_listen="kafka.example.com:9094",
        auto_create_topics=False,
        num_partitions=6,
        group_initial_rebalance_delay_ms=0,
        group_min_session_timeout_ms=1000,
        group_max_session_timeout_ms=60000,
        max_connections=200,
        max_connections_per_ip=20,
        connections_max_idle_ms=30000,
    )


def test_connection_limits_default_to_kafkas() -> None:
    settings = kafka_settings(_given("--kafka-listen", "127.0.0.1:9094"), {}, cluster_mode=False)
    assert settings is not None
    assert settings.max_connections == 1024
    assert settings.max_connections_per_ip is None  # Kafka's default: no per-address limit
    assert settings.connections_max_idle_ms == 600_000


def test_connection_limits_come_from_the_environment_and_the_file(tmp_path: Path) -> None:
    given = _given(
        "--kafka-listen",
        "127.0.0.1:9094",
        env={"LOGSTORE_KAFKA_MAX_CONNECTIONS_PER_IP": "8"},
    )
    config = tmp_path / "broker.toml"
    config.write_text(
        "kafka_max_connections = 64\nkafka_connections_max_idle_ms = 1000\n"
        "kafka_max_connections_per_ip = 2\n"
    )
    settings = kafka_settings(given, load_config(str(config)), cluster_mode=False)
    assert settings is not None
    assert (settings.max_connections, settings.connections_max_idle_ms) == (64, 1000)
    assert settings.max_connections_per_ip == 8  # the environment wins over the file


@pytest.mark.parametrize(
    "flag",
    [
        "--kafka-max-connections",
        "--kafka-max-connections-per-ip",
        "--kafka-connections-max-idle-ms",
    ],
)
def test_connection_limits_must_be_positive(flag: str) -> None:
    result = CliRunner().invoke(options_probe, ["--kafka-listen", "127.0.0.1:9094", flag, "0"])
    assert result.exit_code == 2
    assert f"Invalid value for '{flag}'" in result.output


def test_session_timeout_bounds_must_be_in_order() -> None:
    given = _given(
        "--kafka-listen", "127.0.0.1:9094", "--group-min-session-timeout-ms", "7000",
        "--group-max-session-timeout-ms", "6000",
    )  # fmt: skip
    with pytest.raises(click.UsageError, match="exceeds --group-max-session-timeout-ms"):
        kafka_settings(given, {}, cluster_mode=False)


def test_the_environment_and_the_config_file_configure_it_too(tmp_path: Path) -> None:
    given = _given(env={"LOGSTORE_KAFKA_LISTEN": "127.0.0.1:9095"})
    config = tmp_path / "broker.toml"
    config.write_text(
        "num_partitions = 3\nauto_create_topics_enable = false\n"
        "group_initial_rebalance_delay_ms = 0\n"
    )
    settings = kafka_settings(given, load_config(str(config)), cluster_mode=False)
    assert settings is not None
    assert (settings.listen, settings.num_partitions, settings.auto_create_topics) == (
        "127.0.0.1:9095",
        3,
        False,
    )
    assert settings.group_initial_rebalance_delay_ms == 0


def test_the_command_line_wins_over_the_file(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text('kafka_listen = "127.0.0.1:9000"\nnum_partitions = 3\n')
    given = _given("--kafka-listen", "127.0.0.1:9001")
    settings = kafka_settings(given, load_config(str(config)), cluster_mode=False)
    assert settings is not None and settings.listen == "127.0.0.1:9001"
    assert settings.num_partitions == 3


def test_a_kafka_knob_without_a_listener_is_refused() -> None:
    with pytest.raises(click.UsageError, match="--num-partitions configures the Kafka listener"):
        kafka_settings(_given("--num-partitions", "3"), {}, cluster_mode=False)


@pytest.mark.parametrize("cluster_mode", [False, True])
def test_a_wildcard_listener_needs_an_advertised_address(cluster_mode: bool) -> None:
    given = _given("--kafka-listen", "0.0.0.0:9094")
    with pytest.raises(click.UsageError, match="--kafka-advertised-listen"):
        kafka_settings(given, {}, cluster_mode=cluster_mode)
    named = _given("--kafka-listen", "0.0.0.0:9094", "--kafka-advertised-listen", "h.example:9094")
    assert kafka_settings(named, {}, cluster_mode=cluster_mode) is not None
    wildcard = _given("--kafka-listen", "0.0.0.0:9094", "--kafka-advertised-listen", "0.0.0.0:9094")
    with pytest.raises(click.UsageError, match="cannot connect to a wildcard"):
        kafka_settings(wildcard, {}, cluster_mode=cluster_mode)


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("group_initial_rebalance_delay_ms = -1", "an integer >= 0"),
        ("num_partitions = 0", "an integer >= 1"),
        ("kafka_max_connections_per_ip = 0", "an integer >= 1"),
        ('kafka_connections_max_idle_ms = "10m"', "an integer >= 1"),
        ('kafka_listen = "nowhere"', "HOST:PORT"),
        ("kafka_listn = 1", "did you mean 'kafka_listen'"),
    ],
)
def test_bad_config_file_values_are_refused_naming_the_key(
    tmp_path: Path, line: str, words: str
) -> None:
    config = tmp_path / "broker.toml"
    config.write_text(line + "\n")
    with pytest.raises(click.ClickException, match=words):
        load_config(str(config))


def test_the_start_line_brackets_an_ipv6_kafka_listener(tmp_path: Path) -> None:
    """`Kafka listener on [::1]:PORT`, as HOST:PORT is read back (and as the gRPC address
    is shown): a client given that address reaches the broker."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    broker = KafkaBrokerProcess(tmp_path / "data", kafka_host="::1")
    broker.start()
    try:
        assert f"; Kafka listener on [::1]:{broker.kafka_port}" in broker.start_line
        assert broker.bootstrap == f"[::1]:{broker.kafka_port}"
        admin = AdminClient({"bootstrap.servers": broker.bootstrap, "socket.timeout.ms": 5000})
        metadata = admin.list_topics(timeout=10)
        assert [(b.host, b.port) for b in metadata.brokers.values()] == [("::1", broker.kafka_port)]
    finally:
        broker.close()
