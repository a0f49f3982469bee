"""The `logstore` command line."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from logstore import __version__
from logstore.cli.acls import security_settings, serve_security_options
from logstore.cli.common import LogStoreGroup, check_listen
from logstore.cli.serve_cluster import (
    CLUSTER_MODE_HELP,
    CLUSTER_SECURITY_HELP,
    cluster_settings,
    given_cluster_options,
    serve_cluster_options,
)
from logstore.cli.serve_kafka import given_kafka_options, kafka_settings, serve_kafka_options
from logstore.errors import LogStoreError

#: command -> "module:attribute", imported only when that command runs (or --help lists
#: them): a client command does not load the broker's storage code, numpy among it, nor
#: the other commands
LAZY_COMMANDS = {
    "acls": "logstore.cli.acls:acls",
    "bench": "logstore.cli.bench:bench",
    "cluster": "logstore.cli.cluster:cluster",
    "consume": "logstore.cli.consume:consume",
    "dev-cluster": "logstore.cli.dev_cluster:dev_cluster",
    "dlq": "logstore.cli.dlq:dlq",
    "dump-log": "logstore.cli.dump_log:dump_log",
    "groups": "logstore.cli.groups:groups",
    "partitions": "logstore.cli.partitions:partitions",
    "produce": "logstore.cli.produce:produce",
    "topics": "logstore.cli.topics:topics",
}


@click.group(
    cls=LogStoreGroup,
    lazy_commands=LAZY_COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="logstore")
@click.option(
    "--debug",
    is_flag=True,
    envvar="LOGSTORE_DEBUG",
    help="Show the full traceback when a command fails. Env: LOGSTORE_DEBUG.",
)
def cli(debug: bool) -> None:
    """LogStore: a Kafka-style partitioned log store.

    Client commands reach the broker at --bootstrap-server HOST:PORT (env
    LOGSTORE_BOOTSTRAP, default 127.0.0.1:9092), or any live broker of a
    cluster's comma-separated list. On failure they print one line starting
    with "error:" on stderr and exit non-zero.

    \b
    Examples:
      logstore serve --data-dir /var/lib/logstore
      logstore topics create orders --partitions 3
      printf 'u1:hello\\nu2:world\\n' | logstore produce orders --key-separator :
      logstore consume orders --from-beginning --print-key --max-messages 2
      logstore groups describe billing
      logstore dump-log /var/lib/logstore/orders-0/00000000000000000000.log
      logstore dev-cluster --brokers 3      # a local etcd and 3 brokers
      logstore cluster describe --bootstrap-server 127.0.0.1:9092,127.0.0.1:9093
    """


#: the levels --log-level accepts (Python's logging levels), in any case
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
#: other names Python's logging takes for a level (logging.WARN is WARNING), so scripts
#: written when --log-level was passed to logging as given keep working
LOG_LEVEL_ALIASES = {"warn": "warning"}


class LogLevel(click.Choice[str]):
    """One of `LOG_LEVELS`, any case, or an alias of one; converts to the level's name."""

    name = "log level"

    def __init__(self) -> None:
        super().__init__(LOG_LEVELS, case_sensitive=False)

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> str:
        if isinstance(value, str):
            value = LOG_LEVEL_ALIASES.get(value.lower(), value)
        return super().convert(value, param, ctx)


SERVE_HELP = (
    """Run the broker in the foreground until Ctrl-C or SIGTERM (SIGHUP re-reads the
token and TLS files, the inter-broker ones included).

Every option can also come from its environment variable (named in each option's
help); XDG_DATA_HOME places the default data dir, and LOGSTORE_MALLOC_DEFAULTS=1
keeps glibc's malloc settings.

\b
Examples:
  logstore serve
  logstore serve --data-dir /var/lib/logstore --listen 0.0.0.0:9092
  LOGSTORE_LISTEN=127.0.0.1:9093 logstore serve
  logstore serve --config broker.toml
  logstore serve --kafka-listen 127.0.0.1:9094
  logstore serve --tls-cert broker.pem --tls-key broker.key --auth-tokens tokens.toml \\
      --acls-enabled --super-users User:admin
  logstore serve --broker-id 1 --etcd-endpoints 10.0.0.5:2379 \\
      --listen 0.0.0.0:9092 --advertised-listen broker1.example.com:9092
  logstore serve --broker-id 1 --etcd-endpoints 10.0.0.5:2379 \\
      --advertised-listen broker1.example.com:9092 --listen 0.0.0.0:9092 \\
      --tls-cert broker1.pem --tls-key broker1.key --tls-client-ca ca.pem \\
      --auth-tokens tokens.toml --inter-broker-token-file broker.token \\
      --acls-enabled --super-users User:admin,User:broker

"""
    + CLUSTER_MODE_HELP
    + "\n\n"
    + CLUSTER_SECURITY_HELP
)


@cli.command(help=SERVE_HELP)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    envvar="LOGSTORE_DATA_DIR",
    help="Where topics live [default: $XDG_DATA_HOME/logstore]. Env: LOGSTORE_DATA_DIR.",
)
@click.option(
    "--listen",
    envvar="LOGSTORE_LISTEN",
    metavar="HOST:PORT",
    callback=check_listen,
    help="Where to serve gRPC [default: 127.0.0.1:9092; port 0 picks a free one]. "
    "Env: LOGSTORE_LISTEN.",
)
@click.option(
    "--metrics-listen",
    envvar="LOGSTORE_METRICS_LISTEN",
    metavar="HOST:PORT",
    callback=check_listen,
    help="Where to serve Prometheus /metrics [default: off]. Env: LOGSTORE_METRICS_LISTEN.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, exists=True),
    envvar="LOGSTORE_CONFIG",
    help="TOML file: data_dir, listen, metrics_listen, max_workers, max_request_bytes, "
    "max_fetch_bytes, max_concurrent_rpcs, offsets_retention_minutes, [topic-defaults] "
    "(Kafka topic settings), [log-manager] (retention_check_interval_ms...), tls_cert, "
    'tls_key, tls_client_ca, auth_tokens, authorizer = "acl", super_users, '
    "inter_broker_tls_ca, inter_broker_token_file, and the cluster "
    "options by their names with underscores (broker_id, etcd_endpoints, cluster_name, "
    "advertised_listen, session_timeout_ms, replica_lag_time_max_ms, "
    "unclean_leader_election, default_replication_factor, replication_stream, "
    "replication_port), and the Kafka listener's (kafka_listen, kafka_advertised_listen, "
    "auto_create_topics_enable, num_partitions, group_initial_rebalance_delay_ms, "
    "group_min_session_timeout_ms, group_max_session_timeout_ms, kafka_max_connections, "
    "kafka_max_connections_per_ip, kafka_connections_max_idle_ms). Options given on the command "
    "line win. Env: LOGSTORE_CONFIG.",
)
@click.option(
    "--log-level",
    type=LogLevel(),
    default="info",
    show_default=True,
    envvar="LOGSTORE_LOG_LEVEL",
    help="Any case; warn is warning. Env: LOGSTORE_LOG_LEVEL.",
)
@serve_security_options
@serve_cluster_options
@serve_kafka_options
def serve(
    data_dir: str | None,
    listen: str | None,
    metrics_listen: str | None,
    config_file: str | None,
    log_level: str,
) -> None:
    """Run the broker in the foreground; `SERVE_HELP` is what --help says."""
    from logstore.cli.serve_config import INT_SETTINGS, load_config, manager_settings
    from logstore.server.app import DEFAULT_LISTEN, BrokerSettings, run

    file_conf = load_config(config_file)
    chosen_listen = listen or file_conf.get("listen") or DEFAULT_LISTEN
    # Checked before anything is logged or opened: a broker that cannot run says so in one line.
    cluster = cluster_settings(given_cluster_options(), file_conf, chosen_listen)
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    kafka = kafka_settings(given_kafka_options(), file_conf, cluster is not None)
    settings = BrokerSettings(listen=chosen_listen, cluster=cluster, kafka=kafka)
    chosen_dir = data_dir or file_conf.get("data_dir")
    if chosen_dir:
        settings.data_dir = Path(os.path.expanduser(chosen_dir))
    for key in INT_SETTINGS:
        if key in file_conf:
            setattr(settings, key, file_conf[key])
    settings.topic_defaults = {k: str(v) for k, v in file_conf.get("topic-defaults", {}).items()}
    settings.manager = manager_settings(file_conf.get("log-manager", {}))
    settings.metrics_listen = metrics_listen or file_conf.get("metrics_listen")
    settings.security = security_settings(file_conf)
    try:
        code = run(settings)
    except (LogStoreError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(code)


def main() -> None:
    """Console-script entry point."""
    cli()


if __name__ == "__main__":
    main()
