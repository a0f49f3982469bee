"""Leader epochs of one partition: where each leader epoch starts in the log.

Kafka's `leader-epoch-checkpoint` file in the partition directory, in Kafka's text format::

    0                   version
    2                   number of entries
    0 0                 "epoch start_offset", one line per entry, oldest first
    3 1250

Invariants:
- Entries rise strictly in both epoch and start offset: epoch `e` covers the offsets from
  its start to the next entry's start (the last one: to the log end offset).
- The file always holds what `entries()` returns: every change is written through at once,
  atomically (temp file, fsync, rename, fsync of the directory), so a crash leaves either
  the old or the new list.

A follower uses this to answer "where does my log stop agreeing with the leader's" (Kafka's
OffsetsForLeaderEpoch, KIP-101/279): the leader returns `end_offset_for(epoch)` and the
follower truncates there.

Thread safety: mutations take a lock; readers see `entries()` as one tuple replaced whole,
so they never wait and never see a half-made change.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from logstore.storage.fileutil import write_file_atomically

log = logging.getLogger(__name__)

#: the file's name in the partition directory (Kafka's)
LEADER_EPOCH_CHECKPOINT_FILE: Final = "leader-epoch-checkpoint"
#: the only format version there is (first line of the file)
CHECKPOINT_VERSION: Final = 0
#: what `latest_epoch` and `end_offset_for` answer when there is no epoch (Kafka's -1)
UNDEFINED_EPOCH: Final = -1
UNDEFINED_OFFSET: Final = -1


@dataclass(frozen=True, slots=True)
class EpochEntry:
    """Leader epoch `epoch` starts at log offset `start_offset` (both >= 0)."""

    epoch: int
    start_offset: int


class CorruptCheckpointError(ValueError):
    """A leader-epoch-checkpoint file that does not parse or breaks the ordering invariant."""


class LeaderEpochCache:
    """The leader epochs of one partition, kept in `path` (see the module docstring).

    Opening a missing file gives an empty cache and writes nothing (a standalone log never
    has one). A file that does not parse is warned about and taken as empty;
    `needs_rebuild` then says the owner should rebuild the entries from its batch headers
    (`rebuild`).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        #: True when the file was missing or corrupt at open, until `rebuild` runs
        self.needs_rebuild = False
        self._entries: tuple[EpochEntry, ...] = ()
        try:
            self._entries = _parse(self.path.read_bytes())
        except FileNotFoundError:
            self.needs_rebuild = True
        except (OSError, CorruptCheckpointError) as exc:
            log.warning("%s is unreadable (%s); rebuilding it from the log", self.path, exc)
            self.needs_rebuild = True

    # --- reading -----------------------------------------------------------------------------

    def entries(self) -> list[EpochEntry]:
        """Every entry, oldest first."""
        return list(self._entries)

    def latest_epoch(self) -> int:
        """The newest leader epoch, or -1 when there is none."""
        entries = self._entries
        return entries[-1].epoch if entries else UNDEFINED_EPOCH

    def end_offset_for(self, epoch: int, log_end_offset: int) -> tuple[int, int]:
        """Kafka's OffsetsForLeaderEpoch answer for a requested `epoch`.

        (the largest known epoch <= `epoch`, the offset where it ends: the start offset of
        the next larger epoch, or `log_end_offset` when it is the latest), or (-1, -1) when
        `epoch` is below the first entry or there is no entry.
        """
        entries = self._entries
        index = bisect.bisect_right([e.epoch for e in entries], epoch) - 1
        if index < 0:
            return UNDEFINED_EPOCH, UNDEFINED_OFFSET
        if index == len(entries) - 1:
            return entries[index].epoch, log_end_offset
        return entries[index].epoch, entries[index + 1].start_offset

    # --- changing ----------------------------------------------------------------------------

    def assign(self, epoch: int, start_offset: int) -> None:
        """Record that `epoch` starts at `start_offset`; written through when it changes.

        A no-op for the latest epoch again (its later batches) and for a negative epoch (a
        batch appended outside replication). A new epoch must be larger than the latest and
        start at or after it: an older epoch or an earlier start offset is ignored with a
        warning, as Kafka does. A larger epoch at the latest's very start offset replaces
        it (that epoch ended before holding anything), so start offsets rise strictly.
        """
        with self._lock:
            changed = _assigned(self._entries, epoch, start_offset, self.path)
            if changed is not None:
                self._replace(changed)

    def truncate_from_end(self, end_offset: int) -> None:
        """The log was cut at `end_offset`: drop the entries starting at or after it."""
        with self._lock:
            kept = tuple(e for e in self._entries if e.start_offset < end_offset)
            if kept != self._entries:
                self._replace(kept)

    def truncate_from_start(self, start_offset: int) -> None:
        """The log now starts at `start_offset`: drop the entries wholly before it; the
        last entry starting at or before it is kept, moved to start at `start_offset`."""
        with self._lock:
            entries = self._entries
            covered = bisect.bisect_right([e.start_offset for e in entries], start_offset)
            if covered == 0:
                return
            kept = (EpochEntry(entries[covered - 1].epoch, start_offset), *entries[covered:])
            if kept != entries:
                self._replace(kept)

    def clear(self) -> None:
        """Forget every entry (the log was emptied); the file stays, empty."""
        with self._lock:
            self._replace(())
            self.needs_rebuild = False

    def rebuild(self, assignments: Iterable[tuple[int, int]]) -> None:
        """Replace every entry with what `assign` makes of (epoch, start offset) pairs in
        log order (e.g. batch headers scanned from the log); written once, at the end."""
        entries: tuple[EpochEntry, ...] = ()
        for epoch, start_offset in assignments:
            entries = _assigned(entries, epoch, start_offset, self.path) or entries
        with self._lock:
            self._replace(entries)
            self.needs_rebuild = False

    def _replace(self, entries: tuple[EpochEntry, ...]) -> None:
        """Write `entries` durably, then publish them (caller holds the lock)."""
        write_file_atomically(self.path, _format(entries))
        self._entries = entries

    def __repr__(self) -> str:
        listed = ", ".join(f"{e.epoch}@{e.start_offset}" for e in self._entries)
        return f"LeaderEpochCache({self.path}, [{listed}])"


def _format(entries: tuple[EpochEntry, ...]) -> bytes:
    lines = [str(CHECKPOINT_VERSION), str(len(entries))]
    lines += [f"{e.epoch} {e.start_offset}" for e in entries]
    return ("\n".join(lines) + "\n").encode("ascii")


def _assigned(
    entries: tuple[EpochEntry, ...], epoch: int, start_offset: int, path: Path
) -> tuple[EpochEntry, ...] | None:
    """`entries` after assigning `epoch` at `start_offset` (rules in `assign`), or None
    when that changes nothing."""
    if epoch < 0 or start_offset < 0:
        return None
    if not entries:
        return (EpochEntry(epoch, start_offset),)
    latest = entries[-1]
    if epoch == latest.epoch:
        return None
    if epoch < latest.epoch or start_offset < latest.start_offset:
        log.warning(
            "%s: ignoring leader epoch %d at offset %d: the latest is epoch %d at offset %d",
            path,
            epoch,
            start_offset,
            latest.epoch,
            latest.start_offset,
        )
        return None
    if start_offset == latest.start_offset:
        entries = entries[:-1]
    return (*entries, EpochEntry(epoch, start_offset))


def _parse(data: bytes) -> tuple[EpochEntry, ...]:
    """The entries of a checkpoint file; CorruptCheckpointError naming what is wrong."""
    try:
        lines = data.decode("ascii").splitlines()
        version, count = lines[0].strip(), int(lines[1])
        pairs = [line.split() for line in lines[2:]]
        entries = [EpochEntry(int(epoch), int(start)) for epoch, start in pairs]
    except (UnicodeDecodeError, IndexError, ValueError) as exc:
        raise CorruptCheckpointError(f"malformed: {exc}") from exc
    if version != str(CHECKPOINT_VERSION):
        raise CorruptCheckpointError(f"version {version!r} is not {CHECKPOINT_VERSION}")
    if count != len(entries):
        raise CorruptCheckpointError(f"says {count} entries but holds {len(entries)}")
    for previous, entry in itertools.pairwise(entries):
        if entry.epoch <= previous.epoch or entry.start_offset <= previous.start_offset:
            raise CorruptCheckpointError(f"entries do not rise at epoch {entry.epoch}")
    if entries and (entries[0].epoch < 0 or entries[0].start_offset < 0):
        raise CorruptCheckpointError("negative epoch or start offset")
    return tuple(entries)
