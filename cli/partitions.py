"""`logstore partitions reassign`: move partitions between brokers, as Kafka's
kafka-reassign-partitions does, from the same JSON file."""

from __future__ import annotations

from pathlib import Path

import click

from logstore.cli.common import bootstrap_option, fail, note, open_admin
from logstore.cli.reassignment import (
    ReassignmentFileError,
    ReassignmentPlan,
    format_reassignment,
    parse_reassignment,
)
from logstore.client.admin import Admin
from logstore.types import TopicPartition


@click.group()
def partitions() -> None:
    """Move partitions between the brokers of a cluster.

    \b
    Examples:
      logstore partitions reassign --reassignment-json-file move.json --execute
      logstore partitions reassign --reassignment-json-file move.json --verify
    """


@partitions.command()
@click.option(
    "--reassignment-json-file",
    "json_file",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help='Kafka\'s format: {"version": 1, "partitions": [{"topic": T, "partition": P, '
    '"replicas": [broker ids, preferred leader first]}, ...]}.',
)
@click.option("--execute", is_flag=True, help="Start the reassignments in the file.")
@click.option("--verify", is_flag=True, help="Report whether they have completed.")
@bootstrap_option
def reassign(json_file: Path, execute: bool, verify: bool, bootstrap: str) -> None:
    """Give partitions new replica sets, from Kafka's reassignment JSON file.

    The file is checked completely before anything is asked of the broker: one
    entry per partition, a non-empty replica list without repeats. --execute
    prints the current assignment of those partitions on stdout (keep it: it is
    the file that undoes the move), then starts the reassignments; the new
    replicas copy the data, join the ISR, and the replicas not in the new list
    leave. --verify says for each partition whether it has completed, and exits
    non-zero while any has not.

    \b
    Examples:
      echo '{"version": 1, "partitions": [
              {"topic": "orders", "partition": 0, "replicas": [2, 3, 1]}]}' > move.json
      logstore partitions reassign --reassignment-json-file move.json --execute > rollback.json
      logstore partitions reassign --reassignment-json-file move.json --verify
    """
    if execute == verify:
        raise click.UsageError("give exactly one of --execute and --verify")
    plan = read_plan(json_file)
    with open_admin(bootstrap) as admin:
        current = current_replicas(admin, plan)
        if execute:
            start(admin, plan, current)
        else:
            check(admin, plan, current)


def read_plan(path: Path) -> ReassignmentPlan:
    """The checked plan in `path`; a one-line error naming the file otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {path}: {exc}")
    try:
        return parse_reassignment(text)
    except ReassignmentFileError as exc:
        fail(f"{path}: {exc}")


def current_replicas(admin: Admin, plan: ReassignmentPlan) -> dict[TopicPartition, list[int]]:
    """The replicas each partition of `plan` has now; an unknown topic or partition fails."""
    current: dict[TopicPartition, list[int]] = {}
    for topic in dict.fromkeys(t for t, _ in plan):
        described = admin.describe_topic(topic).partitions
        for t, partition in plan:
            if t != topic:
                continue
            if partition >= len(described):
                fail(
                    f"partition {topic}-{partition} does not exist: {topic} has "
                    f"{len(described)} partition(s)"
                )
            current[(topic, partition)] = list(described[partition].replicas)
    return current


def start(admin: Admin, plan: ReassignmentPlan, current: dict[TopicPartition, list[int]]) -> None:
    if all(current.values()):
        click.echo(format_reassignment({key: current[key] for key in plan}))
        note("above: the current assignment; save it to roll back with --execute")
    else:
        note("the broker did not report the current replicas: no rollback file to print")
    admin.alter_partition_reassignments(plan)
    note(
        "started reassignment of "
        + ",".join(f"{t}-{p}" for t, p in plan)
        + "; follow it with --verify"
    )


def check(admin: Admin, plan: ReassignmentPlan, current: dict[TopicPartition, list[int]]) -> None:
    pending = [key for key, replicas in plan.items() if current[key] != replicas]
    ongoing = admin.list_partition_reassignments(pending) if pending else {}
    click.echo("Status of partition reassignment:")
    for key, replicas in plan.items():
        name = f"{key[0]}-{key[1]}"
        if key not in pending:
            click.echo(f"Reassignment of partition {name} is completed.")
        elif key in ongoing:
            click.echo(f"Reassignment of partition {name} is still in progress.")
        else:
            click.echo(
                f"There is no active reassignment of partition {name}, but replica set is "
                f"{_ids(current[key])} rather than {_ids(replicas)}."
            )
    if pending:
        fail(f"{len(pending)} of {len(plan)} partition reassignment(s) not complete")


def _ids(replicas: list[int]) -> str:
    return ",".join(str(r) for r in replicas) or "(none)"
