"""What the log manager logs when it opens a data dir: one summary after an unclean
shutdown, a line in words per repaired partition, and nothing otherwise."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from logstore.codec import format as fmt
from logstore.codec import record_batch as rb
from logstore.storage.log_manager import LogManager, ManagerSettings

#: every logger of the storage layer (partition_log, log_manager, segment, ...)
STORAGE_LOGGER = "logstore.storage"
SETTINGS = ManagerSettings(background_threads=False)


def _open(data_dir: Path, caplog: pytest.LogCaptureFixture) -> tuple[LogManager, list[str]]:
    """Open a manager on `data_dir`; return it and EVERY warning the storage layer logged
    meanwhile, so a repair warned about twice shows up as a duplicate."""
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        manager = LogManager(data_dir, settings=SETTINGS)
    return manager, _storage_messages(caplog, logging.WARNING)


def _storage_messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    """Messages the storage loggers logged at exactly `level`, in order."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == level
        and (r.name == STORAGE_LOGGER or r.name.startswith(STORAGE_LOGGER + "."))
    ]


def _crash(manager: LogManager) -> None:
    """Stop without the clean-shutdown marker, as a kill -9 would."""
    manager.close()
    (manager.data_dir / fmt.CLEAN_SHUTDOWN_FILE).unlink()


def _segment(data_dir: Path, name: str, suffix: str) -> Path:
    return data_dir / name / fmt.offset_file_name(0, suffix)


def test_new_and_cleanly_closed_data_dirs_log_no_recovery(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manager, messages = _open(tmp_path, caplog)
    assert messages == [] and not manager.recovered_after_unclean_shutdown
    manager.create_topic("t", 3)
    manager.close()
    manager, messages = _open(tmp_path, caplog)
    assert messages == [] and not manager.recovered_after_unclean_shutdown
    manager.close()


def test_idle_partitions_after_a_crash_get_one_summary(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manager, _ = _open(tmp_path, caplog)
    manager.create_topic("idle", 6)
    manager.partition("idle", 0).append(rb.encode_batch([(None, b"v", None, 1_000)]))
    _crash(manager)
    manager, messages = _open(tmp_path, caplog)
    assert manager.recovered_after_unclean_shutdown
    assert messages == [
        "recovered 6 partitions after an unclean shutdown: 0 repaired, 0 bytes of torn tail dropped"
    ]
    manager.close()


def test_each_repair_is_told_in_words(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    manager, _ = _open(tmp_path, caplog)
    manager.create_topic("t", 3)
    for p in range(3):
        manager.partition("t", p).append(rb.encode_batch([(b"k", b"v", None, 1_000)]))
    _crash(manager)
    torn = b"\x00" * 7
    with open(_segment(tmp_path, "t-0", fmt.LOG_SUFFIX), "ab") as f:
        f.write(torn)
    _segment(tmp_path, "t-1", fmt.INDEX_SUFFIX).unlink()
    (tmp_path / "t-1" / "00000000000000000000.log.cleaned").write_bytes(b"")
    manager, messages = _open(tmp_path, caplog)
    assert messages == [
        f"t-0: recovery dropped {len(torn)} bytes of torn tail",
        "t-1: recovery rebuilt 1 missing or corrupt index, removed 1 stray file",
        f"recovered 3 partitions after an unclean shutdown: 2 repaired, "
        f"{len(torn)} bytes of torn tail dropped",
    ]
    manager.close()


def test_the_detail_of_each_repair_is_kept_at_debug(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The file-level detail behind the per-partition warning is there for --log-level debug."""
    manager, _ = _open(tmp_path, caplog)
    manager.create_topic("t", 2)
    for p in range(2):
        manager.partition("t", p).append(rb.encode_batch([(b"k", b"v", None, 1_000)]))
    _crash(manager)
    with open(_segment(tmp_path, "t-0", fmt.LOG_SUFFIX), "ab") as f:
        f.write(b"\x00" * 7)
    _segment(tmp_path, "t-1", fmt.INDEX_SUFFIX).unlink()
    manager, _ = _open(tmp_path, caplog)
    debug = _storage_messages(caplog, logging.DEBUG)
    log_name = fmt.offset_file_name(0, fmt.LOG_SUFFIX)
    assert f"t-0: truncated 7 invalid bytes from the end of {log_name}" in debug
    assert f"t-1: rebuilding missing index of {log_name}" in debug
    manager.close()
