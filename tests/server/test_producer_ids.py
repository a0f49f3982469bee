"""Producer ids are unique across restarts and crashes."""

from __future__ import annotations

from pathlib import Path

import pytest

from logstore.errors import StorageError
from logstore.server.producer_ids import ProducerIdManager


def test_ids_increase_and_never_repeat_after_restart(tmp_path: Path) -> None:
    path = tmp_path / "producer-id-block"
    first = ProducerIdManager(path, block_size=10)
    ids = [first.next_id() for _ in range(15)]
    assert ids == list(range(15))
    second = ProducerIdManager(path, block_size=10)  # like a restart after a crash
    assert second.next_id() == 20  # the rest of the reserved block is skipped


def test_corrupt_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "producer-id-block"
    path.write_text("garbage")
    with pytest.raises(StorageError, match="corrupt"):
        ProducerIdManager(path)
