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
from logstore.types import PartitionReassignment, TopicPartition


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
@click.option(
    "--throttle",
    type=click.IntRange(min=0),
    default=None,
    metavar="BYTES_PER_SEC",
    help="With --execute: limit the replication traffic of the replicas being added to "
    "this many bytes/s per broker (all of a broker's moving replicas together), until "
    "--verify sees the moves complete. Other replication is not limited. 0 removes a "
    "throttle; without it, a throttle already set stays as it is.",
)
@click.option(
    "--preserve-throttles",
    is_flag=True,
    help="With --verify: keep the throttle even when every reassignment in the file is done.",
)
@bootstrap_option
def reassign(
    json_file: Path,
    execute: bool,
    verify: bool,
    throttle: int | None,
    preserve_throttles: bool,
    bootstrap: str,
) -> None:
    """Give partitions new replica sets, from Kafka's reassignment JSON file.

    The file is checked completely before anything is asked of the broker: one
    entry per partition, a non-empty replica list without repeats. --execute
    prints the current assignment of those partitions on stdout (keep it: it is
    the file that undoes the move), then starts the reassignments; the new
    replicas copy the data, join the ISR, and the replicas not in the new list
    leave. --verify says for each partition whether it has completed, and exits
    non-zero while any has not; once all have, it removes the throttle.

    --throttle (as Kafka's): the new replicas copy the partition's data at most
    that fast, so the move does not starve produce and consume traffic. The
    throttle is kept in etcd and applied by every broker; run --execute again
    with the same file and another --throttle to change it while the move runs.
    A throttle lower than the rate at which records are produced to a moved
    partition means its new replicas never catch up: the reassignment does not
    complete until the throttle is raised. Run --verify until it reports the
    moves complete, which removes the throttle.

    \b
    Examples:
      echo '{"version": 1, "partitions": [
              {"topic": "orders", "partition": 0, "replicas": [2, 3, 1]}]}' > move.json
      logstore partitions reassign --reassignment-json-file move.json --execute > rollback.json
      logstore partitions reassign --reassignment-json-file move.json --execute \\
          --throttle 10000000 > rollback.json           # at most 10 MB/s per broker
      logstore partitions reassign --reassignment-json-file move.json --verify
    """
    if execute == verify:
        raise click.UsageError("give exactly one of --execute and --verify")
    if throttle is not None and not execute:
        raise click.UsageError("--throttle goes with --execute (--verify removes it)")
    if preserve_throttles and not verify:
        raise click.UsageError("--preserve-throttles goes with --verify")
    plan = read_plan(json_file)
    with open_admin(bootstrap) as admin:
        current = current_replicas(admin, plan)
        if execute:
            start(admin, plan, current, throttle)
        else:
            check(admin, plan, current, preserve_throttles)


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


def start(
    admin: Admin,
    plan: ReassignmentPlan,
    current: dict[TopicPartition, list[int]],
    throttle: int | None,
) -> None:
    ongoing = admin.list_partition_reassignments(list(plan))
    # A move already running lists its target and the leaving replicas: the assignment
    # to roll back to is the one before it, without the replicas it is adding.
    original = {
        key: [b for b in replicas if key not in ongoing or b not in ongoing[key].adding_replicas]
        for key, replicas in current.items()
    }
    if all(original.values()):
        click.echo(format_reassignment({key: original[key] for key in plan}))
        note("above: the current assignment; save it to roll back with --execute")
    else:
        note("the broker did not report the current replicas: no rollback file to print")
    running = [key for key in plan if key in ongoing and _target(ongoing[key]) == plan[key]]
    admin.alter_partition_reassignments(plan, throttle_bytes_per_s=throttle)
    if running:
        note("already being moved to these replicas: " + ",".join(f"{t}-{p}" for t, p in running))
    fresh = [key for key in plan if key not in running]
    if fresh:
        note(
            "started reassignment of "
            + ",".join(f"{t}-{p}" for t, p in fresh)
            + "; follow it with --verify"
        )
    if throttle:
        note(f"The inter-broker throttle limit was set to {throttle} B/s.")
        note(
            "Warning: run --verify until the reassignment completes: that removes the "
            "throttle, which otherwise stays on every later reassignment."
        )
    elif throttle == 0:
        note("The inter-broker throttle was removed: the moves run unthrottled.")
    else:
        rate = admin.replication_throttle()
        if rate:
            note(
                f"note: a throttle of {rate} B/s set earlier applies to these moves too "
                "(--throttle 0 removes it)"
            )


def _target(reassignment: PartitionReassignment) -> list[int]:
    """Where a running reassignment moves the partition: its replicas, less those leaving."""
    return [b for b in reassignment.replicas if b not in reassignment.removing_replicas]


def check(
    admin: Admin,
    plan: ReassignmentPlan,
    current: dict[TopicPartition, list[int]],
    preserve_throttles: bool,
) -> None:
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
    if not preserve_throttles:
        remove_throttle(admin)


def remove_throttle(admin: Admin) -> None:
    """Kafka's --verify: once the moves it names are done, the throttle goes (it is one
    for the whole cluster, so any other move still running is no longer throttled)."""
    if not admin.replication_throttle():
        return
    admin.alter_partition_reassignments({}, throttle_bytes_per_s=0)
    click.echo("Throttle was removed.")
    others = admin.list_partition_reassignments()
    if others:
        note(
            "note: reassignments still running are no longer throttled: "
            + ",".join(f"{t}-{p}" for t, p in others)
        )


def _ids(replicas: list[int]) -> str:
    return ",".join(str(r) for r in replicas) or "(none)"
