"""Assigned partitions the broker does not know, told to the progress monitor.

Fetches and offset lookups mark a partition missing when the broker says its topic or the
partition does not exist (`FetchPositions.missing`). To tell a topic that does not exist
from a partition a topic does not have, the missing partitions' topics are described
(DescribeTopic at the home broker) when the set of missing partitions changes, and every
metadata_max_age_ms while it lasts; the answer goes to the `ProgressMonitor` as
`set_missing("assigned", topics, partitions)`.

Invariants: the application thread alone reports, holding no lock while answers are
awaited; the topics reported missing and the topics of the partitions reported missing
never overlap. A topic that could not be asked about keeps what the previous answer said
(unknown at first: missing). Times are monotonic seconds.
"""

from __future__ import annotations

import logging
import time

from logstore import errors
from logstore.client.consumer.broker_calls import BrokerCalls
from logstore.client.consumer.fetcher import SharedFetchState
from logstore.client.consumer.options import ConsumerOptions
from logstore.client.consumer.progress import ProgressMonitor
from logstore.types import TopicPartition
from logstore.v1 import logstore_pb2 as pb

log = logging.getLogger("logstore.client.consumer")


class MissingPartitions:
    """Reports which assigned partitions the broker does not know: whole topics, or
    partitions of topics it knows."""

    def __init__(
        self,
        shared: SharedFetchState,
        options: ConsumerOptions,
        calls: BrokerCalls,
        progress: ProgressMonitor,
    ) -> None:
        self._shared = shared
        self._options = options
        self._calls = calls
        self._progress = progress
        #: the assigned partitions last reported missing to the progress monitor
        self._reported: frozenset[TopicPartition] = frozenset()
        #: topics the broker last described (so their missing partitions are partitions)
        self._described: frozenset[str] = frozenset()
        #: when the missing partitions' topics are next described (monotonic s)
        self._describe_at = 0.0

    def check(self) -> None:
        """`report()` if partitions are missing or were when last reported (so that their
        return is reported too); cheap otherwise, as poll() calls it every round."""
        if self._shared.positions.missing or self._reported:
            self.report()

    def report(self) -> None:
        """Tell the progress monitor which assigned partitions the broker does not know:
        whole topics, or partitions of topics it knows. Describes their topics when the set
        changes and every metadata_max_age_ms while it lasts; caller holds no lock (the
        answers are awaited)."""
        with self._shared.lock:
            missing = frozenset(self._shared.positions.missing)
        now = time.monotonic()
        if missing == self._reported and (not missing or now < self._describe_at):
            return
        self._described = self._existing_topics({topic for topic, _ in missing})
        self._describe_at = now + self._options.metadata_max_age_ms / 1000
        self._reported = missing
        self._progress.set_missing(
            "assigned",
            frozenset(topic for topic, _ in missing if topic not in self._described),
            frozenset(tp for tp in missing if tp[0] in self._described),
        )

    def _existing_topics(self, topics: set[str]) -> frozenset[str]:
        """Which of `topics` the broker knows (DescribeTopic each). A topic it could not
        be asked about keeps what the previous answer said (unknown at first: missing)."""
        existing: set[str] = set()
        ordered = sorted(topics)
        for i, topic in enumerate(ordered):
            try:
                self._calls.call("DescribeTopic", pb.DescribeTopicRequest(name=topic))
            except errors.UnknownTopicOrPartitionError:
                continue
            except errors.BrokerUnavailableError as exc:
                # the others would wait for the same unreachable broker
                log.debug("describing topic %s failed: %s", topic, exc)
                existing.update(t for t in ordered[i:] if t in self._described)
                break
            except errors.LogStoreError as exc:
                log.debug("describing topic %s failed: %s", topic, exc)
                if topic in self._described:
                    existing.add(topic)
                continue
            existing.add(topic)
        return frozenset(existing)
