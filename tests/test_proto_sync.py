"""The committed gRPC code must be what protoc makes of the committed .proto files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GENERATED = REPO / "proto" / "logstore" / "v1"


def _load_generator():
    spec = importlib.util.spec_from_file_location("proto_generate", REPO / "proto" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_matches_proto_files(tmp_path: Path) -> None:
    _load_generator().generate(tmp_path)
    fresh = sorted((tmp_path / "logstore" / "v1").glob("*_pb2*"))
    assert fresh, "protoc produced no modules"
    for path in fresh:
        committed = GENERATED / path.name
        assert committed.exists(), f"{committed} is missing: run python proto/generate.py"
        assert committed.read_bytes() == path.read_bytes(), (
            f"{committed.name} is out of date: run python proto/generate.py"
        )


def test_generated_code_is_importable_from_the_package() -> None:
    from logstore.v1 import logstore_pb2, logstore_pb2_grpc

    assert logstore_pb2.DESCRIPTOR.package == "logstore.v1"
    assert hasattr(logstore_pb2_grpc, "LogStoreServicer")
