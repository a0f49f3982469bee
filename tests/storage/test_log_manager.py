"""The log manager: topics on disk, persistence, recovery, deletion, retention, background."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from logstore.clock import SYSTEM_CLOCK, Clock, ManualClock
from logstore.codec import format as fmt
from logstore.codec import record_batch as rb
from logstore.errors import (
    InvalidConfigError,
    InvalidPartitionsError,
    InvalidTopicError,
    LogClosedError,
    OffsetOutOfRangeError,
    TopicExistsError,
    UnknownTopicOrPartitionError,
)
from logstore.storage.log_config import LogConfig
from logstore.storage.log_manager import (
    REPLICATION_OFFSET_CHECKPOINT_FILE,
    LogManager,
    ManagerSettings,
    Topic,
    parse_partition_dir,
    write_file_atomically,
)
from logstore.storage.partition_log import PartitionLog
from tests.helpers import wait_until

NO_THREADS = ManagerSettings(background_threads=False)
TS = 1_700_000_000_000
#: a value size that makes a one-record batch about 470 bytes: two fit a 1024-byte segment
BIG_VALUE = 400
MAX_READ_ROUNDS = 10_000

OpenManager = Callable[..., LogManager]


# --- helpers ------------------------------------------------------------------------------


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def open_manager() -> Iterator[OpenManager]:
    """Open managers without background threads; close every one at teardown."""
    opened: list[LogManager] = []

    def _open(
        path: Path,
        *,
        clock: Clock = SYSTEM_CLOCK,
        default_config: LogConfig | None = None,
        settings: ManagerSettings = NO_THREADS,
        replicated: bool = False,
    ) -> LogManager:
        mgr = LogManager(
            path,
            default_config=default_config,
            settings=settings,
            clock=clock,
            replicated=replicated,
        )
        opened.append(mgr)
        return mgr

    yield _open
    for mgr in opened:
        mgr.close()


def make_batch(values: list[bytes], timestamp_ms: int = TS) -> bytes:
    return rb.encode_batch([(None, v, None, timestamp_ms) for v in values])


def value(tag: str, size: int = 0) -> bytes:
    return tag.encode().ljust(size, b".")


def append_values(
    part: PartitionLog, values: list[bytes], timestamp_ms: int = TS
) -> tuple[int, int]:
    result = part.append(make_batch(values, timestamp_ms))
    return result.base_offset, result.last_offset


def read_all(part: PartitionLog) -> list[tuple[int, bytes | None]]:
    """(offset, value) of every record from the log start to the log end."""
    out: list[tuple[int, bytes | None]] = []
    offset = part.log_start_offset
    for _ in range(MAX_READ_ROUNDS):
        if offset >= part.log_end_offset:
            break
        records = [r for r in rb.decode_all(part.read(offset, 1 << 20).data) if r.offset >= offset]
        assert records, f"no records at offset {offset} of {part.name}"
        out.extend((r.offset, r.value) for r in records)
        offset = records[-1].offset + 1
    else:
        pytest.fail(f"{part.name}: reading did not reach the log end")
    return out


def tree(root: Path) -> set[str]:
    """Every file and directory below `root`, as paths relative to it."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def metadata(data: Path, topic: str) -> dict[str, object]:
    return json.loads((data / fmt.TOPIC_METADATA_DIR / f"{topic}.json").read_text())


def crash_image(mgr: LogManager, dest: Path) -> Path:
    """Flush every partition and copy the data directory as a crash would leave it."""
    for part in mgr.all_partitions():
        part.flush()
    shutil.copytree(mgr.data_dir, dest)
    return dest


# --- creating topics ----------------------------------------------------------------------


def test_create_topic_makes_partition_dirs_and_metadata(
    data_dir: Path, open_manager: OpenManager
) -> None:
    mgr = open_manager(data_dir)
    topic = mgr.create_topic("orders", 3, {"retention.ms": 1000, "cleanup.policy": "delete"})

    assert isinstance(topic, Topic)
    assert topic.name == "orders"
    assert len(topic.partitions) == 3
    assert topic.config.retention_ms == 1000
    assert topic.config_overrides == {"retention.ms": "1000", "cleanup.policy": "delete"}
    for p in range(3):
        part_dir = data_dir / f"orders-{p}"
        assert part_dir.is_dir()
        assert (part_dir / fmt.offset_file_name(0, fmt.LOG_SUFFIX)).is_file()
        assert topic.partitions[p].directory == part_dir
        assert topic.partitions[p].config.retention_ms == 1000
    assert not (data_dir / "orders-3").exists()

    meta = metadata(data_dir, "orders")
    assert meta["name"] == "orders"
    assert meta["partitions"] == 3
    assert meta["config"] == {"retention.ms": "1000", "cleanup.policy": "delete"}
    assert meta["topic_id"] == topic.topic_id
    assert len(topic.topic_id) == 32
    assert sorted(p.name for p in (data_dir / fmt.TOPIC_METADATA_DIR).iterdir()) == ["orders.json"]


def test_data_dir_given_as_a_relative_string(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, open_manager: OpenManager
) -> None:
    monkeypatch.chdir(tmp_path)
    mgr = open_manager("nested/data")  # type: ignore[arg-type]
    mgr.create_topic("t", 1)
    assert mgr.data_dir == (tmp_path / "nested" / "data").resolve()
    assert (tmp_path / "nested" / "data" / "t-0").is_dir()


def test_create_topic_unknown_config_key_creates_nothing(
    data_dir: Path, open_manager: OpenManager
) -> None:
    mgr = open_manager(data_dir)
    before = tree(data_dir)
    with pytest.raises(InvalidConfigError) as info:
        mgr.create_topic("t", 2, {"retention_ms": 1000})
    message = str(info.value)
    assert "unknown config 'retention_ms'" in message
    assert "did you mean 'retention.ms'?" in message
    assert "allowed keys:" in message
    assert tree(data_dir) == before == {fmt.TOPIC_METADATA_DIR}
    assert mgr.topic_names() == []


@pytest.mark.parametrize(
    ("key", "bad", "expected"),
    [
        (
            "segment.bytes",
            100,
            "invalid value '100' for segment.bytes: expected an integer in 1024",
        ),
        ("retention.ms", "soon", "invalid value 'soon' for retention.ms"),
        ("retention.bytes", "-2", "(-1 = unlimited)"),
        ("cleanup.policy", "shred", "invalid value 'shred' for cleanup.policy"),
        ("message.timestamp.type", "Now", "expected 'CreateTime' or 'LogAppendTime'"),
    ],
)
def test_create_topic_bad_config_value_creates_nothing(
    data_dir: Path, open_manager: OpenManager, key: str, bad: str | int, expected: str
) -> None:
    mgr = open_manager(data_dir)
    with pytest.raises(InvalidConfigError) as info:
        mgr.create_topic("t", 1, {key: bad})
    assert expected in str(info.value)
    assert tree(data_dir) == {fmt.TOPIC_METADATA_DIR}
    assert mgr.topic_names() == []


@pytest.mark.parametrize("count", [0, -1, 10_001, True, "3", 2.0])
def test_create_topic_bad_partition_count_creates_nothing(
    data_dir: Path, open_manager: OpenManager, count: object
) -> None:
    mgr = open_manager(data_dir)
    with pytest.raises(InvalidPartitionsError) as info:
        mgr.create_topic("t", count)  # type: ignore[arg-type]
    assert "expected an integer in 1..10000" in str(info.value)
    assert tree(data_dir) == {fmt.TOPIC_METADATA_DIR}


def test_create_duplicate_topic(data_dir: Path, open_manager: OpenManager) -> None:
    mgr = open_manager(data_dir)
    mgr.create_topic("t", 2, {"retention.ms": 1000})
    append_values(mgr.partition("t", 0), [b"a"])
    meta_before = metadata(data_dir, "t")

    with pytest.raises(TopicExistsError, match="topic 't' already exists"):
        mgr.create_topic("t", 5)
    assert len(mgr.topic("t").partitions) == 2
    assert mgr.partition("t", 0).log_end_offset == 1
    assert metadata(data_dir, "t") == meta_before
    assert not (data_dir / "t-2").exists()

    mgr.close()
    mgr = open_manager(data_dir)
    with pytest.raises(TopicExistsError):
        mgr.create_topic("t", 1)


@pytest.mark.parametrize(
    "name",
    [
        "../x",
        "../../escape",
        "a/b",
        "/abs",
        "a\\b",
        "..\\x",
        ".",
        "..",
        "",
        "x" * 250,
        "a b",
        "a\x00b",
        "caf\u00e9",
        "t\n",
        "~",
    ],
)
def test_invalid_topic_names_are_rejected_and_create_nothing(
    tmp_path: Path, data_dir: Path, open_manager: OpenManager, name: str
) -> None:
    mgr = open_manager(data_dir)
    with pytest.raises(InvalidTopicError) as info:
        mgr.create_topic(name, 1)
    assert "a topic name is 1 to 249 characters" in str(info.value)
    assert tree(tmp_path) == {"data", f"data/{fmt.TOPIC_METADATA_DIR}"}
    assert not (tmp_path.parent / "escape").exists()
    assert not (tmp_path.parent / "escape-0").exists()
    assert mgr.topic_names() == []


def test_long_topic_name_is_cut_short_in_the_error(
    data_dir: Path, open_manager: OpenManager
) -> None:
    mgr = open_manager(data_dir)
    with pytest.raises(InvalidTopicError) as info:
        mgr.create_topic("y" * 5000, 1)
    assert "(5000 characters)" in str(info.value)
    assert len(str(info.value)) < 400


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "A.b_C-9",
        "__consumer_offsets",
        "x-delete",
        "x-1",
        fmt.TOPIC_METADATA_DIR,
        fmt.RECOVERY_POINT_CHECKPOINT_FILE,
        fmt.CLEAN_SHUTDOWN_FILE,
    ],
)
def test_unusual_valid_names_round_trip(
    data_dir: Path, open_manager: OpenManager, name: str
) -> None:
    mgr = open_manager(data_dir)
    mgr.create_topic(name, 2)
    append_values(mgr.partition(name, 1), [b"v"])
    mgr.close()

    mgr = open_manager(data_dir)
    assert mgr.clean_shutdown
    assert mgr.topic_names() == [name]
    assert mgr.partition(name, 1).log_end_offset == 1
    assert read_all(mgr.partition(name, 1)) == [(0, b"v")]


def test_topic_names_that_share_a_prefix_do_not_collide(
    data_dir: Path, open_manager: OpenManager
) -> None:
    mgr = open_manager(data_dir)
    mgr.create_topic("a", 12)
    mgr.create_topic("a-1", 1)
    append_values(mgr.partition("a", 1), [b"from a/1"])
    append_values(mgr.partition("a", 10), [b"from a/10"])
    append_values(mgr.partition("a-1", 0), [b"from a-1/0"])
    mgr.close()

    mgr = open_manager(data_dir)
    assert mgr.topic_names() == ["a", "a-1"]
    assert read_all(mgr.partition("a", 1)) == [(0, b"from a/1")]
    assert read_all(mgr.partition("a", 10)) == [(0, b"from a/10")]
    assert read_all(mgr.partition("a-1", 0)) == [(0, b"from a-1/0")]


def test_longest_valid_topic_name_can_be_created_reopened_and_deleted(
    data_dir: Path, open_manager: OpenManager
) -> None:
    name = "n" * 249  # the longest name validate_topic_name accepts
    mgr = open_manager(data_dir)
    mgr.create_topic(name, 1)
    append_values(mgr.partition(name, 0), [b"v"])
    mgr.close()

    mgr = open_manager(data_dir)
    assert mgr.topic_names() == [name]
    assert mgr.partition(name, 0).log_end_offset == 1
    mgr.delete_topic(name)
    assert mgr.topic_names() == []
    assert not [p for p in data_dir.iterdir() if p.name.startswith("nnn")]


def test_delete_topic_with_a_long_name_removes_its_directories(
    data_dir: Path, open_manager: OpenManager
) -> None:
    name = "d" * 240  # valid, and short enough for the metadata file's temporary name
    mgr = open_manager(data_dir)
    mgr.create_topic(name, 2)
    append_values(mgr.partition(name, 0), [b"v"])

    mgr.delete_topic(name)

    assert mgr.topic_names() == []
    assert not [p.name for p in data_dir.iterdir() if p.name.startswith("ddd")]
    mgr.create_topic(name, 1)
    assert mgr.partition(name, 0).log_end_offset == 0


# --- looking topics and partitions up -----------------------------------------------------


def test_topic_names_topic_and_partition(data_dir: Path, open_manager: OpenManager) -> None:
    mgr = open_manager(data_dir)
    assert mgr.topic_names() == []
    created = mgr.create_topic("zeta", 3)
    mgr.create_topic("alpha", 1)
    mgr.create_topic("mid", 2)

    assert mgr.topic_names() == ["alpha", "mid", "zeta"]
    assert mgr.topic("zeta") is created
    for p in range(3):
        assert mgr.partition("zeta", p) is created.partitions[p]
        assert mgr.partition("zeta", p).name == f"zeta-{p}"
    assert len(mgr.all_partitions()) == 6


def test_unknown_topic_error_names_the_topic(data_dir: Path, open_manager: OpenManager) -> None:
    mgr = open_manager(data_dir)
    mgr.create_topic("t", 1)
    with pytest.raises(UnknownTopicOrPartitionError, match="topic 'nope' does not exist"):
        mgr.topic("nope")
    with pytest.raises(UnknownTopicOrPartitionError, match="topic 'nope' does not exist"):
        mgr.partition("nope", 0)


@pytest.mark.parametrize("partition", [3, 4, 1000, -1, -3])
def test_unknown_partition_error_names_the_valid_range(
    data_dir: Path, open_manager: OpenManager, partition: int
) -> None:
    mgr = open_manager(data_dir)
    mgr.create_topic("t", 3)
    with pytest.raises(UnknownTopicOrPartitionError) as info:
        mgr.partition("t", partition)
    message = str(info.value)
    assert f"partition {partition} of topic 't' does not exist" in message
    assert "valid 0..2" in message


# --- persistence and shutdown -------------------------------------------------------------


def test_close_and_reopen_restores_topics_config_and_data(
    data_dir: Path, open_manager: OpenManager
) -> None:
    mgr = open_manager(data_dir)
    orders = mgr.create_topic("orders", 3, {"segment.bytes": 1024, "retention.ms": 3_600_000})
    logs = mgr.create_topic("logs", 1, {"cleanup.policy": "compact,delete"})
    expected: dict[tuple[str, int], list[tuple[int, bytes | None]]] = {}
    for p in range(3):
        rows: list[tuple[int, bytes | None]] = []
        for i in range(4 + p):
            values = [value(f"o{p}-{i}-{j}", 150) for j in range(2)]
            base, _ = append_values(mgr.partition("orders", p), values)
            rows.extend((base + j, v) for j, v in enumerate(values))
        expected[("orders", p)] = rows
    # a compacted topic takes keyed records only
    keyed = [(b"k%d" % i, v, (), TS) for i, v in enumerate([b"l0", b"l1", b"l2"])]
    mgr.partition("logs", 0).append(rb.encode_batch(keyed))
    expected[("logs", 0)] = [(0, b"l0"), (1, b"l1"), (2, b"l2")]
    ends = {key: mgr.partition(*key).log_end_offset for key in expected}
    segments = {key: mgr.partition(*key).segment_count for key in expected}
    assert segments[("orders", 2)] > 1
    ids = {"orders": orders.topic_id, "logs": logs.topic_id}

    mgr.close()
    mgr = open_manager(data_dir)

    assert mgr.clean_shutdown
    assert mgr.topic_names() == ["logs", "orders"]
    assert len(mgr.topic("orders").partitions) == 3
    assert len(mgr.topic("logs").partitions) == 1
    assert mgr.topic("orders").config_overrides == {
        "segment.bytes": "1024",
        "retention.ms": "3600000",
    }
    assert mgr.topic("orders").config.segment_bytes == 1024
    assert mgr.partition("orders", 1).config.retention_ms == 3_600_000
    assert mgr.topic("logs").config.cleanup_policy == "compact,delete"
    for name, topic_id in ids.items():
        assert mgr.topic(name).topic_id == topic_id
    for key, rows in expected.items():
        part = mgr.partition(*key)
        assert part.log_end_offset == ends[key]
        assert part.segment_count == segments[key]
        assert not part.recovery_report.recovered
        assert read_all(part) == rows

    # the logs continue where they stopped
    base, last = append_values(mgr.partition("orders", 0), [b"x", b"y"])
    assert (base, last) == (ends[("orders", 0)], ends[("orders", 0)] + 1)


def test_clean_shutdown_marker_lifecycle(data_dir: Path, open_manager: OpenManager) -> None:
    marker = data_dir / fmt.CLEAN_SHUTDOWN_FILE
    mgr = open_manager(data_dir)
    assert not mgr.clean_shutdown  # a brand new directory was never shut down cleanly
    assert not marker.exists()
    mgr.create_topic("t", 1)
    mgr.close()
    assert marker.is_file()
    assert marker.read_bytes() == b""
    mgr.close()  # a second close is a no-op
    assert marker.is_file()

    mgr = open_manager(data_dir)
    assert mgr.clean_shutdown
    assert not marker.exists()  # removed as soon as the manager opens
    mgr.close()
    assert marker.is_file()


def test_context_manager_closes_cleanly(data_dir: Path) -> None:
    with LogManager(data_dir, settings=NO_THREADS) as mgr:
        mgr.create_topic("t", 1)
        append_values(mgr.partition("t", 0), [b"a"])
    assert (data_dir / fmt.CLEAN_SHUTDOWN_FILE).exists()
    with LogManager(data_dir, settings=NO_THREADS) as again:
        assert again.clean_shutdown
        assert read_all(again.partition("t", 0)) == [(0, b"a")]


def test_unclean_restart_from_a_copy_of_an_open_data_dir(
    tmp_path: Path, data_dir: Path, open_manager: OpenManager
) -> None:
    mgr = open_manager(data_dir)
    mgr.create_topic("t", 2, {"segment.bytes": 1024})
    rows: list[tuple[int, bytes | None]] = []
    for i in range(7):
        v = value(f"r{i}", 300)
        base, _ = append_values(mgr.partition("t", 0), [v])
        rows.append((base, v))
    append_values(mgr.partition("t", 1), [b"one"])
    copy = crash_image(mgr, tmp_path / "copy")
    assert not (copy / fmt.CLEAN_SHUTDOWN_FILE).exists()

    crashed = open_manager(copy)
    assert not crashed.clean_shutdown
    assert crashed.topic_names() == ["t"]
    assert crashed.topic("t").config.segment_bytes == 1024
    part = crashed.partition("t", 0)
    assert part.recovery_report.recovered
    assert part.log_end_offset == 7
    assert read_all(part) == rows
    assert read_all(crashed.partition("t", 1)) == [(0, b"one")]
    assert append_values(part, [b"next"]) == (7, 7)

    # the original is unaffected by the copy
    assert mgr.partition("t", 0).log_end_offset == 7


def test_unclean_restart_after_abandoning_an_open_manager(data_dir: Path) -> None:
    first = LogManager(data_dir, settings=NO_THREADS)
    first.create_topic("t", 2, {"retention.ms": 5000})
    append_values(first.partition("t", 0), [b"a", b"b"])
    append_values(first.partition("t", 1), [b"c"])
    for part in first.all_partitions():
        part.flush()
    del part
    del first  # never closed: as if the process died here

    with LogManager(data_dir, settings=NO_THREADS) as second:
        assert not second.clean_shutdown
        assert not (data_dir / fmt.CLEAN_SHUTDOWN_FILE).exists()
        assert second.topic("t").config.retention_ms == 5000
        assert read_all(second.partition("t", 0)) == [(0, b"a"), (1, b"b")]
        assert read_all(second.partition("t", 1)) == [(0, b"c")]
        assert all(p.recovery_report.recovered for p in second.all_partitions())
    assert (data_dir / fmt.CLEAN_SHUTDOWN_FILE).exists()


def test_stale_metadata_temp_file_is_not_a_topic(data_dir: Path, open_manager: OpenManager) -> None:
    mgr = open_manager(data_dir)
    mgr.create_topic("t", 1)
    mgr.close()
    # a crash while writing another topic's metadata leaves only its temporary file
    tmp = data_dir / fmt.TOPIC_METADATA_DIR / f"half.json{fmt.TEMP_SUFFIX}"
    tmp.write_text('{"name": "half", "partit')

    mgr = open_manager(data_dir)
    assert mgr.topic_names() == ["t"]
    mgr.create_topic("half", 1)
    assert mgr.topic_names() == ["half", "t"]
    assert metadata(data_dir, "half")["partitions"] == 1


# --- recovery-point checkpoint ------------------------------------------------------------


def checkpoint_lines(data: Path) -> list[str]:
    text = (data / fmt.RECOVERY_POINT_CHECKPOINT_FILE).read_text()
    assert text.endswith("\n")
    return text.splitlines()


def test_checkpoint_is_written_in_kafka_text_format(
    data_dir: Path, open_manager: OpenManager
) -> None:
    mgr = open_manager(data_dir)
    mgr.create_topic("a", 2)
    mgr.create_topic("b", 1)
    append_values(mgr.partition("a", 0), [b"1", b"2", b"3"])
    mgr.partition("a", 0).flush()
    append_values(mgr.partition("b", 0), [b"x"] * 5)  # appended but not yet flushed

    mgr.checkpoint_recovery_points()
    lines = checkpoint_lines(data_dir)
    assert lines[:2] == ["0", "3"]
    assert sorted(lines[2:]) == ["a 0 3", "a 1 0", "b 0 0"]
    assert not (data_dir / (fmt.RECOVERY_POINT_CHECKPOINT_FILE + fmt.TEMP_SUFFIX)).exists()

    mgr.close()
    lines = checkpoint_lines(data_dir)
    assert lines[:2] == ["0", "3"]
    assert sorted(lines[2:]) == ["a 0 3", "a 1 0", "b 0 5"]


def test_checkpoint_drops_deleted_topics(data_dir: Path, open_manager: OpenManager) -> None:
    mgr = open_manager(data_dir)
    mgr.create_topic("keep", 1)
    mgr.create_topic("gone", 2)
    mgr.checkpoint_recovery_points()
    assert checkpoint_lines(data_dir)[1] == "3"
    mgr.delete_topic("gone")
    mgr.checkpoint_recovery_points()
    assert checkpoint_lines(data_dir) == ["0", "1", "keep 0 0"]


def test_empty_manager_writes_an_empty_checkpoint(
    data_dir: Path, open_manager: OpenManager
) -> None:
    mgr = open_manager(data_dir)
    mgr.close()
    assert checkpoint_lines(data_dir) == ["0", "0"]


def _multi_segment_crash_image(
    tmp_path: Path, open_manager: OpenManager
) -> tuple[Path, list[tuple[int, bytes | None]]]:
    mgr = open_manager(tmp_path / "orig")
    mgr.create_topic("t", 1, {"segment.bytes": 1024})
    part = mgr.partition("t", 0)
    rows: list[tuple[int, bytes | None]] = []
    for i in range(9):
        v = value(f"r{i}", BIG_VALUE)
        base, _ = append_values(part, [v])
        rows.append((base, v))
    assert part.segment_count == 5
    part.flush()
    mgr.checkpoint_recovery_points()
    return crash_image(mgr, tmp_path / "copy"), rows


def test_valid_checkpoint_limits_recovery_to_the_tail(
    tmp_path: Path, open_manager: OpenManager
) -> None:
    copy, rows = _multi_segment_crash_image(tmp_path, open_manager)
    assert checkpoint_lines(copy) == ["0", "1", "t 0 9"]

    mgr = open_manager(copy)
    part = mgr.partition("t", 0)
    assert not mgr.clean_shutdown
    assert part.recovery_report.recovered
    assert part.recovery_report.rebuilt_indexes == 1  # only the active segment
    assert read_all(part) == rows


@pytest.mark.parametrize(
    "content",
    [
        b"garbage",
        b"",
        b"\n\n\n",
        b"0\n2\nt 0 9\n",  # count says 2, one entry
        b"1\n1\nt 0 9\n",  # unknown version
        b"0\n1\nt 0\n",  # a field missing
        b"0\n1\nt 0 9 9\n",  # a field too many
        b"0\n1\nt zero 9\n",
        b"0\n1\nt 0 nine\n",
        b"0\nx\n",
        b"\xff\xfe\x00\x01\x80garbage",  # not text at all
    ],
)
def test_malformed_checkpoint_means_full_recovery(
    tmp_path: Path, open_manager: OpenManager, content: bytes
) -> None:
    copy, rows = _multi_segment_crash_image(tmp_path, open_manager)
    (copy / fmt.RECOVERY_POINT_CHECKPOINT_FILE).write_bytes(content)

    mgr = open_manager(copy)
    part = mgr.partition("t", 0)
    assert part.recovery_report.recovered
    assert part.recovery_report.rebuilt_indexes == part.segment_count == 5
    assert part.recovery_report.truncated_bytes == 0
    assert read_all(part) == rows
    assert append_values(part, [b"next"]) == (9, 9)


def test_missing_checkpoint_means_full_recovery(tmp_path: Path, open_manager: OpenManager) -> None:
    copy, rows = _multi_segment_crash_image(tmp_path, open_manager)
    (copy / fmt.RECOVERY_POINT_CHECKPOINT_FILE).unlink()

    part = open_manager(copy).partition("t", 0)
    assert part.recovery_report.rebuilt_indexes == 5
    assert read_all(part) == rows


# --- torn tails -----------------------------------------------------------------------------


def _tear(log_path: Path, how: str) -> None:
    size = log_path.stat().st_size
    if how == "partial-batch":
        with open(log_path, "ab") as f:
            f.write(make_batch([b"never completed"])[:40])
    elif how == "zeros":
        with open(log_path, "ab") as f:
            f.write(b"\x00" * 200)
    elif how == "cut-last-batch":
        os.truncate(log_path, size - 5)
    elif how == "corrupt-last-batch":
        with open(log_path, "r+b") as f:
            f.seek(size - 3)
            byte = f.read(1)
            f.seek(size - 3)
            f.write(bytes([byte[0] ^ 0xFF]))
    else:  # pragma: no cover
        raise AssertionError(how)


@pytest.mark.parametrize(
    ("how", "last_batch_survives"),
    [
        ("partial-batch", True),
        ("zeros", True),
        ("cut-last-batch", False),
        ("corrupt-last-batch", False),
    ],
)
def test_unclean_restart_with_a_torn_tail(
    tmp_path: Path, open_manager: OpenManager, how: str, last_batch_survives: bool
) -> None:
    mgr = open_manager(tmp_path / "orig")
    mgr.create_topic("t", 2, {"segment.bytes": 1024})
    batches: dict[int, list[list[tuple[int, bytes | None]]]] = {0: [], 1: []}
    for p in (0, 1):
        for i in range(8):
            values = [value(f"p{p}-b{i}-r{j}", 60) for j in range(3)]
            base, _ = append_values(mgr.partition("t", p), values)
            batches[p].append([(base + j, v) for j, v in enumerate(values)])
    assert mgr.partition("t", 0).segment_count >= 3
    mgr.checkpoint_recovery_points()
    copy = crash_image(mgr, tmp_path / "copy")
    last_log = sorted((copy / "t-0").glob("*" + fmt.LOG_SUFFIX))[-1]
    _tear(last_log, how)

    crashed = open_manager(copy)
    torn, intact = crashed.partition("t", 0), crashed.partition("t", 1)
    kept = batches[0] if last_batch_survives else batches[0][:-1]
    expected = [row for batch in kept for row in batch]
    assert torn.recovery_report.truncated_bytes > 0
    assert torn.log_end_offset == len(expected)
    assert read_all(torn) == expected
    assert read_all(intact) == [row for batch in batches[1] for row in batch]
    assert intact.recovery_report.truncated_bytes == 0

    # later appends are dense, and survive another (clean) restart
    base, last = append_values(torn, [b"after-1", b"after-2"])
    assert (base, last) == (len(expected), len(expected) + 1)
    crashed.close()
    reopened = open_manager(copy)
    rows = read_all(reopened.partition("t", 0))
    assert [offset for offset, _ in rows] == list(range(len(expected) + 2))
    assert rows[-2:] == [(base, b"after-1"), (last, b"after-2")]


# --- deleting topics ------------------------------------------------------------------------


def test_delete_topic(data_dir: Path, open_manager: OpenManager) -> None:
    mgr = open_manager(data_dir)
    mgr.create_topic("t", 2, {"retention.ms": 1000})
    mgr.create_topic("u", 1)
    old = mgr.partition("t", 0)
    append_values(old, [b"old-1", b"old-2"])
    append_values(mgr.partition("u", 0), [b"u"])

    mgr.delete_topic("t")

    assert mgr.topic_names() == ["u"]
    assert not (data_dir / fmt.TOPIC_METADATA_DIR / "t.json").exists()
    assert sorted(p.name for p in data_dir.iterdir() if p.name.startswith("t")) == []
    with pytest.raises(UnknownTopicOrPartitionError, match="topic 't' does not exist"):
        mgr.topic("t")
    with pytest.raises(UnknownTopicOrPartitionError):
        mgr.partition("t", 0)
    with pytest.raises(UnknownTopicOrPartitionError):
        mgr.delete_topic("t")
    with pytest.raises(LogClosedError):
        old.append(make_batch([b"late"]))
    assert read_all(mgr.partition("u", 0)) == [(0, b"u")]

    recreated = mgr.create_topic("t", 3)
    assert recreated.config_overrides == {}
    assert [p.log_end_offset for p in recreated.partitions] == [0, 0, 0]
    assert append_values(mgr.partition("t", 0), [b"new"]) == (0, 0)

    mgr.close()
    mgr = open_manager(data_dir)
    assert mgr.topic_names() == ["t", "u"]
    assert len(mgr.topic("t").partitions) == 3
    assert read_all(mgr.partition("t", 0)) == [(0, b"new")]
    assert mgr.topic("t").config.retention_ms == LogConfig().retention_ms


def test_delete_unknown_topic(data_dir: Path, open_manager: OpenManager) -> None:
    mgr = open_manager(data_dir)
    with pytest.raises(UnknownTopicOrPartitionError, match="topic 'ghost' does not exist"):
        mgr.delete_topic("ghost")


def test_leftover_delete_dirs_are_removed_at_open(
    data_dir: Path, open_manager: OpenManager
) -> None:
    mgr = open_manager(data_dir)
    mgr.create_topic("live", 1)
    append_values(mgr.partition("live", 0), [b"keep me"])
    mgr.close()
    # a crash between renaming and removing the directory of a deleted topic
    leftover = data_dir / "old-0.0123456789abcdef0123456789abcdef-delete"
    (leftover / "nested").mkdir(parents=True)
    (leftover / fmt.offset_file_name(0, fmt.LOG_SUFFIX)).write_bytes(b"\x00" * 100)
    (leftover / "nested" / "f").write_text("x")
    not_a_dir = data_dir / "notes-delete"
    not_a_dir.write_text("a file, not a deleted partition")

    mgr = open_manager(data_dir)
    assert not leftover.exists()
    assert not_a_dir.read_text() == "a file, not a deleted partition"
    assert mgr.topic_names() == ["live"]
    assert read_all(mgr.partition("live", 0)) == [(0, b"keep me")]


def test_partition_dir_without_metadata_is_left_alone(
    data_dir: Path, open_manager: OpenManager
) -> None:
    mgr = open_manager(data_dir)
    mgr.create_topic("live", 1)
    mgr.close()
    orphan = data_dir / "orphan-0"
    orphan.mkdir()
    (orphan / "keep.txt").write_text("do not delete")
    odd = data_dir / "not-a-partition"
    odd.mkdir()

    mgr = open_manager(data_dir)
    assert mgr.topic_names() == ["live"]
    assert (orphan / "keep.txt").read_text() == "do not delete"
    assert odd.is_dir()
    with pytest.raises(UnknownTopicOrPartitionError):
        mgr.topic("orphan")
    append_values(mgr.partition("live", 0), [b"ok"])
    mgr.close()
    assert (orphan / "keep.txt").read_text() == "do not delete"


@pytest.mark.parametrize("name", ["t-\u00b2", "t-\u0663", "t-\u2460"])
def test_directory_with_a_non_ascii_digit_suffix_does_not_break_the_open(
    data_dir: Path, open_manager: OpenManager, name: str
) -> None:
    mgr = open_manager(data_dir)
    mgr.create_topic("live", 1)
    mgr.close()
    (data_dir / name).mkdir()

    mgr = open_manager(data_dir)
    assert mgr.topic_names() == ["live"]
    assert (data_dir / name).is_dir()


def test_topic_recreated_after_a_crash_mid_delete_starts_empty(
    data_dir: Path, open_manager: OpenManager
) -> None:
    mgr = open_manager(data_dir)
    mgr.create_topic("t", 1)
    append_values(mgr.partition("t", 0), [b"deleted data"])
    mgr.close()
    # delete_topic removes the metadata first; a crash right after it leaves the directory
    (data_dir / fmt.TOPIC_METADATA_DIR / "t.json").unlink()

    mgr = open_manager(data_dir)
    assert mgr.topic_names() == []
    assert (data_dir / "t-0").is_dir()  # left alone at open
    mgr.create_topic("t", 1)
    part = mgr.partition("t", 0)
    assert part.log_end_offset == 0
    assert read_all(part) == []


# --- adding partitions ----------------------------------------------------------------------


def test_add_partitions_grows_the_topic(data_dir: Path, open_manager: OpenManager) -> None:
    mgr = open_manager(data_dir)
    mgr.create_topic("t", 2, {"segment.bytes": 1024})
    append_values(mgr.partition("t", 1), [b"existing"])
    topic_id = mgr.topic("t").topic_id

    topic = mgr.add_partitions("t", 5)

    assert len(topic.partitions) == 5
    assert metadata(data_dir, "t")["partitions"] == 5
    assert metadata(data_dir, "t")["topic_id"] == topic_id
    for p in range(2, 5):
        assert (data_dir / f"t-{p}").is_dir()
        part = mgr.partition("t", p)
        assert part.log_end_offset == 0
        assert part.config.segment_bytes == 1024
        assert append_values(part, [value(f"new{p}")]) == (0, 0)
    assert read_all(mgr.partition("t", 1)) == [(0, b"existing")]
    with pytest.raises(UnknownTopicOrPartitionError, match=r"valid 0\.\.4"):
        mgr.partition("t", 5)

    mgr.close()
    mgr = open_manager(data_dir)
    assert len(mgr.topic("t").partitions) == 5
    for p in range(2, 5):
        assert read_all(mgr.partition("t", p)) == [(0, value(f"new{p}"))]
    assert read_all(mgr.partition("t", 1)) == [(0, b"existing")]


@pytest.mark.parametrize("total", [3, 2, 1, 0, -4])
def test_add_partitions_refuses_to_shrink_or_keep_equal(
    data_dir: Path, open_manager: OpenManager, total: int
) -> None:
    mgr = open_manager(data_dir)
    mgr.create_topic("t", 3)
    before = metadata(data_dir, "t")
    with pytest.raises(InvalidPartitionsError):
        mgr.add_partitions("t", total)
    assert len(mgr.topic("t").partitions) == 3
    assert metadata(data_dir, "t") == before
    assert not (data_dir / "t-3").exists()


def test_add_partitions_message_and_limits(data_dir: Path, open_manager: OpenManager) -> None:
    mgr = open_manager(data_dir)
    mgr.create_topic("t", 3)
    with pytest.raises(InvalidPartitionsError) as info:
        mgr.add_partitions("t", 3)
    assert "topic 't' has 3 partitions; the new count must be larger" in str(info.value)
    with pytest.raises(InvalidPartitionsError, match=r"1\.\.10000"):
        mgr.add_partitions("t", 10_001)
    with pytest.raises(UnknownTopicOrPartitionError, match="topic 'nope' does not exist"):
        mgr.add_partitions("nope", 4)
    assert len(mgr.topic("t").partitions) == 3


# --- altering config ------------------------------------------------------------------------


def test_alter_config_applies_at_once_and_persists(
    data_dir: Path, open_manager: OpenManager
) -> None:
    mgr = open_manager(data_dir)
    mgr.create_topic("t", 2)
    part = mgr.partition("t", 0)
    for i in range(3):
        append_values(part, [value(f"before{i}", BIG_VALUE)])
    assert part.segment_count == 1

    topic = mgr.alter_config("t", {"segment.bytes": 1024})

    assert topic.config.segment_bytes == 1024
    assert topic.config_overrides == {"segment.bytes": "1024"}
    assert all(p.config.segment_bytes == 1024 for p in topic.partitions)
    for i in range(4):
        append_values(part, [value(f"after{i}", BIG_VALUE)])
    assert part.segment_count >= 3
    assert all(s.size <= 1024 for s in part.segments()[1:])
    assert metadata(data_dir, "t")["config"] == {"segment.bytes": "1024"}

    mgr.close()
    mgr = open_manager(data_dir)
    assert mgr.topic("t").config_overrides == {"segment.bytes": "1024"}
    assert mgr.partition("t", 1).config.segment_bytes == 1024
    assert len(read_all(mgr.partition("t", 0))) == 7


def test_alter_config_none_resets_to_the_manager_default(
    data_dir: Path, open_manager: OpenManager
) -> None:
    defaults = LogConfig(retention_ms=123_456)
    mgr = open_manager(data_dir, default_config=defaults)
    mgr.create_topic("t", 1, {"retention.ms": 1000, "segment.bytes": 2048})
    assert mgr.partition("t", 0).config.retention_ms == 1000

    topic = mgr.alter_config("t", {"retention.ms": None, "flush.ms": 50})

    assert topic.config_overrides == {"segment.bytes": "2048", "flush.ms": "50"}
    assert topic.config.retention_ms == 123_456
    assert mgr.partition("t", 0).config.retention_ms == 123_456
    assert mgr.partition("t", 0).config.flush_ms == 50
    assert metadata(data_dir, "t")["config"] == {"segment.bytes": "2048", "flush.ms": "50"}
    mgr.alter_config("t", {"segment.bytes": None, "flush.ms": None, "retention.ms": None})
    assert mgr.topic("t").config_overrides == {}
    assert mgr.topic("t").config == defaults

    mgr.close()
    mgr = open_manager(data_dir, default_config=defaults)
    assert mgr.topic("t").config_overrides == {}
    assert mgr.partition("t", 0).config == defaults


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"segment_bytes": 2048}, "unknown config 'segment_bytes'"),
        ({"segment.bytes": 10}, "invalid value '10' for segment.bytes"),
        ({"retention.ms": 5000, "cleanup.policy": "none"}, "for cleanup.policy"),
    ],
)
def test_alter_config_rejects_bad_changes_and_changes_nothing(
    data_dir: Path,
    open_manager: OpenManager,
    changes: Mapping[str, str | int | None],
    expected: str,
) -> None:
    mgr = open_manager(data_dir)
    mgr.create_topic("t", 2, {"retention.ms": 1000})
    before_meta = metadata(data_dir, "t")
    before_config = mgr.topic("t").config

    with pytest.raises(InvalidConfigError) as info:
        mgr.alter_config("t", changes)
    assert expected in str(info.value)
    assert mgr.topic("t").config_overrides == {"retention.ms": "1000"}
    assert mgr.topic("t").config == before_config
    assert all(p.config == before_config for p in mgr.topic("t").partitions)
    assert metadata(data_dir, "t") == before_meta


def test_alter_config_of_unknown_topic(data_dir: Path, open_manager: OpenManager) -> None:
    mgr = open_manager(data_dir)
    with pytest.raises(UnknownTopicOrPartitionError, match="topic 'nope' does not exist"):
        mgr.alter_config("nope", {"retention.ms": 1})


# --- retention ------------------------------------------------------------------------------

RETENTION_CONFIG = {"segment.bytes": 1024, "retention.ms": 10_000, "file.delete.delay.ms": 0}


def test_run_retention_deletes_expired_segments_across_topics(
    data_dir: Path, open_manager: OpenManager
) -> None:
    clock = ManualClock()
    mgr = open_manager(data_dir, clock=clock)
    mgr.create_topic("a", 2, RETENTION_CONFIG)
    mgr.create_topic("b", 1, RETENTION_CONFIG)
    mgr.create_topic("forever", 1, {**RETENTION_CONFIG, "retention.ms": -1})
    for part in mgr.all_partitions():
        for i in range(7):
            append_values(part, [value(f"{part.name}-{i}", BIG_VALUE)], clock.now_ms())
    expected = sum(p.segment_count - 1 for p in mgr.all_partitions() if p.name != "forever-0")
    assert expected >= 9
    assert mgr.run_retention() == 0  # nothing is old yet

    clock.advance(10_001)
    deleted = mgr.run_retention()

    assert deleted == expected
    for name in ("a-0", "a-1", "b-0"):
        part = next(p for p in mgr.all_partitions() if p.name == name)
        assert part.segment_count == 1
        assert part.log_start_offset == part.segments()[0].base_offset > 0
        assert part.log_end_offset == 7
        files = sorted(f.name for f in part.directory.glob("*" + fmt.LOG_SUFFIX))
        assert files == [fmt.offset_file_name(part.log_start_offset, fmt.LOG_SUFFIX)]
        assert not list(part.directory.glob("*" + fmt.DELETED_SUFFIX))
        with pytest.raises(OffsetOutOfRangeError):
            part.read(0, 1 << 20)
        assert [o for o, _ in read_all(part)] == list(range(part.log_start_offset, 7))
    forever = mgr.partition("forever", 0)
    assert forever.log_start_offset == 0
    assert len(read_all(forever)) == 7
    assert mgr.run_retention() == 0

    # appends continue densely after retention
    assert append_values(mgr.partition("b", 0), [b"more"], clock.now_ms()) == (7, 7)


def test_retention_with_a_delete_delay_removes_files_later(
    data_dir: Path, open_manager: OpenManager
) -> None:
    clock = ManualClock()
    mgr = open_manager(data_dir, clock=clock)
    mgr.create_topic("t", 1, {**RETENTION_CONFIG, "file.delete.delay.ms": 5000})
    part = mgr.partition("t", 0)
    for i in range(5):
        append_values(part, [value(f"r{i}", BIG_VALUE)], clock.now_ms())
    clock.advance(10_001)

    deleted = mgr.run_retention()

    assert deleted == 2
    assert len(list(part.directory.glob("*" + fmt.DELETED_SUFFIX))) == 3 * deleted
    mgr.flush_by_time()
    assert len(list(part.directory.glob("*" + fmt.DELETED_SUFFIX))) == 3 * deleted
    clock.advance(5000)
    mgr.flush_by_time()
    assert not list(part.directory.glob("*" + fmt.DELETED_SUFFIX))


def test_retention_by_size_across_topics(data_dir: Path, open_manager: OpenManager) -> None:
    clock = ManualClock()
    mgr = open_manager(data_dir, clock=clock)
    mgr.create_topic("t", 1, {**RETENTION_CONFIG, "retention.ms": -1, "retention.bytes": 1024})
    part = mgr.partition("t", 0)
    for i in range(8):
        append_values(part, [value(f"r{i}", BIG_VALUE)], clock.now_ms())
    assert part.segment_count == 4

    deleted = mgr.run_retention()

    assert deleted == 2
    assert part.size_bytes <= 2 * 1024
    assert part.log_end_offset == 8


# --- the background thread ----------------------------------------------------------------


def test_background_thread_applies_retention_and_flush_ms(data_dir: Path) -> None:
    settings = ManagerSettings(
        retention_check_interval_ms=20,
        flush_check_interval_ms=20,
        recovery_point_checkpoint_interval_ms=20,
    )
    threads_before = set(threading.enumerate())
    mgr = LogManager(data_dir, settings=settings)
    try:
        new_threads = set(threading.enumerate()) - threads_before
        assert {t.name for t in new_threads} == {"logstore-log-manager", "logstore-log-cleaner"}
        assert all(t.is_alive() and t.daemon for t in new_threads)

        mgr.create_topic("old", 1, {**RETENTION_CONFIG, "retention.ms": 60_000})
        mgr.create_topic("flushed", 1, {"flush.ms": 50})
        mgr.create_topic("lazy", 1)
        old, flushed, lazy = (mgr.partition(t, 0) for t in ("old", "flushed", "lazy"))
        an_hour_ago = SYSTEM_CLOCK.now_ms() - 3_600_000
        for i in range(7):
            append_values(old, [value(f"r{i}", BIG_VALUE)], an_hour_ago)
        append_values(flushed, [b"a", b"b"], SYSTEM_CLOCK.now_ms())
        append_values(lazy, [b"c"], SYSTEM_CLOCK.now_ms())

        def retention_done() -> bool:
            return old.segment_count == 1 and not list(old.directory.glob("*.deleted"))

        wait_until(retention_done, f"retention to leave one segment: {old}")
        assert old.log_start_offset == 6
        assert old.log_end_offset == 7
        wait_until(
            lambda: flushed.recovery_point == flushed.log_end_offset == 2,
            "flush.ms to move the recovery point to 2",
        )
        assert lazy.recovery_point == 0  # flush.ms is unlimited there

        def checkpointed() -> bool:
            try:
                lines = checkpoint_lines(data_dir)
            except FileNotFoundError:
                return False
            return "flushed 0 2" in lines and "lazy 0 0" in lines

        wait_until(checkpointed, "the recovery point checkpoint")
    finally:
        mgr.close()

    assert not any(t.is_alive() for t in new_threads)
    assert (data_dir / fmt.CLEAN_SHUTDOWN_FILE).exists()


def test_close_stops_an_idle_background_thread_promptly(data_dir: Path) -> None:
    threads_before = set(threading.enumerate())
    mgr = LogManager(data_dir, settings=ManagerSettings(flush_check_interval_ms=20))
    new_threads = set(threading.enumerate()) - threads_before
    assert len(new_threads) == 2  # background tasks and the log cleaner
    started = time.monotonic()
    mgr.close()
    assert time.monotonic() - started < 2.0
    assert not any(t.is_alive() for t in new_threads)


def test_no_background_thread_when_disabled(data_dir: Path) -> None:
    threads_before = set(threading.enumerate())
    mgr = LogManager(data_dir, settings=NO_THREADS)
    try:
        assert set(threading.enumerate()) - threads_before == set()
    finally:
        mgr.close()


# --- after close ----------------------------------------------------------------------------


def test_create_topic_after_close_raises(data_dir: Path, open_manager: OpenManager) -> None:
    mgr = open_manager(data_dir)
    mgr.create_topic("t", 1)
    mgr.close()
    with pytest.raises(LogClosedError, match="closed"):
        mgr.create_topic("u", 1)
    assert not (data_dir / "u-0").exists()
    assert not (data_dir / fmt.TOPIC_METADATA_DIR / "u.json").exists()
    assert mgr.topic_names() == ["t"]
    with pytest.raises(LogClosedError):
        mgr.partition("t", 0).append(make_batch([b"late"]))
    assert mgr.run_retention() == 0


@pytest.mark.parametrize(
    "operation",
    [
        pytest.param(lambda m: m.add_partitions("t", 3), id="add_partitions"),
        pytest.param(lambda m: m.delete_topic("t"), id="delete_topic"),
        pytest.param(lambda m: m.alter_config("t", {"retention.ms": 5}), id="alter_config"),
    ],
)
def test_topic_changes_after_close_raise(
    data_dir: Path, open_manager: OpenManager, operation: Callable[[LogManager], object]
) -> None:
    mgr = open_manager(data_dir)
    mgr.create_topic("t", 1)
    mgr.close()
    before = tree(data_dir)
    meta_before = metadata(data_dir, "t")

    with pytest.raises(LogClosedError):
        operation(mgr)
    assert tree(data_dir) == before
    assert metadata(data_dir, "t") == meta_before


# --- helpers of the module ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("orders-3", ("orders", 3)),
        ("orders-0", ("orders", 0)),
        ("a-b-12", ("a-b", 12)),
        ("__consumer_offsets-49", ("__consumer_offsets", 49)),
        ("x.y_z-9999", ("x.y_z", 9999)),
    ],
)
def test_parse_partition_dir(name: str, expected: tuple[str, int]) -> None:
    assert parse_partition_dir(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "orders",
        "-3",
        "orders-",
        "orders-x",
        "orders-+1",
        "orders- 1",
        "orders-1.5",
        "t-0.0123456789abcdef0123456789abcdef-delete",
        fmt.TOPIC_METADATA_DIR,
        fmt.RECOVERY_POINT_CHECKPOINT_FILE,
        "",
        "t-\u00b2",  # superscript two: str.isdigit() is True, int() refuses it
        "t-\u0663",  # Arabic-Indic three: never written by LogStore
    ],
)
def test_parse_partition_dir_rejects_other_names(name: str) -> None:
    assert parse_partition_dir(name) is None


def test_write_file_atomically(tmp_path: Path) -> None:
    target = tmp_path / "file.json"
    write_file_atomically(target, b"first")
    assert target.read_bytes() == b"first"
    write_file_atomically(target, b"second, longer")
    assert target.read_bytes() == b"second, longer"
    write_file_atomically(target, b"")
    assert target.read_bytes() == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.json"]


def test_a_topic_that_fails_halfway_leaves_nothing_behind(tmp_path: Path) -> None:
    import resource

    manager = LogManager(tmp_path / "data", settings=ManagerSettings(background_threads=False))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        with pytest.raises(OSError):
            manager.create_topic("wide", 500)  # needs more descriptors than allowed
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert "wide" not in manager.topic_names()
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.startswith("wide")]
    manager.create_topic("wide", 2)  # the descriptors came back: it works now
    manager.close()


def test_one_partition_the_cleaner_cannot_read_does_not_stop_the_others(data_dir: Path) -> None:
    """A delete-policy topic stores batches without decoding them, so one whose records
    are garbage behind a valid CRC can be there when the topic becomes compacted: its
    failure is logged, and the other compacted partitions are still cleaned."""
    mgr = LogManager(data_dir, settings=NO_THREADS)
    try:
        mgr.create_topic("legacy", 1, {})
        good = rb.read_header(rb.encode_batch([(b"k", b"v", (), TS)], codec=fmt.CODEC_ZSTD))
        fields = (good.attributes, 0, TS, TS, -1, -1, -1, 1)
        legacy = mgr.partition("legacy", 0)
        legacy.append(rb._assemble(0, 0, fields, b"not zstd at all"))
        legacy.roll()
        legacy.append(rb.encode_batch([(b"k", b"v2", (), TS)]))
        mgr.alter_config("legacy", {"cleanup.policy": "compact"})
        mgr.create_topic("table", 1, {"cleanup.policy": "compact"})
        table = mgr.partition("table", 0)
        for i in range(3):
            table.append(rb.encode_batch([(b"k", b"%d" % i, (), TS)]))
            table.roll()
        assert mgr.run_cleaner(force=True) == 2  # table's first two segments
    finally:
        mgr.close()


def _compacted_and_cleaned(mgr: LogManager, name: str) -> PartitionLog:
    mgr.create_topic(name, 1, {"cleanup.policy": "compact", "segment.bytes": 1024})
    part = mgr.partition(name, 0)
    for i in range(60):
        part.append(rb.encode_batch([(b"k%d" % (i % 3), b"v" * 40, (), TS)]))
    assert mgr.run_cleaner(force=True) > 0
    return part


def test_the_cleaner_checkpoint_survives_a_restart(data_dir: Path) -> None:
    mgr = LogManager(data_dir, settings=NO_THREADS)
    part = _compacted_and_cleaned(mgr, "state")
    checkpoint = part.cleaner_checkpoint
    assert checkpoint > 0
    lines = (data_dir / fmt.CLEANER_OFFSET_CHECKPOINT_FILE).read_text().splitlines()
    assert lines == ["0", "1", f"state 0 {checkpoint}"]  # Kafka's format
    mgr.close()

    mgr = LogManager(data_dir, settings=NO_THREADS)
    try:
        reopened = mgr.partition("state", 0)
        assert reopened.cleaner_checkpoint == checkpoint
        assert mgr.run_cleaner() == 0  # nothing new to clean: no pass re-reads the log
    finally:
        mgr.close()


def test_cleaner_checkpoints_of_gone_topics_are_dropped_and_late_ones_clamped(
    data_dir: Path,
) -> None:
    mgr = LogManager(data_dir, settings=NO_THREADS)
    part = _compacted_and_cleaned(mgr, "state")
    end = part.log_end_offset
    mgr.close()
    (data_dir / fmt.CLEANER_OFFSET_CHECKPOINT_FILE).write_text(
        f"0\n2\nstate 0 {end + 100}\ngone 0 5\n"
    )
    mgr = LogManager(data_dir, settings=NO_THREADS)
    try:
        assert mgr.partition("state", 0).cleaner_checkpoint == end
        lines = (data_dir / fmt.CLEANER_OFFSET_CHECKPOINT_FILE).read_text().splitlines()
        assert lines == ["0", "1", f"state 0 {end}"]
        mgr.delete_topic("state")
        mgr.create_topic("state", 1, {"cleanup.policy": "compact"})
        assert mgr.partition("state", 0).cleaner_checkpoint == 0
        assert (data_dir / fmt.CLEANER_OFFSET_CHECKPOINT_FILE).read_text() == "0\n0\n"
    finally:
        mgr.close()


# --- replication: high watermarks and topic ids ---------------------------------------------


def high_watermark_lines(data: Path) -> list[str]:
    text = (data / REPLICATION_OFFSET_CHECKPOINT_FILE).read_text()
    assert text.endswith("\n")
    return text.splitlines()


def test_a_replicated_manager_keeps_high_watermarks_across_a_clean_restart(
    data_dir: Path, open_manager: OpenManager
) -> None:
    mgr = open_manager(data_dir, replicated=True)
    topic = mgr.create_topic("r", 2, topic_id="0123456789abcdef")
    assert topic.topic_id == "0123456789abcdef" == metadata(data_dir, "r")["topic_id"]
    part = mgr.partition("r", 0)
    assert part.replicated and mgr.partition("r", 1).replicated
    part.append(make_batch([b"a", b"b", b"c", b"d"]), leader_epoch=0)
    assert part.high_watermark == 0
    assert part.update_high_watermark(3)
    mgr.close()
    lines = high_watermark_lines(data_dir)
    assert lines[:2] == ["0", "2"] and sorted(lines[2:]) == ["r 0 3", "r 1 0"]

    reopened = open_manager(data_dir, replicated=True)
    assert reopened.topic("r").topic_id == "0123456789abcdef"
    again = reopened.partition("r", 0)
    assert (again.high_watermark, again.log_end_offset) == (3, 4)
    assert [(e.epoch, e.start_offset) for e in again.leader_epoch_cache.entries()] == [(0, 0)]
    reopened.close()
    standalone = open_manager(data_dir)
    assert standalone.partition("r", 0).high_watermark == 4  # the log end, as ever


def test_periodic_high_watermark_checkpoints_are_what_a_crash_restarts_from(
    tmp_path: Path, open_manager: OpenManager
) -> None:
    mgr = open_manager(tmp_path / "live", replicated=True)
    mgr.create_topic("r", 1)
    part = mgr.partition("r", 0)
    part.append(make_batch([b"x"] * 6), leader_epoch=2)
    part.update_high_watermark(2)
    mgr.checkpoint_high_watermarks()
    assert high_watermark_lines(tmp_path / "live") == ["0", "1", "r 0 2"]
    part.update_high_watermark(5)  # not checkpointed when the broker dies
    image = crash_image(mgr, tmp_path / "image")
    recovered = open_manager(image, replicated=True)
    assert recovered.recovered_after_unclean_shutdown
    assert recovered.partition("r", 0).high_watermark == 2


def test_deleted_topics_leave_the_high_watermark_checkpoint(
    data_dir: Path, open_manager: OpenManager
) -> None:
    mgr = open_manager(data_dir, replicated=True)
    mgr.create_topic("keep", 1)
    mgr.create_topic("gone", 1)
    gone = mgr.partition("gone", 0)
    gone.append(make_batch([b"1", b"2"]), leader_epoch=0)
    gone.update_high_watermark(2)
    mgr.checkpoint_high_watermarks()
    assert sorted(high_watermark_lines(data_dir)[2:]) == ["gone 0 2", "keep 0 0"]
    mgr.delete_topic("gone")
    assert high_watermark_lines(data_dir) == ["0", "1", "keep 0 0"]


def test_a_malformed_high_watermark_checkpoint_starts_them_at_the_log_start(
    data_dir: Path, open_manager: OpenManager, caplog: pytest.LogCaptureFixture
) -> None:
    mgr = open_manager(data_dir, replicated=True)
    mgr.create_topic("r", 1)
    mgr.partition("r", 0).append(make_batch([b"1", b"2"]), leader_epoch=0)
    mgr.partition("r", 0).update_high_watermark(2)
    mgr.close()
    (data_dir / REPLICATION_OFFSET_CHECKPOINT_FILE).write_text("0\n5\nr 0 2\n")
    with caplog.at_level("WARNING"):
        reopened = open_manager(data_dir, replicated=True)
    assert reopened.partition("r", 0).high_watermark == 0
    assert any(REPLICATION_OFFSET_CHECKPOINT_FILE in r.getMessage() for r in caplog.records)


def test_a_standalone_manager_writes_no_high_watermark_checkpoint(
    data_dir: Path, open_manager: OpenManager
) -> None:
    mgr = open_manager(data_dir)
    mgr.create_topic("s", 1)
    assert not mgr.partition("s", 0).replicated
    mgr.checkpoint_high_watermarks()
    mgr.close()
    assert not (data_dir / REPLICATION_OFFSET_CHECKPOINT_FILE).exists()
    with pytest.raises(ValueError, match="topic id"):
        open_manager(data_dir).create_topic("t", 1, topic_id="")
