"""`logstore groups ...`: list, describe, delete consumer groups and reset their offsets."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import click

from logstore.cli.common import (
    bootstrap_option,
    fail,
    json_option,
    note,
    open_admin,
    print_json,
    print_table,
)
from logstore.patterns.monitoring import QueueDepth, group_queue_depths
from logstore.types import GroupDescription, OffsetResetEntry

DESCRIBE_COLUMNS = (
    "GROUP",
    "TOPIC",
    "PARTITION",
    "CURRENT-OFFSET",
    "LOG-END-OFFSET",
    "LAG",
    "CONSUMER-ID",
    "HOST",
    "CLIENT-ID",
)
MEMBER_COLUMNS = ("GROUP", "CONSUMER-ID", "HOST", "CLIENT-ID", "#PARTITIONS", "ASSIGNMENT")
STATE_COLUMNS = ("GROUP", "ASSIGNOR", "STATE", "#MEMBERS")
PLAN_COLUMNS = ("GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "NEW-OFFSET")


@click.group()
def groups() -> None:
    """List, describe and delete consumer groups; reset (replay) their offsets.

    \b
    Examples:
      logstore groups list
      logstore groups describe billing
      logstore groups reset-offsets billing --topic orders --to-earliest --dry-run
      logstore groups delete billing
    """


@groups.command("list")
@json_option
@bootstrap_option
def list_groups(as_json: bool, bootstrap: str) -> None:
    """List consumer groups with their state and member count.

    \b
    Examples:
      logstore groups list
      logstore groups list --json
    """
    with open_admin(bootstrap) as admin:
        listings = sorted(admin.list_groups(), key=lambda g: g.group_id)
    if as_json:
        print_json([dataclasses.asdict(g) for g in listings])
        return
    print_table(("GROUP", "STATE", "MEMBERS"), ((g.group_id, g.state, g.members) for g in listings))


@groups.command()
@click.argument("group")
@click.option("--members", is_flag=True, help="List the members and their assignments instead.")
@click.option("--state", is_flag=True, help="Show the group's state and assignor instead.")
@json_option
@bootstrap_option
def describe(group: str, members: bool, state: bool, as_json: bool, bootstrap: str) -> None:
    """Show GROUP's committed offsets, log end offsets, lag and owners, per partition.

    Columns as Kafka prints them: GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG
    CONSUMER-ID HOST CLIENT-ID; "-" where there is no value (nothing committed, no owner).

    \b
    Examples:
      logstore groups describe billing
      logstore groups describe billing --members
      logstore groups describe billing --json | jq '[.offsets[].lag] | add'
    """
    if members and state:
        raise click.UsageError("--members and --state exclude each other")
    with open_admin(bootstrap) as admin:
        description = admin.describe_group(group)
        queues = group_queue_depths(admin, description)
    if not description.members and not description.offsets:
        fail(f"consumer group {group!r} does not exist (no members, no committed offsets)")
    if as_json:
        queue_rows = [dataclasses.asdict(q) for q in queues]
        print_json({**dataclasses.asdict(description), "queues": queue_rows})
    elif members:
        print_table(MEMBER_COLUMNS, member_rows(description))
    elif state:
        d = description
        print_table(STATE_COLUMNS, [(d.group_id, d.assignor, d.state, len(d.members))])
    else:
        _print_offsets(description)
        _print_queues(queues)


def _print_offsets(description: GroupDescription) -> None:
    if not description.members:
        note(f"consumer group {description.group_id!r} has no active members")
    print_table(DESCRIBE_COLUMNS, offset_rows(description))


QUEUE_COLUMNS = ("QUEUE", "TOPIC", "SOURCE-TOPIC", "RECORDS", "BACKLOG")


def _print_queues(queues: list[QueueDepth]) -> None:
    """Under the offsets: per DLQ its depth, per retry topic its records and the group's
    backlog there (only when the group's topics have such companions)."""
    if not queues:
        return
    totals: dict[tuple[str, str, str], list[int]] = {}
    for q in queues:
        total = totals.setdefault((q.kind, q.topic, q.source_topic), [0, 0])
        total[0] += q.records
        total[1] += q.backlog
    click.echo("")
    print_table(QUEUE_COLUMNS, [(*key, *value) for key, value in sorted(totals.items())])


def offset_rows(d: GroupDescription) -> Iterable[tuple[object, ...]]:
    # a lag is only meaningful against a commit: -1 (shown "-") otherwise
    for o in sorted(d.offsets, key=lambda o: (o.topic, o.partition)):
        yield (
            d.group_id,
            o.topic,
            o.partition,
            o.committed_offset,
            o.log_end_offset,
            o.lag if o.committed_offset >= 0 else -1,
            o.member_id,
            o.host,
            o.client_id,
        )


def member_rows(d: GroupDescription) -> Iterable[tuple[object, ...]]:
    for m in sorted(d.members, key=lambda m: m.member_id):
        owned = ",".join(f"{t}-{p}" for t, p in sorted(m.assignment))
        yield (d.group_id, m.member_id, m.host, m.client_id, len(m.assignment), owned)


@groups.command()
@click.argument("group")
@bootstrap_option
def delete(group: str, bootstrap: str) -> None:
    """Delete GROUP and its committed offsets (refused while it has active members, and
    an error for a group that does not exist, as with Kafka's tool).

    \b
    Examples:
      logstore groups delete billing
    """
    with open_admin(bootstrap) as admin:
        removed = admin.delete_group(group)
    note(f"deleted group {group} ({removed} committed offset(s))")


# --- reset-offsets --------------------------------------------------------------------------


def parse_topic_spec(spec: str) -> tuple[str, list[int] | None]:
    """`T` -> (T, None: every partition); `T:0,2` -> (T, [0, 2])."""
    topic, sep, parts = spec.partition(":")
    if not topic:
        raise click.UsageError(f"--topic {spec!r}: give TOPIC or TOPIC:P[,P...]")
    if not sep:
        return topic, None
    try:
        partitions = [int(p) for p in parts.split(",")]
    except ValueError:
        raise click.UsageError(f"--topic {spec!r}: partitions must be numbers") from None
    if any(p < 0 for p in partitions):
        raise click.UsageError(f"--topic {spec!r}: partitions must be >= 0")
    return topic, partitions


def merge_topic_specs(specs: Iterable[str]) -> dict[str, list[int] | None]:
    """Repeated --topic options -> topic -> partitions (None when any names the whole topic)."""
    merged: dict[str, list[int] | None] = {}
    for spec in specs:
        topic, partitions = parse_topic_spec(spec)
        if topic in merged and (merged[topic] is None or partitions is None):
            merged[topic] = None
        else:
            merged[topic] = sorted({*(merged.get(topic) or []), *(partitions or [])})
    return merged


def _exactly_one(chosen: dict[str, object], what: str) -> None:
    given = [name for name, value in chosen.items() if value not in (None, False)]
    if len(given) != 1:
        names = " | ".join(chosen)
        found = f" (got {', '.join(given)})" if given else ""
        raise click.UsageError(f"give exactly one {what}: {names}{found}")


@groups.command("reset-offsets")
@click.argument("group")
@click.option("--topic", "topic_specs", multiple=True, metavar="T[:P[,P...]]", help="Repeatable.")
@click.option("--all-topics", is_flag=True, help="Every topic the group has committed.")
@click.option("--to-earliest", is_flag=True, help="To each partition's log start.")
@click.option("--to-latest", is_flag=True, help="To each partition's log end.")
@click.option("--to-offset", type=click.IntRange(min=0), metavar="N", help="To offset N.")
@click.option("--to-datetime", metavar="ISO8601", help="To the first record at/after this time.")
@click.option("--by-duration", metavar="PnDTnHnM", help="To the first record this long ago.")
@click.option("--shift-by", type=int, metavar="N", help="Move by N (may be negative).")
@click.option("--dry-run", is_flag=True, help="Only print the plan.")
@click.option("--execute", is_flag=True, help="Commit the plan.")
@json_option
@bootstrap_option
def reset_offsets(
    group: str,
    topic_specs: tuple[str, ...],
    all_topics: bool,
    to_earliest: bool,
    to_latest: bool,
    to_offset: int | None,
    to_datetime: str | None,
    by_duration: str | None,
    shift_by: int | None,
    dry_run: bool,
    execute: bool,
    as_json: bool,
    bootstrap: str,
) -> None:
    """Move GROUP's committed offsets to replay or skip records.

    Choose partitions with --topic (repeatable) or --all-topics, exactly one target, and
    exactly one of --dry-run (print the plan) or --execute (commit it). New offsets are
    clamped to each partition's valid range. Executing is refused while the group has
    active members. Times without a zone are UTC.

    \b
    Examples:
      logstore groups reset-offsets billing --topic orders --to-earliest --dry-run
      logstore groups reset-offsets billing --topic orders:0,1 --shift-by -100 --execute
      logstore groups reset-offsets billing --all-topics --by-duration PT1H --execute
      logstore groups reset-offsets billing --topic orders --to-datetime 2026-01-31T09:00Z --dry-run
    """
    _exactly_one({"--topic": topic_specs or None, "--all-topics": all_topics}, "scope")
    targets = {
        "--to-earliest": to_earliest,
        "--to-latest": to_latest,
        "--to-offset": to_offset,
        "--to-datetime": to_datetime,
        "--by-duration": by_duration,
        "--shift-by": shift_by,
    }
    _exactly_one(targets, "target")
    _exactly_one({"--dry-run": dry_run, "--execute": execute}, "mode")
    topics = None if all_topics else merge_topic_specs(topic_specs)
    with open_admin(bootstrap) as admin:
        plan = admin.reset_offsets(
            group,
            topics,
            to_earliest=to_earliest,
            to_latest=to_latest,
            to_offset=to_offset,
            to_datetime=to_datetime,
            by_duration=by_duration,
            shift_by=shift_by,
            dry_run=not execute,
        )
    _print_plan(group, plan, executed=execute, as_json=as_json)


def _print_plan(group: str, plan: list[OffsetResetEntry], executed: bool, as_json: bool) -> None:
    if as_json:
        entries = [dataclasses.asdict(e) for e in plan]
        print_json({"group": group, "executed": executed, "plan": entries})
        return
    rows = sorted((group, e.topic, e.partition, e.current_offset, e.new_offset) for e in plan)
    print_table(PLAN_COLUMNS, rows)
    if executed:
        note(f"reset {len(plan)} partition(s) of group {group}")
    else:
        note("dry run: nothing changed (use --execute to apply)")
