"""How full the dead letter queues and retry topics of some source topics are.

A DLQ's depth is the records it still stores (log end - log start, per partition): the
DLQ is a log, so replaying records does not remove them, only retention does. A retry
topic's backlog is what a group has not consumed yet: log end - committed offset (the
whole depth when the group committed nothing there).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from logstore.client.admin import Admin
from logstore.errors import UnknownTopicOrPartitionError
from logstore.patterns import headers as h
from logstore.types import GroupDescription, TopicPartition


@dataclass(frozen=True)
class QueueDepth:
    """One partition of a DLQ or retry topic."""

    topic: str
    #: "dlq" or "retry"
    kind: str
    #: the topic it holds records of
    source_topic: str
    partition: int
    #: records stored: log end offset - log start offset
    records: int
    #: records the group has not consumed yet (= records for a DLQ or without a commit)
    backlog: int


def group_source_topics(description: GroupDescription) -> set[str]:
    """The source topics a group reads: subscribed or committed, retry/DLQ names mapped
    back to their source."""
    names = {o.topic for o in description.offsets}
    for member in description.members:
        names.update(member.subscribed_topics)
    return {h.source_of(name) for name in names}


def companion_topics(all_topics: Iterable[str], sources: Iterable[str]) -> list[str]:
    """The existing `<source>.retry.<n>` and `<source>.dlq` topics of `sources`."""
    wanted = set(sources)
    return sorted(
        name
        for name in all_topics
        if (h.is_dlq_topic(name) or h.retry_level(name) is not None) and h.source_of(name) in wanted
    )


def queue_depths(
    admin: Admin,
    sources: Iterable[str],
    committed: Mapping[TopicPartition, int] | None = None,
) -> list[QueueDepth]:
    """Depth and backlog of every partition of the DLQ and retry topics of `sources`;
    `committed` holds a group's committed offsets (next offset to read)."""
    committed = committed or {}
    found: list[QueueDepth] = []
    for name in companion_topics(admin.list_topics(), sources):
        try:
            description = admin.describe_topic(name)
        except UnknownTopicOrPartitionError:
            continue  # deleted since list_topics()
        kind = "dlq" if h.is_dlq_topic(name) else "retry"
        for p in description.partitions:
            records = max(p.log_end_offset - p.log_start_offset, 0)
            backlog = records
            offset = committed.get((name, p.partition))
            if kind == "retry" and offset is not None:
                backlog = max(p.log_end_offset - max(offset, p.log_start_offset), 0)
            found.append(QueueDepth(name, kind, h.source_of(name), p.partition, records, backlog))
    return found


def group_queue_depths(admin: Admin, description: GroupDescription) -> list[QueueDepth]:
    """`queue_depths` for the source topics of a described group, with its commits."""
    committed = {
        (o.topic, o.partition): o.committed_offset
        for o in description.offsets
        if o.committed_offset >= 0
    }
    return queue_depths(admin, group_source_topics(description), committed)
