"""Regenerate the Python gRPC code next to the .proto files.

Run `python proto/generate.py` after editing a .proto file. The generated modules are
committed (so installing LogStore needs no protoc) and installed as `logstore.v1`;
tests/test_proto_sync.py fails when they are out of date.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_FILES = sorted(PROTO_ROOT.glob("logstore/v1/*.proto"))


def generate(out_dir: Path) -> None:
    """Run protoc on every LogStore .proto file, writing Python modules under `out_dir`."""
    from grpc_tools import protoc

    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p) for p in PROTO_FILES],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_ROOT)
