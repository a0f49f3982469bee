"""The log manager: every topic and partition under one data directory.

Layout of the data directory::

    <data-dir>/
        __topics/<topic>.json            name, partition count, config overrides (JSON)
        <topic>-<partition>/             one partition log (segments, indexes, snapshots)
        <topic>-<partition>.<id>-delete/ a partition of a deleted topic, being removed
        recovery-point-offset-checkpoint Kafka's text format: everything below is fsynced
        replication-offset-checkpoint    the same format: each replicated partition's high
                                         watermark (cluster mode only)
        .logstore_cleanshutdown          present only between a clean shutdown and a start

Invariants:
- A topic exists exactly when its metadata file exists; metadata files are replaced
  atomically (write temp, fsync, rename, fsync the directory).
- Topic names pass `validate_topic_name`, so `<data-dir>/<topic>-<n>` never escapes the
  data directory.
- The clean-shutdown marker is removed before anything is written, so a crash at any later
  point makes the next start recover.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from logstore.clock import SYSTEM_CLOCK, Clock
from logstore.codec import format as fmt
from logstore.errors import (
    InvalidPartitionsError,
    LogClosedError,
    LogStoreError,
    StorageError,
    TopicExistsError,
    UnknownTopicOrPartitionError,
)
from logstore.storage import log_cleaner
from logstore.storage.fileutil import fsync_directory, write_file_atomically
from logstore.storage.log_config import (
    LogConfig,
    config_field_for,
    validate_partition_count,
    validate_topic_name,
)
from logstore.storage.notify import AppendNotifier
from logstore.storage.partition_log import PartitionLog

log = logging.getLogger(__name__)

#: Kafka's name: high watermarks of replicated partitions, in the checkpoint text format
REPLICATION_OFFSET_CHECKPOINT_FILE = "replication-offset-checkpoint"
_DELETE_DIR_SUFFIX = "-delete"
_METADATA_VERSION = 1


@dataclass
class Topic:
    """A topic's metadata and its open partition logs."""

    name: str
    topic_id: str
    config_overrides: dict[str, str]
    config: LogConfig
    partitions: list[PartitionLog] = field(default_factory=list)


@dataclass(frozen=True)
class ManagerSettings:
    """Broker-wide timings (ms), with Kafka's names in the comments."""

    retention_check_interval_ms: int = 300_000  # log.retention.check.interval.ms
    flush_check_interval_ms: int = 1_000  # log.flush.scheduler.interval.ms (Kafka: never)
    recovery_point_checkpoint_interval_ms: int = 60_000  # log.flush.offset.checkpoint...
    producer_id_expiration_ms: int = 86_400_000  # producer.id.expiration.ms
    cleaner_backoff_ms: int = 15_000  # log.cleaner.backoff.ms: between compaction passes
    background_threads: bool = True


def parse_partition_dir(name: str) -> tuple[str, int] | None:
    """`orders-3` -> ("orders", 3); None for names that are not partition directories."""
    topic, sep, number = name.rpartition("-")
    if not sep or not topic or not (number.isascii() and number.isdigit()):
        return None
    return topic, int(number)


class LogManager:
    """Opens, creates and deletes partition logs under `data_dir`; runs background tasks."""

    def __init__(
        self,
        data_dir: Path | str,
        *,
        default_config: LogConfig | None = None,
        settings: ManagerSettings | None = None,
        clock: Clock = SYSTEM_CLOCK,
        replicated: bool = False,
    ) -> None:
        """Open every topic under `data_dir`. `replicated` (cluster mode) opens and creates
        every partition, internal topics too, as a replicated log: a stored high
        watermark, kept across restarts in replication-offset-checkpoint."""
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.metadata_dir = self.data_dir / fmt.TOPIC_METADATA_DIR
        self.metadata_dir.mkdir(exist_ok=True)
        self.default_config = default_config or LogConfig()
        self.settings = settings or ManagerSettings()
        self._clock = clock
        self.replicated = replicated
        self._lock = threading.RLock()
        self._topics: dict[str, Topic] = {}
        self._closed = False
        #: rises on every append to any partition; long-polling fetches wait on it
        self.appends = AppendNotifier()
        marker = self.data_dir / fmt.CLEAN_SHUTDOWN_FILE
        self.clean_shutdown = marker.exists()
        #: whether existing partitions were opened without a clean-shutdown marker (a new
        #: data dir has no marker either, but nothing to recover)
        self.recovered_after_unclean_shutdown = False
        marker.unlink(missing_ok=True)
        fsync_directory(self.data_dir)
        self._remove_deleted_topic_dirs()
        self._load_topics()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        if self.settings.background_threads:
            # Compaction has its own thread, as Kafka's cleaner does: a long pass must not
            # hold up time-based flushes and retention.
            for target, name in (
                (self._background_loop, "logstore-log-manager"),
                (self._cleaner_loop, "logstore-log-cleaner"),
            ):
                thread = threading.Thread(target=target, name=name, daemon=True)
                thread.start()
                self._threads.append(thread)

    # --- loading -----------------------------------------------------------------------------

    def _remove_deleted_topic_dirs(self) -> None:
        for path in self.data_dir.iterdir():
            if path.is_dir() and path.name.endswith(_DELETE_DIR_SUFFIX):
                log.info("removing leftover of a deleted topic: %s", path.name)
                shutil.rmtree(path, ignore_errors=True)

    def _read_recovery_points(self) -> dict[tuple[str, int], int]:
        return self._read_checkpoint(fmt.RECOVERY_POINT_CHECKPOINT_FILE, "recovering every segment")

    def _read_checkpoint(self, name: str, fallback: str) -> dict[tuple[str, int], int]:
        """(topic, partition) -> offset from a file in Kafka's checkpoint text format; empty
        (with a warning naming `fallback`, what that means) when it is malformed."""
        path = self.data_dir / name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return {}
        points: dict[tuple[str, int], int] = {}
        try:
            lines = data.decode("utf-8").splitlines()
            if lines[0].strip() != "0" or int(lines[1]) != len(lines) - 2:
                raise ValueError("bad header")
            for line in lines[2:]:
                topic, partition, offset = line.split()
                points[(topic, int(partition))] = int(offset)
        except (ValueError, IndexError):
            log.warning("%s is malformed; %s", path, fallback)
            return {}
        return points

    def _load_topics(self) -> None:
        recovery_points = self._read_recovery_points()
        high_watermarks: dict[tuple[str, int], int] = {}
        if self.replicated:
            high_watermarks = self._read_checkpoint(
                REPLICATION_OFFSET_CHECKPOINT_FILE,
                "high watermarks start at each log's start offset",
            )
        known_dirs: set[str] = set()
        for meta_path in sorted(self.metadata_dir.glob("*.json")):
            meta = self._read_metadata(meta_path)
            name = meta["name"]
            config = self.default_config.with_overrides(meta.get("config", {}))
            topic = Topic(name, meta.get("topic_id", ""), dict(meta.get("config", {})), config)
            for p in range(int(meta["partitions"])):
                known_dirs.add(f"{name}-{p}")
                topic.partitions.append(
                    self._open_partition(
                        name,
                        p,
                        config,
                        recovery_points.get((name, p), 0),
                        high_watermark=high_watermarks.get((name, p)),
                    )
                )
            self._topics[name] = topic
        self._log_recovery([p for t in self._topics.values() for p in t.partitions])
        self._apply_cleaner_checkpoints()
        for path in self.data_dir.iterdir():
            if path.is_dir() and parse_partition_dir(path.name) and path.name not in known_dirs:
                log.warning("ignoring %s: no topic metadata names it", path.name)

    @staticmethod
    def _read_metadata(path: Path) -> dict[str, Any]:
        """Parse one topic metadata file; refuse to start on one that makes no sense, rather
        than silently dropping a topic and its data."""
        try:
            meta = json.loads(path.read_text())
            validate_topic_name(meta["name"])
            if meta["name"] != path.stem or int(meta["partitions"]) < 1:
                raise ValueError("name or partition count disagrees with the file")
        except (OSError, ValueError, KeyError, TypeError, LogStoreError) as exc:
            raise StorageError(f"topic metadata {path} is unreadable: {exc}") from exc
        return meta

    def _open_partition(
        self,
        topic: str,
        partition: int,
        config: LogConfig,
        recovery_point: int,
        *,
        new: bool = False,
        high_watermark: int | None = None,
    ) -> PartitionLog:
        """Open a partition's log; a `new` one starts from an empty directory. A replicated
        one starts at its checkpointed `high_watermark` (None: its log start offset)."""
        directory = self.data_dir / f"{topic}-{partition}"
        if new and directory.exists():
            # Left by a topic deleted in a crash (its metadata went first): not ours.
            log.warning("removing %s left over from a deleted topic", directory.name)
            self._remove_directory(directory)
        part = PartitionLog(
            directory,
            config,
            name=f"{topic}-{partition}",
            clock=self._clock,
            recovery_point=recovery_point,
            clean_shutdown=self.clean_shutdown or new,
            replicated=self.replicated,
            high_watermark=high_watermark,
        )
        part.on_append = self.appends.notify
        repairs = part.recovery_report.repairs()
        if repairs:
            log.warning("%s: recovery %s", part.name, ", ".join(repairs))
        return part

    def _log_recovery(self, partitions: list[PartitionLog]) -> None:
        """One line for a start after an unclean shutdown: how many partitions recovered,
        how many needed repair and how many bytes of torn tail were dropped. Nothing after
        a clean shutdown or for a new data dir (it has no partitions yet)."""
        reports = [p.recovery_report for p in partitions if p.recovery_report.recovered]
        self.recovered_after_unclean_shutdown = bool(reports)
        if not reports:
            return
        repaired = sum(1 for r in reports if r.repairs())
        dropped = sum(r.truncated_bytes for r in reports)
        log.warning(
            "recovered %d partition%s after an unclean shutdown: %d repaired, "
            "%d bytes of torn tail dropped",
            len(reports),
            "" if len(reports) == 1 else "s",
            repaired,
            dropped,
        )

    # --- topics ------------------------------------------------------------------------------

    def _write_metadata(self, topic: Topic) -> None:
        meta = {
            "version": _METADATA_VERSION,
            "name": topic.name,
            "topic_id": topic.topic_id,
            "partitions": len(topic.partitions),
            "config": topic.config_overrides,
        }
        data = json.dumps(meta, indent=2, sort_keys=True).encode()
        write_file_atomically(self.metadata_dir / f"{topic.name}.json", data)

    def create_topic(
        self,
        name: str,
        partitions: int,
        config: Mapping[str, str | int] | None = None,
        *,
        topic_id: str | None = None,
    ) -> Topic:
        """Create a topic with `partitions` empty partitions and validated config overrides.

        `topic_id` names it as the cluster's controller did, so every broker holding a
        replica agrees; None makes a new random id (a single broker).
        """
        if topic_id is not None and not topic_id:
            raise ValueError("a topic id is a non-empty string")
        validate_topic_name(name)
        validate_partition_count(partitions)
        overrides = {k: str(v) for k, v in (config or {}).items()}
        log_config = self.default_config.with_overrides(overrides)
        with self._lock:
            self._check_open()
            if name in self._topics:
                raise TopicExistsError(f"topic {name!r} already exists")
            topic = Topic(name, topic_id or uuid.uuid4().hex, overrides, log_config)
            self._open_new_partitions(topic, range(partitions))
            self._write_metadata(topic)
            self._topics[name] = topic
        log.info("created topic %s with %d partitions", name, partitions)
        return topic

    def delete_topic(self, name: str) -> None:
        """Delete a topic: its metadata first (atomic), then its partition directories."""
        with self._lock:
            self._check_open()
            topic = self.topic(name)
            del self._topics[name]
            (self.metadata_dir / f"{name}.json").unlink()
            fsync_directory(self.metadata_dir)
            for part in topic.partitions:
                self._delete_partition(part)
            if any(p.cleaner_checkpoint > 0 for p in topic.partitions):
                self.checkpoint_cleaner_offsets()  # a new topic of that name starts unclean
            if self.replicated:
                self.checkpoint_high_watermarks()  # nor inherits a high watermark
        log.info("deleted topic %s", name)

    def _delete_partition(self, part: PartitionLog) -> None:
        part.close_for_delete()
        self._remove_directory(part.directory)

    def _remove_directory(self, directory: Path) -> None:
        """Rename to `...-delete`, then remove: a crash in between leaves a directory the
        next start removes, never a half-deleted partition that looks alive."""
        suffix = f".{uuid.uuid4().hex}{_DELETE_DIR_SUFFIX}"
        # Like Kafka, shorten the topic part so the name fits the 255-byte limit.
        target = directory.with_name(directory.name[: 255 - len(suffix)] + suffix)
        os.replace(directory, target)
        fsync_directory(self.data_dir)
        shutil.rmtree(target, ignore_errors=True)

    def add_partitions(self, name: str, total: int) -> Topic:
        """Grow a topic to `total` partitions (Kafka never shrinks a topic)."""
        with self._lock:
            self._check_open()
            topic = self.topic(name)
            current = len(topic.partitions)
            validate_partition_count(total)
            if total <= current:
                raise InvalidPartitionsError(
                    f"topic {name!r} has {current} partitions; the new count must be larger"
                )
            self._open_new_partitions(topic, range(current, total))
            self._write_metadata(topic)
        return topic

    def _open_new_partitions(self, topic: Topic, numbers: range) -> None:
        """Create empty partitions and make their directories durable; on any failure
        (e.g. too many open files) remove the ones this call made, leaving no trace."""
        opened: list[PartitionLog] = []
        try:
            for p in numbers:
                opened.append(self._open_partition(topic.name, p, topic.config, 0, new=True))
                fsync_directory(opened[-1].directory)
            fsync_directory(self.data_dir)
        except BaseException:
            for part in opened:
                part.release_files()  # nobody has seen these yet
            made = {part.directory for part in opened}
            made.update(self.data_dir / f"{topic.name}-{p}" for p in numbers)
            for directory in made:
                if directory.exists():
                    self._remove_directory(directory)
            raise
        topic.partitions.extend(opened)

    def alter_config(self, name: str, changes: Mapping[str, str | int | None]) -> Topic:
        """Set (or, with None, reset to the default) topic config keys; applies at once."""
        with self._lock:
            self._check_open()
            topic = self.topic(name)
            overrides = dict(topic.config_overrides)
            for key, value in changes.items():
                config_field_for(key)  # an unknown key is an error even when resetting
                if value is None:
                    overrides.pop(key, None)
                else:
                    overrides[key] = str(value)
            new_config = self.default_config.with_overrides(overrides)
            topic.config_overrides = overrides
            topic.config = new_config
            for part in topic.partitions:
                part.config = new_config
            self._write_metadata(topic)
        return topic

    def topic(self, name: str) -> Topic:
        try:
            return self._topics[name]
        except KeyError:
            raise UnknownTopicOrPartitionError(f"topic {name!r} does not exist") from None

    def topic_names(self) -> list[str]:
        return sorted(self._topics)

    def partition(self, topic: str, partition: int) -> PartitionLog:
        """The log of one partition; UnknownTopicOrPartitionError names the valid range."""
        t = self.topic(topic)
        if not 0 <= partition < len(t.partitions):
            raise UnknownTopicOrPartitionError(
                f"partition {partition} of topic {topic!r} does not exist: "
                f"valid 0..{len(t.partitions) - 1}"
            )
        return t.partitions[partition]

    def all_partitions(self) -> list[PartitionLog]:
        with self._lock:
            return [p for t in self._topics.values() for p in t.partitions]

    # --- background work ---------------------------------------------------------------------

    def run_retention(self) -> int:
        """Apply retention to every partition once; return segments deleted."""
        deleted = 0
        for part in self.all_partitions():
            deleted += part.delete_old_segments()
        return deleted

    def flush_by_time(self) -> None:
        for part in self.all_partitions():
            part.maybe_flush_by_time()
            part.close_deleted_segments()

    def expire_producers(self) -> None:
        now = self._clock.now_ms()
        for part in self.all_partitions():
            part.expire_producers(now, self.settings.producer_id_expiration_ms)

    def checkpoint_recovery_points(self) -> None:
        """Write every partition's recovery point in Kafka's checkpoint text format."""
        with self._lock:
            entries = [
                (t.name, i, p.recovery_point)
                for t in self._topics.values()
                for i, p in enumerate(t.partitions)
            ]
        self._write_checkpoint(fmt.RECOVERY_POINT_CHECKPOINT_FILE, entries)

    def checkpoint_high_watermarks(self) -> None:
        """Write every replicated partition's high watermark to replication-offset-checkpoint
        (Kafka's text format), so a restart does not start them at the log start. Called
        at a clean close and periodically by the broker; a no-op when not replicated."""
        if not self.replicated:
            return
        with self._lock:
            entries = [
                (t.name, i, p.high_watermark)
                for t in self._topics.values()
                for i, p in enumerate(t.partitions)
                if p.replicated
            ]
        self._write_checkpoint(REPLICATION_OFFSET_CHECKPOINT_FILE, entries)

    def checkpoint_cleaner_offsets(self) -> None:
        """Write where compaction has cleaned each partition up to, so that a restart does
        not make the first pass read every compacted log again."""
        with self._lock:
            entries = [
                (t.name, i, p.cleaner_checkpoint)
                for t in self._topics.values()
                for i, p in enumerate(t.partitions)
                if p.cleaner_checkpoint > 0
            ]
        self._write_checkpoint(fmt.CLEANER_OFFSET_CHECKPOINT_FILE, entries)

    def _write_checkpoint(self, name: str, entries: list[tuple[str, int, int]]) -> None:
        lines = ["0", str(len(entries))] + [f"{t} {p} {o}" for t, p, o in entries]
        write_file_atomically(self.data_dir / name, ("\n".join(lines) + "\n").encode())

    def _apply_cleaner_checkpoints(self) -> None:
        """A checkpoint past the log end (the tail was cut in recovery) is taken back to it;
        one of a topic that no longer exists is dropped from the file at once, so a new
        topic of that name never inherits it."""
        points = self._read_checkpoint(
            fmt.CLEANER_OFFSET_CHECKPOINT_FILE, "compacting every log from its start"
        )
        stale = False
        for (name, number), offset in points.items():
            topic = self._topics.get(name)
            if topic is None or number >= len(topic.partitions):
                stale = True
                continue
            part = topic.partitions[number]
            part.cleaner_checkpoint = min(max(offset, 0), part.log_end_offset)
        if stale:
            self.checkpoint_cleaner_offsets()

    def run_cleaner(self, force: bool = False) -> int:
        """One compaction pass over every compacted partition that is dirty enough (all
        with anything to clean if `force`); return the segments rewritten. Checkpoints
        where each pass ended."""
        rewritten = 0
        passes = 0
        for part in self.all_partitions():
            try:
                result = log_cleaner.clean(part, self._clock.now_ms(), force, self._stop.is_set)
            except (LogClosedError, log_cleaner.CleanerStopped):
                raise
            except Exception:  # one bad partition must not hold up the others
                log.exception("%s: compaction failed; skipping it this pass", part.name)
                continue
            if result is not None:
                rewritten += result.segments_rewritten
                passes += 1
        if passes:
            self.checkpoint_cleaner_offsets()
        return rewritten

    def _cleaner_loop(self) -> None:
        while not self._stop.wait(max(self.settings.cleaner_backoff_ms, 10) / 1000):
            try:
                self.run_cleaner()
            except (LogClosedError, log_cleaner.CleanerStopped):
                continue
            except Exception:  # keep the broker alive; the next pass tries again
                log.exception("log cleaner pass failed")

    def _background_loop(self) -> None:
        s = self.settings
        last = {"retention": self._clock.monotonic_ms(), "checkpoint": self._clock.monotonic_ms()}
        tick_s = max(s.flush_check_interval_ms, 10) / 1000
        while not self._stop.wait(tick_s):
            try:
                self.flush_by_time()
                now = self._clock.monotonic_ms()
                if now - last["retention"] >= s.retention_check_interval_ms:
                    last["retention"] = now
                    self.run_retention()
                    self.expire_producers()
                if now - last["checkpoint"] >= s.recovery_point_checkpoint_interval_ms:
                    last["checkpoint"] = now
                    self.checkpoint_recovery_points()
            except LogClosedError:
                continue
            except Exception:  # keep the broker alive; the next tick tries again
                log.exception("log manager background task failed")

    # --- lifecycle ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise LogClosedError("the log manager is closed")

    def close(self) -> None:
        """Stop background work, flush and close every log, then mark a clean shutdown."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        for part in self.all_partitions():
            part.close()
        self.checkpoint_recovery_points()
        self.checkpoint_cleaner_offsets()
        self.checkpoint_high_watermarks()
        marker = self.data_dir / fmt.CLEAN_SHUTDOWN_FILE
        write_file_atomically(marker, b"")
        log.info("log manager closed cleanly")

    def __enter__(self) -> LogManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
