"""`logstore serve` cluster options: how flags, the environment and the config file combine
into `ClusterSettings` (`cluster_settings`, the function `serve` builds them with), and the
one-line refusal of every combination that cannot run."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from logstore.cli.main import cli as main_cli
from logstore.cli.serve_cluster import (
    CLUSTER_OPTIONS,
    cluster_settings,
    given_cluster_options,
    parse_etcd_endpoints,
    serve_cluster_options,
)
from logstore.cli.serve_config import CLUSTER_KEYS, load_config
from logstore.server.cluster.settings import ClusterSettings
from tests.cli.conftest import run_cli

LISTEN = "127.0.0.1:9092"
ETCD = "127.0.0.1:2379"


@click.command()
@serve_cluster_options
def options_probe() -> None:
    """Prints what the cluster options gathered, as `serve` reads them."""
    click.echo(json.dumps(given_cluster_options()))


def gathered(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = CliRunner().invoke(options_probe, list(args), env=env)
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def write_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "broker.toml"
    path.write_text(text)
    return str(path)


def refusal(
    given: dict[str, Any], file_conf: dict[str, Any] | None = None, listen: str = LISTEN
) -> str:
    with pytest.raises(click.UsageError) as refused:
        cluster_settings(given, file_conf or {}, listen)
    message = refused.value.format_message()
    assert "\n" not in message
    return message


# --- flags -----------------------------------------------------------------------------------


def test_no_cluster_option_means_a_standalone_broker() -> None:
    assert gathered() == {}
    assert cluster_settings({}, {}, LISTEN) is None


def test_every_flag_reaches_cluster_settings() -> None:
    given_options = gathered(
        "--broker-id", "2",
        "--etcd-endpoints", "e1:2379, e2:2379,e1:2379",
        "--cluster-name", "prod.eu-1",
        "--advertised-listen", "b2.example:9092",
        "--session-timeout-ms", "9000",
        "--replica-lag-time-max-ms", "10000",
        "--unclean-leader-election",
        "--default-replication-factor", "3",
        "--no-replication-stream",
        "--replication-port", "9192",
    )  # fmt: skip
    assert cluster_settings(given_options, {}, "0.0.0.0:9092") == ClusterSettings(
        broker_id=2,
        etcd_endpoints=("e1:2379", "e2:2379"),
        cluster_name="prod.eu-1",
        advertised_listen="b2.example:9092",
        session_timeout_ms=9000,
        replica_lag_time_max_ms=10000,
        unclean_leader_election=True,
        default_replication_factor=3,
        replication_stream=False,
        replication_port=9192,
    )


def test_knobs_not_given_keep_the_cluster_settings_defaults() -> None:
    settings = cluster_settings(gathered("--broker-id", "0", "--etcd-endpoints", ETCD), {}, LISTEN)
    assert settings == ClusterSettings(broker_id=0, etcd_endpoints=(ETCD,))
    assert settings.advertised_listen is None
    assert settings.unclean_leader_election is False


def test_the_options_come_from_the_environment_too() -> None:
    env = {
        "LOGSTORE_BROKER_ID": "4",
        "LOGSTORE_ETCD_ENDPOINTS": ETCD,
        "LOGSTORE_UNCLEAN_LEADER_ELECTION": "false",
        "LOGSTORE_SESSION_TIMEOUT_MS": "7000",
    }
    settings = cluster_settings(gathered(env=env), {}, LISTEN)
    assert settings is not None
    assert (settings.broker_id, settings.etcd_endpoints) == (4, (ETCD,))
    assert (settings.unclean_leader_election, settings.session_timeout_ms) == (False, 7000)


def test_no_unclean_leader_election_is_given_as_false() -> None:
    assert gathered("--no-unclean-leader-election") == {"unclean_leader_election": False}


def test_the_help_defaults_are_the_cluster_settings_defaults() -> None:
    """The help text states each knob's default: it must be ClusterSettings' own."""
    defaults = ClusterSettings(broker_id=0, etcd_endpoints=(ETCD,))
    help_text = CliRunner().invoke(options_probe, ["--help"]).stdout
    flat = " ".join(help_text.split())
    for name, shown in (
        ("session_timeout_ms", str(defaults.session_timeout_ms)),
        ("replica_lag_time_max_ms", str(defaults.replica_lag_time_max_ms)),
        ("default_replication_factor", str(defaults.default_replication_factor)),
        ("cluster_name", defaults.cluster_name),
        ("unclean_leader_election", "off" if not defaults.unclean_leader_election else "on"),
        ("replication_stream", "on" if defaults.replication_stream else "off"),
        ("replication_port", f"{defaults.replication_port}, any free port"),
    ):
        flag = "--" + name.replace("_", "-")
        section = flat[flat.index(flag) :]
        match = re.search(r"\[default: ([^\]]+)\]", section)
        assert match is not None and match.group(1) == shown, (flag, section[:200])


@pytest.mark.parametrize(
    ("given_options", "words"),
    [
        ({"broker_id": 1}, ("--broker-id needs --etcd-endpoints",)),
        ({"etcd_endpoints": ETCD}, ("--etcd-endpoints needs --broker-id",)),
        ({"cluster_name": "x"}, ("--cluster-name is a cluster setting",)),
        ({"unclean_leader_election": False}, ("--unclean-leader-election is a cluster setting",)),
        ({"advertised_listen": "h:1"}, ("--advertised-listen is a cluster setting",)),
    ],
)
def test_half_a_cluster_configuration_is_refused(
    given_options: dict[str, Any], words: tuple[str, ...]
) -> None:
    message = refusal(given_options)
    for word in words:
        assert word in message


@pytest.mark.parametrize("listen", ["0.0.0.0:9092", "[::]:9092", "0.0.0.0:0"])
def test_a_wildcard_listener_needs_an_advertised_address(listen: str) -> None:
    message = refusal({"broker_id": 0, "etcd_endpoints": ETCD}, listen=listen)
    assert "--advertised-listen" in message and "binds every interface" in message
    settings = cluster_settings(
        {"broker_id": 0, "etcd_endpoints": ETCD, "advertised_listen": "10.0.0.1:9092"}, {}, listen
    )
    assert settings is not None and settings.advertised_listen == "10.0.0.1:9092"


@pytest.mark.parametrize(
    ("advertised", "words"),
    [
        ("0.0.0.0:9092", ("wildcard",)),
        ("h:0", ("port 0", "1..65535")),
        ("h", ("not HOST:PORT",)),
    ],
)
def test_an_advertised_address_must_be_reachable(advertised: str, words: tuple[str, ...]) -> None:
    message = refusal({"broker_id": 0, "etcd_endpoints": ETCD, "advertised_listen": advertised})
    assert "--advertised-listen" in message
    for word in words:
        assert word in message


@pytest.mark.parametrize(
    ("endpoints", "words"),
    [
        ("", ("empty",)),
        (" , ", ("empty",)),
        ("http://127.0.0.1:2379", ("without the scheme",)),
        ("etcd1", ("not HOST:PORT",)),
        ("etcd1:70000", ("70000",)),
    ],
)
def test_bad_etcd_endpoints_are_refused(endpoints: str, words: tuple[str, ...]) -> None:
    message = refusal({"broker_id": 0, "etcd_endpoints": endpoints})
    assert "--etcd-endpoints" in message
    for word in words:
        assert word in message


@pytest.mark.parametrize("name", ["", "a/b", "x" * 250, "é"])
def test_a_cluster_name_is_a_safe_key_prefix(name: str) -> None:
    assert "--cluster-name" in refusal(
        {"broker_id": 0, "etcd_endpoints": ETCD, "cluster_name": name}
    )


@given(
    st.lists(
        st.tuples(st.from_regex(r"[a-z][a-z0-9.-]{0,20}", fullmatch=True), st.integers(1, 65_535)),
        min_size=1,
        max_size=6,
    )
)
def test_etcd_endpoints_keep_their_order_and_each_once(hosts: list[tuple[str, int]]) -> None:
    entries = [f"{host}:{port}" for host, port in hosts]
    expected = tuple(dict.fromkeys(entries))
    assert parse_etcd_endpoints(",".join(entries)) == expected
    assert parse_etcd_endpoints(entries) == expected


# --- the config file ---------------------------------------------------------------------------


def test_the_config_file_and_the_options_name_the_same_settings() -> None:
    assert set(CLUSTER_KEYS) == set(CLUSTER_OPTIONS)


def test_every_cluster_key_in_the_config_file(tmp_path: Path) -> None:
    conf = load_config(
        write_config(
            tmp_path,
            """
            broker_id = 3
            etcd_endpoints = ["e1:2379", "e2:2379"]
            cluster_name = "staging"
            advertised_listen = "b3.example:9092"
            session_timeout_ms = 8000
            replica_lag_time_max_ms = 12000
            unclean_leader_election = true
            default_replication_factor = 2
            replication_stream = false
            replication_port = 9192
            """,
        )
    )
    assert cluster_settings({}, conf, "0.0.0.0:9092") == ClusterSettings(
        broker_id=3,
        etcd_endpoints=("e1:2379", "e2:2379"),
        cluster_name="staging",
        advertised_listen="b3.example:9092",
        session_timeout_ms=8000,
        replica_lag_time_max_ms=12000,
        unclean_leader_election=True,
        default_replication_factor=2,
        replication_stream=False,
        replication_port=9192,
    )


def test_options_win_over_the_config_file(tmp_path: Path) -> None:
    conf = load_config(
        write_config(
            tmp_path,
            'broker_id = 3\netcd_endpoints = "e1:2379"\nunclean_leader_election = true\n',
        )
    )
    settings = cluster_settings({"broker_id": 5, "unclean_leader_election": False}, conf, LISTEN)
    assert settings is not None
    assert (settings.broker_id, settings.etcd_endpoints) == (5, ("e1:2379",))
    assert settings.unclean_leader_election is False


def test_half_a_cluster_in_the_file_is_refused_too(tmp_path: Path) -> None:
    conf = load_config(write_config(tmp_path, "broker_id = 3\n"))
    assert "--broker-id needs --etcd-endpoints" in refusal({}, conf)


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("broker_id = -1", ("broker_id", "0..2147483647")),
        ("broker_id = true", ("broker_id",)),
        ("broker_id = 2147483648", ("broker_id",)),
        ("etcd_endpoints = [1, 2]", ("etcd_endpoints", "HOST:PORT")),
        ("cluster_name = 7", ("cluster_name", "a string")),
        ('advertised_listen = "h:0"', ("advertised_listen", "1..65535")),
        ("session_timeout_ms = 0", ("session_timeout_ms", ">= 1")),
        ('replica_lag_time_max_ms = "30s"', ("replica_lag_time_max_ms",)),
        ('unclean_leader_election = "yes"', ("unclean_leader_election", "true or false")),
        ("default_replication_factor = 0", ("default_replication_factor",)),
        ("replication_port = 65536", ("replication_port", "0..65535")),
        ('replication_stream = "no"', ("replication_stream", "true or false")),
        ("broker_idd = 1", ("'broker_idd'", "did you mean 'broker_id'")),
    ],
)
def test_bad_cluster_keys_in_the_file_are_refused_by_name(
    tmp_path: Path, line: str, words: tuple[str, ...]
) -> None:
    with pytest.raises(click.ClickException) as refused:
        load_config(write_config(tmp_path, line + "\n"))
    for word in words:
        assert word in refused.value.format_message()


def test_cluster_knobs_are_not_broker_settings() -> None:
    """serve copies the integer broker settings of the file onto BrokerSettings by name:
    a cluster knob must not be among them."""
    from logstore.cli.serve_config import INT_SETTINGS

    assert not set(INT_SETTINGS) & set(CLUSTER_KEYS)


# --- through `logstore serve` ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--broker-id", "1"), ("--broker-id needs --etcd-endpoints",)),
        (("--etcd-endpoints", ETCD), ("--etcd-endpoints needs --broker-id",)),
        (("--broker-id", "-1", "--etcd-endpoints", ETCD), ("--broker-id", "-1")),
        (
            ("--broker-id", "0", "--etcd-endpoints", ETCD, "--listen", "0.0.0.0:0"),
            ("--advertised-listen",),
        ),
        (("--default-replication-factor", "2"), ("is a cluster setting",)),
    ],
)
def test_serve_refuses_in_one_line_before_touching_the_data_dir(
    tmp_path: Path, args: tuple[str, ...], words: tuple[str, ...]
) -> None:
    data_dir = tmp_path / "data"
    result = run_cli("serve", "--data-dir", str(data_dir), *args)
    assert result.code == 2
    assert result.err.startswith("error: ") and result.err.count("\n") == 1, result.err
    for word in words:
        assert word in result.err
    assert not data_dir.exists()


def test_serve_help_explains_cluster_mode() -> None:
    help_text = " ".join(CliRunner().invoke(main_cli, ["serve", "--help"]).stdout.split())
    for phrase in (
        "--broker-id",
        "--etcd-endpoints",
        "--advertised-listen",
        "etcd-server",
        "standalone",
        "When etcd is unreachable, brokers keep serving the partitions they lead",
        "no leadership or ISR changes until it returns",
        "a new leader from its ISR within about the session timeout",
    ):
        assert phrase in help_text, phrase
