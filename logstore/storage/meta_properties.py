"""`meta.properties`: the identity of a data directory, in Kafka's file format.

Kafka writes ``version``, ``cluster.id`` and ``node.id`` here when it first formats a log
directory, and every client sees the cluster id in Metadata. A standalone LogStore broker
does the same: the id is made once, when a data directory first opens, and kept for its
life, so clients and tools see one cluster across restarts. Invariants: the file is written
atomically (a crash leaves the old file or the new one, never a mix); a file that exists is
never rewritten; the id is 22 characters of URL-safe base64 (a random UUID), as Kafka's are.
"""

from __future__ import annotations

import base64
import uuid
from pathlib import Path
from typing import Final

from logstore.codec import format as fmt
from logstore.errors import StorageError
from logstore.storage.fileutil import write_file_atomically

#: the file format version Kafka's KRaft mode writes
_VERSION: Final = "1"


def new_cluster_id() -> str:
    """A random id as Kafka makes them: a UUID's 16 bytes in URL-safe base64, unpadded."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def load_or_create_cluster_id(data_dir: Path, node_id: int = 0) -> str:
    """The `cluster.id` of `data_dir`'s meta.properties, written first if it has none."""
    path = data_dir / fmt.META_PROPERTIES_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        cluster_id = new_cluster_id()
        body = f"version={_VERSION}\ncluster.id={cluster_id}\nnode.id={node_id}\n"
        write_file_atomically(path, body.encode())
        return cluster_id
    except (OSError, UnicodeDecodeError) as exc:
        raise StorageError(f"cannot read {path}: {exc}") from exc
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "cluster.id" and value.strip():
            return value.strip()
    raise StorageError(f"{path} has no cluster.id: restore it, or remove it to make a new id")
