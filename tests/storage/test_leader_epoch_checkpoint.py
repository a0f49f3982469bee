"""LeaderEpochCache: Kafka's leader-epoch-checkpoint, against a linear model of its rules."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logstore.storage.leader_epoch_checkpoint import (
    LEADER_EPOCH_CHECKPOINT_FILE,
    EpochEntry,
    LeaderEpochCache,
)

PROPERTY = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

Pairs = list[tuple[int, int]]


# --- the model: each rule written the plain way -------------------------------------------


def model_assign(entries: Pairs, epoch: int, start: int) -> Pairs:
    """A new epoch is appended when larger than the latest and not starting before it; one
    starting exactly where the latest starts replaces it; anything else changes nothing."""
    if epoch < 0 or start < 0:
        return entries
    if not entries:
        return [(epoch, start)]
    last_epoch, last_start = entries[-1]
    if epoch <= last_epoch or start < last_start:
        return entries
    kept = [e for e in entries if e[1] < start]
    return [*kept, (epoch, start)]


def model_truncate_from_end(entries: Pairs, end: int) -> Pairs:
    return [e for e in entries if e[1] < end]


def model_truncate_from_start(entries: Pairs, start: int) -> Pairs:
    """Each epoch covers [its start, the next one's start); what lies wholly before `start`
    goes and the one covering `start` is cut to begin there."""
    kept = []
    for i, (epoch, begin) in enumerate(entries):
        end = entries[i + 1][1] if i + 1 < len(entries) else float("inf")
        if end > start:
            kept.append((epoch, max(begin, start)))
    return kept


def model_end_offset_for(entries: Pairs, epoch: int, log_end: int) -> tuple[int, int]:
    """Scan every entry: the largest epoch <= `epoch`, ended by the first larger one."""
    found = None
    for i, (e, _) in enumerate(entries):
        if e <= epoch:
            found = i
    if found is None:
        return -1, -1
    if found + 1 < len(entries):
        return entries[found][0], entries[found + 1][1]
    return entries[found][0], log_end


def pairs(cache: LeaderEpochCache) -> Pairs:
    return [(e.epoch, e.start_offset) for e in cache.entries()]


def file_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def check_file_is_kafka_format(path: Path, expected: Sequence[tuple[int, int]]) -> None:
    assert file_lines(path) == ["0", str(len(expected))] + [f"{e} {o}" for e, o in expected]


# --- properties ---------------------------------------------------------------------------

operations = st.lists(
    st.one_of(
        st.tuples(st.just("assign"), st.integers(-1, 12), st.integers(-1, 60)),
        st.tuples(st.just("truncate_from_end"), st.integers(0, 70), st.just(0)),
        st.tuples(st.just("truncate_from_start"), st.integers(0, 70), st.just(0)),
        st.tuples(st.just("clear"), st.just(0), st.just(0)),
        st.tuples(st.just("reopen"), st.just(0), st.just(0)),
    ),
    max_size=40,
)


@PROPERTY
@given(ops=operations, log_end=st.integers(0, 80))
def test_the_cache_follows_the_model_and_its_file_through_every_change(
    ops: list[tuple[str, int, int]], log_end: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / LEADER_EPOCH_CHECKPOINT_FILE
        cache = LeaderEpochCache(path)
        model: Pairs = []
        for name, a, b in ops:
            if name == "assign":
                cache.assign(a, b)
                model = model_assign(model, a, b)
            elif name == "truncate_from_end":
                cache.truncate_from_end(a)
                model = model_truncate_from_end(model, a)
            elif name == "truncate_from_start":
                cache.truncate_from_start(a)
                model = model_truncate_from_start(model, a)
            elif name == "clear":
                cache.clear()
                model = []
            else:
                cache = LeaderEpochCache(path)
            assert pairs(cache) == model
            epochs = [e for e, _ in model]
            starts = [o for _, o in model]
            assert epochs == sorted(set(epochs)) and starts == sorted(set(starts))
            if path.exists():
                check_file_is_kafka_format(path, model)
            else:
                assert model == []
            assert cache.latest_epoch() == (model[-1][0] if model else -1)
            for epoch in range(-1, 14):
                expected = model_end_offset_for(model, epoch, log_end)
                assert cache.end_offset_for(epoch, log_end) == expected, epoch
        assert [p.name for p in Path(tmp).iterdir()] in ([], [LEADER_EPOCH_CHECKPOINT_FILE])


@PROPERTY
@given(
    batches=st.lists(st.tuples(st.integers(-1, 6), st.integers(1, 5)), max_size=30),
)
def test_rebuild_from_batches_equals_assigning_each_batch(batches: list[tuple[int, int]]) -> None:
    """What a log scan feeds `rebuild` (one pair per batch) gives what appending those
    batches one by one gave."""
    with tempfile.TemporaryDirectory() as tmp:
        offset = 0
        assignments = []
        for epoch, count in batches:
            assignments.append((epoch, offset))
            offset += count
        one_by_one = LeaderEpochCache(Path(tmp) / "a")
        for epoch, start in assignments:
            one_by_one.assign(epoch, start)
        rebuilt = LeaderEpochCache(Path(tmp) / "b")
        rebuilt.rebuild(iter(assignments))
        assert rebuilt.entries() == one_by_one.entries()
        assert not rebuilt.needs_rebuild
        check_file_is_kafka_format(Path(tmp) / "b", pairs(rebuilt))


# --- examples -----------------------------------------------------------------------------


def test_the_file_is_kafkas_text_format_and_survives_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / LEADER_EPOCH_CHECKPOINT_FILE
    cache = LeaderEpochCache(path)
    cache.assign(0, 0)
    cache.assign(3, 1250)
    assert path.read_text() == "0\n2\n0 0\n3 1250\n"
    reopened = LeaderEpochCache(path)
    assert reopened.entries() == [EpochEntry(0, 0), EpochEntry(3, 1250)]
    assert not reopened.needs_rebuild


def test_a_file_written_by_kafka_is_read(tmp_path: Path) -> None:
    path = tmp_path / LEADER_EPOCH_CHECKPOINT_FILE
    path.write_text("0\n3\n1 0\n2 17\n5 400\n")
    cache = LeaderEpochCache(path)
    assert pairs(cache) == [(1, 0), (2, 17), (5, 400)]
    assert cache.end_offset_for(0, 900) == (-1, -1)
    assert cache.end_offset_for(1, 900) == (1, 17)
    assert cache.end_offset_for(4, 900) == (2, 400)
    assert cache.end_offset_for(5, 900) == (5, 900)
    assert cache.end_offset_for(9, 900) == (5, 900)


def test_a_missing_file_is_an_empty_cache_and_is_not_written_until_it_changes(
    tmp_path: Path,
) -> None:
    path = tmp_path / LEADER_EPOCH_CHECKPOINT_FILE
    cache = LeaderEpochCache(path)
    assert cache.entries() == [] and cache.latest_epoch() == -1
    assert cache.end_offset_for(0, 10) == (-1, -1)
    assert cache.needs_rebuild
    cache.truncate_from_end(0)
    cache.truncate_from_start(5)
    cache.assign(-1, 0)  # a batch appended outside replication
    assert not path.exists()
    cache.assign(2, 7)
    assert path.read_text() == "0\n1\n2 7\n"


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"1\n0\n",
        b"0\n2\n1 0\n",
        b"0\n1\n1\n",
        b"0\n1\nx 0\n",
        b"0\n2\n3 0\n2 10\n",
        b"0\n2\n1 10\n2 10\n",
        b"\xff\xfe",
    ],
)
def test_a_corrupt_file_is_warned_about_and_taken_as_empty_for_a_rebuild(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / LEADER_EPOCH_CHECKPOINT_FILE
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, "logstore.storage.leader_epoch_checkpoint"):
        cache = LeaderEpochCache(path)
    assert cache.entries() == [] and cache.needs_rebuild
    assert any(LEADER_EPOCH_CHECKPOINT_FILE in r.getMessage() for r in caplog.records)
    cache.rebuild([(1, 0), (4, 9)])
    assert path.read_text() == "0\n2\n1 0\n4 9\n"


def test_an_older_epoch_or_an_earlier_start_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = LeaderEpochCache(tmp_path / LEADER_EPOCH_CHECKPOINT_FILE)
    cache.assign(2, 100)
    with caplog.at_level(logging.WARNING, "logstore.storage.leader_epoch_checkpoint"):
        cache.assign(1, 200)
        cache.assign(3, 50)
    assert pairs(cache) == [(2, 100)]
    assert len(caplog.records) == 2
    caplog.clear()
    cache.assign(2, 300)  # later batches of the latest epoch: nothing to say
    cache.assign(4, 100)  # epoch 2 ended before holding anything
    assert pairs(cache) == [(4, 100)]
    assert not caplog.records


def test_truncate_from_start_moves_the_covering_epoch_to_the_new_start(tmp_path: Path) -> None:
    cache = LeaderEpochCache(tmp_path / LEADER_EPOCH_CHECKPOINT_FILE)
    for epoch, start in ((0, 0), (1, 100), (2, 200)):
        cache.assign(epoch, start)
    cache.truncate_from_start(150)
    assert pairs(cache) == [(1, 150), (2, 200)]
    cache.truncate_from_start(200)
    assert pairs(cache) == [(2, 200)]
    cache.truncate_from_start(250)
    assert pairs(cache) == [(2, 250)]
