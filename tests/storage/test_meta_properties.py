"""meta.properties: one cluster id per data directory, made once, kept across opens."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from logstore.codec import format as fmt
from logstore.errors import StorageError
from logstore.storage.meta_properties import load_or_create_cluster_id, new_cluster_id


def test_an_id_is_made_once_and_kept(tmp_path: Path) -> None:
    first = load_or_create_cluster_id(tmp_path)
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", first)
    assert load_or_create_cluster_id(tmp_path) == first
    text = (tmp_path / fmt.META_PROPERTIES_FILE).read_text()
    assert f"cluster.id={first}\n" in text and "version=1\n" in text


def test_ids_differ_between_directories(tmp_path: Path) -> None:
    assert len({new_cluster_id() for _ in range(100)}) == 100
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert load_or_create_cluster_id(tmp_path / "a") != load_or_create_cluster_id(tmp_path / "b")


def test_a_file_kafka_wrote_is_read_as_it_is(tmp_path: Path) -> None:
    (tmp_path / fmt.META_PROPERTIES_FILE).write_text(
        "#\n#Thu Dec 04 10:00:00 UTC 2026\nnode.id=1\nversion=1\n"
        "cluster.id=MkU3OEVBNTcwNTJENDM2Qk\n"
    )
    assert load_or_create_cluster_id(tmp_path) == "MkU3OEVBNTcwNTJENDM2Qk"


def test_a_file_without_an_id_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / fmt.META_PROPERTIES_FILE).write_text("version=1\n")
    with pytest.raises(StorageError, match=r"meta\.properties has no cluster\.id"):
        load_or_create_cluster_id(tmp_path)
