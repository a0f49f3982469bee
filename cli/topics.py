"""`logstore topics ...`: create, list, describe, alter and delete topics."""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from logstore.cli.common import (
    bootstrap_option,
    console,
    json_option,
    make_table,
    note,
    open_admin,
    parse_key_values,
    print_json,
)
from logstore.types import NO_LEADER, PartitionInfo, TopicDescription


@click.group()
def topics() -> None:
    """Create, list, describe, alter and delete topics.

    \b
    Examples:
      logstore topics create orders --partitions 3 --config retention.ms=604800000
      logstore topics create payments --partitions 6 --replication-factor 3 \\
          --config min.insync.replicas=2
      logstore topics list
      logstore topics describe orders --json
      logstore topics alter orders --partitions 6 --delete-config retention.ms
      logstore topics delete orders
    """


@topics.command()
@click.argument("name")
@click.option("--partitions", type=click.IntRange(min=1), default=1, show_default=True)
@click.option(
    "--replication-factor",
    type=click.IntRange(min=1),
    help="Copies of each partition, on as many brokers [default: the broker's "
    "default.replication.factor; 1 standalone].",
)
@click.option(
    "--config",
    "configs",
    multiple=True,
    metavar="KEY=VALUE",
    help="A topic setting with its Kafka name (repeatable).",
)
@click.option("--if-not-exists", is_flag=True, help="Succeed quietly when the topic exists.")
@bootstrap_option
def create(
    name: str,
    partitions: int,
    replication_factor: int | None,
    configs: tuple[str, ...],
    if_not_exists: bool,
    bootstrap: str,
) -> None:
    """Create topic NAME.

    \b
    Examples:
      logstore topics create orders --partitions 3
      logstore topics create orders --partitions 3 --replication-factor 3
      logstore topics create audit --config retention.ms=86400000 --config segment.bytes=1048576
    """
    config = parse_key_values(configs, "--config")
    with open_admin(bootstrap) as admin:
        if if_not_exists and name in admin.list_topics(include_internal=True):
            note(f"topic {name} already exists")
            return
        created = admin.create_topic(
            name, partitions=partitions, config=config, replication_factor=replication_factor
        )
    factor = replication_factor_of(created)
    copies = f", replication factor {factor}" if factor else ""
    note(f"created topic {created.name} with {len(created.partitions)} partition(s){copies}")


@topics.command("list")
@click.option("--internal", is_flag=True, help="Include internal topics (__consumer_offsets).")
@json_option
@bootstrap_option
def list_topics(internal: bool, as_json: bool, bootstrap: str) -> None:
    """List topic names, one per line.

    \b
    Examples:
      logstore topics list
      logstore topics list --internal --json
    """
    with open_admin(bootstrap) as admin:
        names = sorted(admin.list_topics(include_internal=internal))
    if as_json:
        print_json(names)
        return
    for name in names:
        click.echo(name)


@topics.command()
@click.argument("name")
@json_option
@bootstrap_option
def describe(name: str, as_json: bool, bootstrap: str) -> None:
    """Show a topic's partitions and config.

    First, as Kafka's kafka-topics --describe, one line per partition with its
    Leader (broker id; "none" while it has none), Replicas (the preferred leader
    first) and Isr (the in-sync replicas); a standalone broker is broker 0. Then
    each partition's log start/end offsets, size on disk and segments, and the
    config: settings the topic overrides are marked "topic" in the SOURCE column,
    the rest come from the broker's defaults.

    \b
    Examples:
      logstore topics describe orders
      logstore topics describe orders --json | jq '.partitions[].log_end_offset'
      logstore topics describe orders --json | jq '.partitions[] | {partition, leader, isr}'
    """
    with open_admin(bootstrap) as admin:
        description = admin.describe_topic(name)
    if as_json:
        print_json(topic_as_json(description))
        return
    print_description(description)


def topic_as_json(description: TopicDescription) -> dict[str, Any]:
    return {
        "name": description.name,
        "topic_id": description.topic_id,
        "internal": description.internal,
        "partitions": [dataclasses.asdict(p) for p in description.partitions],
        "config": dict(sorted(description.config.items())),
        "config_overrides": dict(sorted(description.config_overrides.items())),
    }


def replication_factor_of(description: TopicDescription) -> int:
    """How many copies each partition has (0 when the broker did not say)."""
    return max((len(p.replicas) for p in description.partitions), default=0)


def broker_list(ids: list[int]) -> str:
    """Kafka's way to print broker ids: "1,2,3" ("-" for none)."""
    return ",".join(str(i) for i in ids) or "-"


def leadership_line(topic: str, p: PartitionInfo) -> str:
    """One partition as kafka-topics --describe prints it (tab-separated)."""
    leader = "none" if p.leader == NO_LEADER else str(p.leader)
    return (
        f"\tTopic: {topic}\tPartition: {p.partition}\tLeader: {leader}"
        f"\tReplicas: {broker_list(p.replicas)}\tIsr: {broker_list(p.isr)}"
    )


def print_description(description: TopicDescription) -> None:
    out = console()
    out.print(
        f"Topic: {description.name}  TopicId: {description.topic_id or '-'}  "
        f"PartitionCount: {len(description.partitions)}  "
        f"ReplicationFactor: {replication_factor_of(description) or '-'}"
        + ("  Internal: true" if description.internal else ""),
        markup=False,
    )
    for p in description.partitions:
        # click, not rich: rich would turn Kafka's tabs into spaces
        click.echo(leadership_line(description.name, p))
    out.print()
    out.print(
        make_table(
            ["PARTITION", "LOG-START-OFFSET", "LOG-END-OFFSET", "SIZE-BYTES", "SEGMENTS"],
            (
                (p.partition, p.log_start_offset, p.log_end_offset, p.size_bytes, p.segment_count)
                for p in description.partitions
            ),
        )
    )
    out.print()
    overrides = description.config_overrides
    merged = {**description.config, **overrides}
    out.print(
        make_table(
            ["CONFIG", "VALUE", "SOURCE"],
            ((k, merged[k], "topic" if k in overrides else "default") for k in sorted(merged)),
        )
    )


@topics.command()
@click.argument("name")
@click.option("--partitions", type=click.IntRange(min=1), help="New total (only grows).")
@click.option("--config", "configs", multiple=True, metavar="KEY=VALUE", help="Set (repeatable).")
@click.option(
    "--delete-config",
    "deletes",
    multiple=True,
    metavar="KEY",
    help="Drop an override, back to the broker default (repeatable).",
)
@bootstrap_option
def alter(
    name: str,
    partitions: int | None,
    configs: tuple[str, ...],
    deletes: tuple[str, ...],
    bootstrap: str,
) -> None:
    """Add partitions to topic NAME or change its settings.

    \b
    Examples:
      logstore topics alter orders --partitions 6
      logstore topics alter orders --config retention.ms=3600000 --delete-config segment.bytes
    """
    config = parse_key_values(configs, "--config")
    if partitions is None and not config and not deletes:
        raise click.UsageError("nothing to change: give --partitions, --config or --delete-config")
    with open_admin(bootstrap) as admin:
        if config or deletes:
            admin.alter_topic_config(name, set=config, delete=deletes)
        if partitions is not None:
            admin.add_partitions(name, partitions)
        description = admin.describe_topic(name)
    changes = [f"{len(description.partitions)} partition(s)"]
    changes += [f"{k}={v}" for k, v in config.items()]
    changes += [f"{k} reset to default" for k in deletes]
    note(f"altered topic {name}: " + ", ".join(changes))


@topics.command()
@click.argument("name")
@bootstrap_option
def delete(name: str, bootstrap: str) -> None:
    """Delete topic NAME and all its data.

    \b
    Examples:
      logstore topics delete orders
    """
    with open_admin(bootstrap) as admin:
        admin.delete_topic(name)
    note(f"deleted topic {name}")
