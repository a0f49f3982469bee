"""`logstore cluster describe`: the cluster id, controller, live brokers and etcd's health."""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from logstore.cli.common import (
    bootstrap_option,
    console,
    json_option,
    make_table,
    open_admin,
    print_json,
)
from logstore.types import ClusterDescription

#: what a standalone broker reports instead of a cluster
STANDALONE = "standalone broker (no cluster)"


@click.group()
def cluster() -> None:
    """Describe the cluster the brokers form.

    In cluster mode (logstore serve --broker-id N --etcd-endpoints ...) etcd
    holds the cluster's metadata: the live brokers, the controller and every
    partition's replicas, leader and ISR. Any live broker answers for the whole
    cluster, so --bootstrap-server may list several (comma-separated).

    \b
    Examples:
      logstore cluster describe
      logstore cluster describe --bootstrap-server 127.0.0.1:9092,127.0.0.1:9093 --json
    """


@cluster.command()
@json_option
@bootstrap_option
def describe(as_json: bool, bootstrap: str) -> None:
    """Show the cluster id, the controller, the live brokers (id, HOST:PORT) and how
    the answering broker sees etcd (its endpoints, healthy or not, and a status line).

    A standalone broker says "standalone broker (no cluster)" and lists itself.

    \b
    Examples:
      logstore cluster describe
      logstore cluster describe --json | jq '.brokers[].broker_id'
    """
    with open_admin(bootstrap) as admin:
        description = admin.describe_cluster()
    if as_json:
        print_json(cluster_as_json(description))
        return
    print_cluster(description)


def cluster_as_json(description: ClusterDescription) -> dict[str, Any]:
    return {
        **dataclasses.asdict(description),
        "brokers": [
            {"broker_id": b.broker_id, "host": b.host, "port": b.port, "address": b.address}
            for b in description.brokers
        ],
    }


def print_cluster(description: ClusterDescription) -> None:
    out = console()
    if not description.cluster_mode:
        out.print(STANDALONE, markup=False)
    out.print(
        f"ClusterId: {description.cluster_id or '-'}  "
        f"Controller: {_broker_id(description.controller)}  "
        f"AnsweredBy: {description.broker_id}",
        markup=False,
    )
    out.print()
    out.print(
        make_table(
            ["BROKER-ID", "ADDRESS", "CONTROLLER"],
            (
                (b.broker_id, b.address, "yes" if b.broker_id == description.controller else "")
                for b in description.brokers
            ),
        )
    )
    if description.cluster_mode:
        out.print()
        health = "healthy" if description.etcd_healthy else "UNREACHABLE"
        out.print(
            f"etcd: {','.join(description.etcd_endpoints) or '-'}  {health}"
            + (f"  ({description.etcd_status})" if description.etcd_status else ""),
            markup=False,
        )


def _broker_id(broker_id: int) -> str:
    return "none" if broker_id < 0 else str(broker_id)
