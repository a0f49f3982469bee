"""Small durable-file helpers shared by the on-disk structures."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from logstore.codec import format as fmt


def fsync_directory(path: Path) -> None:
    """fsync a directory so a rename or create inside it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so a crash leaves either the old or the new content."""
    # A short random temp name: `<name>.tmp` could pass the 255-byte file-name limit.
    tmp = path.with_name(f".{uuid.uuid4().hex}{fmt.TEMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # e.g. a full disk: a half-written temp file would hold on to space for good
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
