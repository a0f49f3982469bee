"""A bare gRPC server for the raw-streaming ceiling of `bench.compare`.

Run as `python -m bench._grpc_sink`; prints `listening on 127.0.0.1:PORT` and serves two
generic streaming methods with identity (bytes in, bytes out) serializers, so what is
measured is gRPC itself, with no protobuf work (and malloc set up as LogStore's processes
set it, see `logstore.allocator`):

* `/bench.Sink/Upload` (stream -> unary): counts the bytes of every message; answers the
  total as 8 big-endian bytes.
* `/bench.Sink/UploadToFile` (stream -> unary): the same, but first appends every message to
  one new file (no fsync), the least a log must do with a produced batch: the ceiling for
  produce on a machine where writing new pages into the page cache is the slow part.
* `/bench.Sink/Download` (unary -> stream): the request is 16 big-endian bytes, (total
  bytes, message bytes); answers with messages of that size until the total is sent.
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc

from logstore.allocator import keep_freed_memory
from logstore.codec.wire import passthrough

_TOTALS = struct.Struct(">qq")
_COUNT = struct.Struct(">q")


def _upload(requests: Iterator[bytes], context: Any) -> bytes:
    return _COUNT.pack(sum(len(r) for r in requests))


def _upload_to_file(directory: str) -> Callable[[Iterator[bytes], Any], bytes]:
    def upload(requests: Iterator[bytes], context: Any) -> bytes:
        fd, _ = tempfile.mkstemp(dir=directory, suffix=".log")
        total = 0
        try:
            for message in requests:
                view = memoryview(message)
                while view:  # a regular file takes all of it; loop as write(2) allows less
                    view = view[os.write(fd, view) :]
                total += len(message)
        finally:
            os.close(fd)
        return _COUNT.pack(total)

    return upload


def _download(request: bytes, context: Any) -> Iterator[bytes]:
    total, size = _TOTALS.unpack(request)
    message = b"\x00" * size
    sent = 0
    while sent < total:
        yield message
        sent += size


def main() -> None:
    # The same allocator setting as the broker and clients, so the ceiling is not held
    # down by page faults that LogStore's own processes avoid.
    keep_freed_memory()
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=options)
    directory = tempfile.mkdtemp(prefix="bench-sink-")
    handlers = {
        "Upload": grpc.stream_unary_rpc_method_handler(_upload, passthrough, passthrough),
        "UploadToFile": grpc.stream_unary_rpc_method_handler(
            _upload_to_file(directory), passthrough, passthrough
        ),
        "Download": grpc.unary_stream_rpc_method_handler(_download, passthrough, passthrough),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Sink", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print(f"listening on 127.0.0.1:{port}", flush=True)
    done.wait()
    server.stop(1).wait()
    shutil.rmtree(directory, ignore_errors=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
