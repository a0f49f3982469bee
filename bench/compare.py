"""LogStore against Redis Streams, NATS JetStream and the physical ceilings, in one run.

`python -m bench.compare [--records N] [--record-size B] [--only logstore,redis,nats,file,grpc]
[--out DIR]` measures, on this machine and in this run, the same records (default one
million 100-byte values) through:

* LogStore: a `logstore serve` child on a free loopback port with a temporary data dir;
  batch produce (send_batch, acks=1 and acks=all), per-record send(), poll() with and
  without a group, 1 MiB batches produced and fetched, acks=all with flush.messages=1
  from several producer threads, and end-to-end latency at 10,000 records/s.
* Redis Streams (redis-server with appendonly, fsync every second): pipelined XADD, and
  XREADGROUP + XACK.
* NATS JetStream (nats-server -js, file storage): windowed async publish, pull fetch.
* ceilings: a buffered file append in 1 MiB writes, raw gRPC streaming of 1 MiB
  messages both ways (no protobuf; see bench/_grpc_sink.py), and the same upload with the
  receiver appending every message to a new file: what a 1 MiB produce must do at least.

Peers missing from the machine are installed (apt-get / pip) unless --no-install; one
that still cannot run is reported as unavailable, not a crash. Every server started here
is stopped at the end, also on error and Ctrl-C. Writes `<out>/<date>.md`, `.json` and
`.png` (chart, when matplotlib is importable). Rates: records/s, and MB/s = 10^6 bytes/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

SYSTEMS = ("logstore", "redis", "nats", "file", "grpc")
#: bytes per "1 MiB" message, batch or write
MIB = 1024 * 1024
#: a 1 MiB-batch record's value: one record per batch, under max.message.bytes (1,048,588)
BIG_VALUE = MIB - 512
#: peers run at least this long (s): fewer records for a slow peer, never more than --records
MIN_PEER_RUN_S = 5.0
#: end-to-end latency is measured at this send rate (records/s), for up to E2E_SECONDS
E2E_RATE = 10_000
E2E_SECONDS = 6
#: the e2e producer's linger (ms): at 0 every record is its own request and the producer
#: falls behind 10,000 records/s, so latency grows without bound; 3 ms batches them
E2E_LINGER_MS = 3
GROUP_COMMIT_THREADS = 4
#: records per send_batch() / pipeline / fetch call
CHUNK = 10_000
PEER_PIPELINE = 1_000
START_TIMEOUT_S = 30.0


@dataclass
class Result:
    """One measurement: `rate` in `unit` (records/s or MB/s); `error` set when not run."""

    key: str
    system: str
    label: str
    unit: str = "records/s"
    rate: float = 0.0
    records: int = 0
    nbytes: int = 0
    seconds: float = 0.0
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Unavailable(Exception):
    """A peer that cannot run here; the message says why."""


def _records_result(key: str, system: str, label: str, n: int, size: int, s: float) -> Result:
    s = max(s, 1e-9)
    return Result(key, system, label, "records/s", n / s, n, n * size, s)


def _mb_result(key: str, system: str, label: str, n: int, nbytes: int, s: float) -> Result:
    s = max(s, 1e-9)
    return Result(key, system, label, "MB/s", nbytes / s / 1e6, n, nbytes, s)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[Any], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Unavailable(f"{what} exited with status {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise Unavailable(f"{what} did not listen within {START_TIMEOUT_S:.0f} s")


def _stop(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL after 10 s: nothing started here outlives the run."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def _server(argv: list[str], port: int, what: str) -> Iterator[subprocess.Popen[Any]]:
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
    )
    try:
        _wait_port(port, proc, what)
        yield proc
    finally:
        _stop(proc)


def _binary(name: str, package: str, install: bool) -> str:
    """Path of `name`, installing the Debian `package` when missing and allowed."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    found = shutil.which(name, path=path)
    if found is None and install and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", package], capture_output=True, timeout=600, check=False
        )
        found = shutil.which(name, path=path)
    if found is None:
        raise Unavailable(f"{name} not found (apt-get install {package})")
    return found


def _module(name: str, pip_name: str, install: bool) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        if not install:
            raise Unavailable(f"python package {pip_name} missing") from None
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", pip_name], capture_output=True, timeout=600
    )
    importlib.invalidate_caches()
    try:
        return importlib.import_module(name)
    except ImportError:
        raise Unavailable(f"pip install {pip_name} failed ({done.returncode})") from None


def _peer_count(probe_rate: float, limit: int) -> int:
    """Records for a peer run of at least MIN_PEER_RUN_S at `probe_rate`, at most `limit`."""
    return max(1, min(limit, int(probe_rate * MIN_PEER_RUN_S * 1.2)))


# --- LogStore ------------------------------------------------------------------------------------


def _produce_batches(address: str, topic: str, value: bytes, n: int, **options: Any) -> float:
    from logstore.client.producer import Producer

    values = [value] * CHUNK
    with Producer(address, **options) as producer:
        start = time.perf_counter()
        futures = []
        sent = 0
        while sent < n:
            k = min(CHUNK, n - sent)
            futures.append(producer.send_batch(topic, values if k == CHUNK else values[:k]))
            sent += k
        producer.flush()
        elapsed = time.perf_counter() - start
        for future in futures:
            future.result()
    return elapsed


def _produce_sends(address: str, topic: str, value: bytes, n: int, **options: Any) -> float:
    from logstore.client.producer import Producer

    with Producer(address, **options) as producer:
        send = producer.send
        start = time.perf_counter()
        last = None
        for _ in range(n):
            last = send(topic, value)
        producer.flush()
        elapsed = time.perf_counter() - start
        if last is not None:
            last.result()
    return elapsed


def _consume(address: str, topic: str, n: int, group: str | None, **options: Any) -> float:
    from logstore.client.consumer import Consumer

    consumer = Consumer(
        address, group_id=group, auto_offset_reset="earliest", enable_auto_commit=False, **options
    )
    try:
        start = time.perf_counter()
        if group is None:
            consumer.assign([(topic, 0)])
        else:
            consumer.subscribe([topic])
        received = 0
        quiet = time.monotonic()
        while received < n:
            records = consumer.poll(timeout=1.0)
            if records:
                received += len(records)
                quiet = time.monotonic()
            elif time.monotonic() - quiet > START_TIMEOUT_S:
                raise RuntimeError(f"consumer stalled at {received} of {n} records")
        return time.perf_counter() - start
    finally:
        consumer.close()


def _group_commit(address: str, topic: str, value: bytes, n: int, acks: Any) -> float:
    """GROUP_COMMIT_THREADS threads, one Producer each, send_batch of 1,000 records."""
    per_thread = max(1, n // GROUP_COMMIT_THREADS)
    errors: list[BaseException] = []
    barrier = threading.Barrier(GROUP_COMMIT_THREADS + 1)

    def run() -> None:
        from logstore.client.producer import Producer

        try:
            values = [value] * 1_000
            with Producer(address, acks=acks) as producer:
                barrier.wait()
                futures = []
                for i in range(0, per_thread, 1_000):
                    futures.append(producer.send_batch(topic, values[: min(1_000, per_thread - i)]))
                producer.flush()
                for future in futures:
                    future.result()
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, daemon=True) for _ in range(GROUP_COMMIT_THREADS)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return elapsed


def _e2e(address: str, topic: str, size: int, n: int) -> tuple[float, dict[str, Any] | None]:
    """Send at E2E_RATE records/s while a consumer thread times send -> poll per record."""
    from logstore.cli.bench import _STAMP, Target, Throttle, _LatencyReader, payload, percentiles
    from logstore.client.producer import Producer

    reader = _LatencyReader(Target(address, topic, 1, True), n)
    reader.start()
    if not reader.ready.wait(START_TIMEOUT_S):
        raise RuntimeError("the e2e consumer did not start")
    tail = payload(max(size, _STAMP.size))[_STAMP.size :]
    try:
        with Producer(address, acks=1, linger_ms=E2E_LINGER_MS) as producer:
            throttle = Throttle(E2E_RATE)
            start = throttle.start = time.perf_counter()
            for i in range(n):
                producer.send(topic, _STAMP.pack(time.perf_counter_ns()) + tail)
                throttle.wait(i + 1)
            producer.flush()
        reader.join(START_TIMEOUT_S)
        elapsed = time.perf_counter() - start
    finally:
        reader.stop.set()
        reader.join()
    if reader.error is not None:
        raise reader.error
    return elapsed, percentiles(reader.latencies)


def _settle() -> None:
    """Write back every dirty page before a measurement, so the disk is not still writing
    the previous row's data (the 1 MiB rows leave over a gigabyte) while the next row is
    timed. Before this, the end-to-end row (timed right after them) gave p99 of 10.7-14.2 ms
    in two runs; with it, 5.9 and 6.5 ms."""
    os.sync()


def run_logstore(args: argparse.Namespace, out: Callable[[Result], None]) -> None:
    from logstore.cli.bench import _local_broker, payload
    from logstore.client.admin import Admin

    n, size = args.records, args.record_size
    value = payload(size)
    with _local_broker() as (address, _pid, _root), Admin(address) as admin:
        for name, config in (
            ("batch1", {}),
            ("batchall", {}),
            ("send", {}),
            ("big", {}),
            ("gc1", {}),
            ("gcall", {"flush.messages": "1"}),
            ("e2e", {}),
        ):
            admin.create_topic(name, partitions=1, config=config)
        _settle()
        s = _produce_batches(address, "batch1", value, n, acks=1)
        out(_records_result("ls.batch.acks1", "LogStore", "produce send_batch acks=1", n, size, s))
        _settle()
        s = _produce_batches(address, "batchall", value, n, acks="all")
        out(
            _records_result(
                "ls.batch.acksall", "LogStore", "produce send_batch acks=all", n, size, s
            )
        )
        _settle()
        s = _produce_sends(address, "send", value, n, acks=1)
        out(_records_result("ls.send", "LogStore", "produce send() per record acks=1", n, size, s))
        _settle()
        s = _consume(address, "batch1", n, None)
        out(_records_result("ls.poll", "LogStore", "consume poll() no group", n, size, s))
        _settle()
        s = _consume(address, "batch1", n, "bench-compare")
        out(_records_result("ls.poll.group", "LogStore", "consume poll() with group", n, size, s))

        big = max(4, args.big_mib * MIB // BIG_VALUE)
        big_value = payload(BIG_VALUE)
        _settle()
        s = _produce_batches(address, "big", big_value, big, acks=1, batch_size=MIB)
        out(
            _mb_result(
                "ls.big.produce",
                "LogStore",
                "1 MiB batches produce acks=1",
                big,
                big * BIG_VALUE,
                s,
            )
        )
        _settle()
        s = _consume(address, "big", big, None, max_poll_records=16)
        out(
            _mb_result(
                "ls.big.fetch", "LogStore", "1 MiB batches fetch (poll)", big, big * BIG_VALUE, s
            )
        )

        _settle()
        s = _group_commit(address, "gc1", value, n, 1)
        gc_n = (n // GROUP_COMMIT_THREADS) * GROUP_COMMIT_THREADS
        label = f"{GROUP_COMMIT_THREADS} producer threads acks=1"
        out(_records_result("ls.gc.acks1", "LogStore", label, gc_n, size, s))
        _settle()
        s = _group_commit(address, "gcall", value, n, "all")
        label = f"{GROUP_COMMIT_THREADS} producer threads acks=all flush.messages=1"
        out(_records_result("ls.gc.fsync", "LogStore", label, gc_n, size, s))

        e2e_n = min(n, E2E_RATE * E2E_SECONDS)
        _settle()
        s, latency = _e2e(address, "e2e", size, e2e_n)
        result = _records_result(
            "ls.e2e", "LogStore", f"end to end at {E2E_RATE:,} records/s", e2e_n, size, s
        )
        result.extra["latency_ms"] = latency
        out(result)


# --- Redis Streams ------------------------------------------------------------------------------


def run_redis(args: argparse.Namespace, out: Callable[[Result], None]) -> None:
    binary = _binary("redis-server", "redis-server", args.install)
    redis = _module("redis", "redis", args.install)
    port = _free_port()
    size = args.record_size
    value = os.urandom(size)
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp:
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", tmp]
        argv += [
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--daemonize",
            "no",
        ]
        with _server(argv, port, "redis-server"):
            client = redis.Redis(host="127.0.0.1", port=port)
            try:
                _redis_runs(client, value, args.records, out)
            finally:
                client.close()


def _xadd(client: Any, stream: str, value: bytes, n: int) -> float:
    start = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(stream, {"v": value})
        if (i + 1) % PEER_PIPELINE == 0:
            pipe.execute()
    pipe.execute()
    return time.perf_counter() - start


def _xreadgroup(client: Any, stream: str, group: str, n: int) -> float:
    client.xgroup_create(stream, group, id="0")
    start = time.perf_counter()
    received = 0
    while received < n:
        answer = client.xreadgroup(group, "c1", {stream: ">"}, count=PEER_PIPELINE, block=1000)
        if not answer:
            raise RuntimeError(f"XREADGROUP stalled at {received} of {n}")
        ids = [entry[0] for entry in answer[0][1]]
        client.xack(stream, group, *ids)
        received += len(ids)
    return time.perf_counter() - start


def _redis_runs(client: Any, value: bytes, limit: int, out: Callable[[Result], None]) -> None:
    size = len(value)
    probe = min(limit, 20_000)
    rate = probe / _xadd(client, "probe", value, probe)
    n = _peer_count(rate, limit)
    s = _xadd(client, "s", value, n)
    out(
        _records_result(
            "redis.xadd", "Redis Streams", f"XADD pipelined x{PEER_PIPELINE}", n, size, s
        )
    )
    s = _xreadgroup(client, "s", "g", n)
    label = f"XREADGROUP COUNT {PEER_PIPELINE} + XACK"
    out(_records_result("redis.xreadgroup", "Redis Streams", label, n, size, s))


# --- NATS JetStream ------------------------------------------------------------------------------


def run_nats(args: argparse.Namespace, out: Callable[[Result], None]) -> None:
    binary = _binary("nats-server", "nats-server", args.install)
    nats = _module("nats", "nats-py", args.install)
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="bench-nats-") as tmp:
        argv = [binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", tmp]
        with _server(argv, port, "nats-server"):
            asyncio.run(_nats_runs(nats, port, os.urandom(args.record_size), args.records, out))


async def _nats_publish(js: Any, subject: str, value: bytes, n: int) -> float:
    """Async publishes with at most PEER_PIPELINE acks outstanding, all acks awaited."""
    start = time.perf_counter()
    window: list[Any] = []
    for _ in range(n):
        window.append(await js.publish_async(subject, value))
        if len(window) >= PEER_PIPELINE:
            await asyncio.gather(*window)
            window.clear()
    await asyncio.gather(*window)
    return time.perf_counter() - start


async def _nats_runs(
    nats: Any, port: int, value: bytes, limit: int, out: Callable[[Result], None]
) -> None:
    from nats.js.api import AckPolicy, ConsumerConfig, StorageType

    size = len(value)
    nc = await nats.connect(f"nats://127.0.0.1:{port}")
    try:
        js = nc.jetstream(publish_async_max_pending=PEER_PIPELINE * 2)
        await js.add_stream(name="PROBE", subjects=["probe"], storage=StorageType.FILE)
        await js.add_stream(name="BENCH", subjects=["bench"], storage=StorageType.FILE)
        probe = min(limit, 20_000)
        rate = probe / await _nats_publish(js, "probe", value, probe)
        n = _peer_count(rate, limit)
        s = await _nats_publish(js, "bench", value, n)
        label = f"JetStream publish_async, window {PEER_PIPELINE}"
        out(_records_result("nats.publish", "NATS JetStream", label, n, size, s))
        # AckPolicy.ALL: one ack per fetched batch acknowledges it all, as XACK of the ids does
        config = ConsumerConfig(ack_policy=AckPolicy.ALL, max_ack_pending=-1)
        sub = await js.pull_subscribe("bench", durable="d", stream="BENCH", config=config)
        start = time.perf_counter()
        received = 0
        while received < n:
            msgs = await sub.fetch(batch=min(PEER_PIPELINE, n - received), timeout=5)
            await msgs[-1].ack()
            received += len(msgs)
        s = time.perf_counter() - start
        label = f"pull fetch batch {PEER_PIPELINE} + ack (AckPolicy.ALL)"
        out(_records_result("nats.fetch", "NATS JetStream", label, n, size, s))
    finally:
        await nc.close()


# --- ceilings ------------------------------------------------------------------------------------


def run_file(args: argparse.Namespace, out: Callable[[Result], None]) -> None:
    total = args.records * args.record_size
    chunk = b"\x00" * MIB
    with tempfile.TemporaryDirectory(prefix="bench-file-") as tmp:
        path = os.path.join(tmp, "append.log")
        start = time.perf_counter()
        with open(path, "ab") as f:
            written = 0
            while written < total:
                k = min(MIB, total - written)
                f.write(chunk if k == MIB else chunk[:k])
                written += k
        s = time.perf_counter() - start
    result = _mb_result("file.append", "ceiling", "file append, 1 MiB writes", 0, total, s)
    result.records = args.records
    result.extra["records_per_s"] = args.records / max(s, 1e-9)
    out(result)


def _timed_upload(upload: Callable[[Iterator[bytes]], bytes], count: int) -> float:
    """Seconds to stream `count` 1 MiB messages through `upload`, checking the total."""
    message = b"\x00" * MIB
    start = time.perf_counter()
    answer = upload(message for _ in range(count))
    s = time.perf_counter() - start
    if struct.unpack(">q", answer)[0] != count * MIB:
        raise RuntimeError("the gRPC sink counted a different total")
    return s


def run_grpc(args: argparse.Namespace, out: Callable[[Result], None]) -> None:
    import grpc

    from logstore.allocator import keep_freed_memory

    keep_freed_memory()  # as LogStore's clients do; the sink does the same

    count = max(4, args.big_mib)
    total = count * MIB
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench._grpc_sink"],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    try:
        assert proc.stdout is not None
        match = re.search(r"listening on (\S+)", proc.stdout.readline())
        if match is None:
            raise Unavailable("the gRPC sink did not start")
        options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
        with grpc.insecure_channel(match.group(1), options=options) as channel:
            grpc.channel_ready_future(channel).result(timeout=START_TIMEOUT_S)
            identity = lambda b: b  # noqa: E731
            download = channel.unary_stream("/bench.Sink/Download", identity, identity)
            for key, method, what in (
                ("grpc.up", "Upload", "raw gRPC stream client->server, 1 MiB"),
                ("grpc.up.file", "UploadToFile", "raw gRPC stream client->server + file append"),
            ):
                _settle()
                upload = channel.stream_unary(f"/bench.Sink/{method}", identity, identity)
                s = _timed_upload(upload, count)
                out(_mb_result(key, "ceiling", what, count, total, s))
            _settle()
            start = time.perf_counter()
            got = sum(len(m) for m in download(struct.pack(">qq", total, MIB)))
            s = time.perf_counter() - start
            if got != total:
                raise RuntimeError("the gRPC download came up short")
            out(
                _mb_result(
                    "grpc.down", "ceiling", "raw gRPC stream server->client, 1 MiB", count, total, s
                )
            )
    finally:
        _stop(proc)
        if proc.stdout is not None:
            proc.stdout.close()


RUNNERS: dict[str, Callable[[argparse.Namespace, Callable[[Result], None]], None]] = {
    "logstore": run_logstore,
    "redis": run_redis,
    "nats": run_nats,
    "file": run_file,
    "grpc": run_grpc,
}
#: what each system's rows are, so an unavailable one still shows in the table
PLANNED = {
    "logstore": ["ls.batch.acks1"],
    "redis": ["redis.xadd", "redis.xreadgroup"],
    "nats": ["nats.publish", "nats.fetch"],
    "file": ["file.append"],
    "grpc": ["grpc.up", "grpc.up.file", "grpc.down"],
}


# --- report --------------------------------------------------------------------------------------


def _rate(results: dict[str, Result], key: str) -> float | None:
    r = results.get(key)
    return r.rate if r is not None and r.error is None else None


def ratios(results: dict[str, Result]) -> list[tuple[str, float | None]]:
    """(what, LogStore / other) for each comparison; None when a side is missing."""
    pairs = [
        ("send_batch acks=1 / Redis XADD", "ls.batch.acks1", "redis.xadd"),
        ("send_batch acks=1 / NATS publish", "ls.batch.acks1", "nats.publish"),
        ("send() / Redis XADD", "ls.send", "redis.xadd"),
        ("poll() / Redis XREADGROUP", "ls.poll", "redis.xreadgroup"),
        ("poll() / NATS fetch", "ls.poll", "nats.fetch"),
        ("1 MiB produce / raw gRPC upload", "ls.big.produce", "grpc.up"),
        ("1 MiB fetch / raw gRPC download", "ls.big.fetch", "grpc.down"),
        ("1 MiB produce / raw gRPC upload + file append", "ls.big.produce", "grpc.up.file"),
        ("acks=all flush.messages=1 / acks=1 (threads)", "ls.gc.fsync", "ls.gc.acks1"),
    ]
    out = []
    for what, a, b in pairs:
        x, y = _rate(results, a), _rate(results, b)
        out.append((what, x / y if x is not None and y else None))
    return out


def targets(results: dict[str, Result]) -> list[tuple[str, str, str]]:
    """(target, measured, PASS/MISS/n/a)."""
    ratio = dict(ratios(results))
    rows: list[tuple[str, str, str]] = []

    def check(what: str, value: float | None, goal: float, fmt: str) -> None:
        if value is None:
            rows.append((what, "-", "n/a"))
        else:
            rows.append((what, fmt.format(value), "PASS" if value >= goal else "MISS"))

    check("batch produce >= 1,000,000 records/s", _rate(results, "ls.batch.acks1"), 1e6, "{:,.0f}")
    check("batch produce >= 10x Redis XADD", ratio["send_batch acks=1 / Redis XADD"], 10, "{:.1f}x")
    check("send() >= 300,000 records/s", _rate(results, "ls.send"), 3e5, "{:,.0f}")
    check("poll() >= 500,000 records/s", _rate(results, "ls.poll"), 5e5, "{:,.0f}")
    check("poll() >= 5x Redis XREADGROUP", ratio["poll() / Redis XREADGROUP"], 5, "{:.1f}x")
    check(
        "1 MiB produce >= 50% of raw gRPC", ratio["1 MiB produce / raw gRPC upload"], 0.5, "{:.0%}"
    )
    check("1 MiB fetch >= 50% of raw gRPC", ratio["1 MiB fetch / raw gRPC download"], 0.5, "{:.0%}")
    check(
        "acks=all flush.messages=1 >= 30% of acks=1",
        ratio["acks=all flush.messages=1 / acks=1 (threads)"],
        0.3,
        "{:.0%}",
    )
    e2e = results.get("ls.e2e")
    p99 = None
    if e2e is not None and e2e.error is None and e2e.extra.get("latency_ms"):
        p99 = e2e.extra["latency_ms"]["p99"]
    if p99 is None:
        rows.append(("e2e p99 <= 10 ms at 10,000 records/s", "-", "n/a"))
    else:
        rows.append(
            (
                "e2e p99 <= 10 ms at 10,000 records/s",
                f"{p99:.2f} ms",
                "PASS" if p99 <= 10 else "MISS",
            )
        )
    return rows


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_start": os.getloadavg(),
    }


def _fmt_rate(r: Result) -> str:
    if r.error is not None:
        return f"unavailable ({r.error})"
    text = f"{r.rate:,.0f} {r.unit}" if r.unit == "records/s" else f"{r.rate:,.1f} {r.unit}"
    if r.unit == "records/s":
        text += f" ({r.nbytes / r.seconds / 1e6:,.1f} MB/s)"
    return text


def markdown(info: dict[str, Any], args: argparse.Namespace, results: dict[str, Result]) -> str:
    lines = [
        f"# LogStore vs Redis Streams vs NATS JetStream — {info['date']}",
        "",
        f"Machine: {info['cores']} cores, {info['cpu']}, Python {info['python']}, "
        f"{info['platform']}. Load average at start {info['loadavg_start']}, at end "
        f"{info.get('loadavg_end')}: other work on the machine slows every side; compare "
        "ratios from the same run.",
        "",
        f"Command: `python -m bench.compare {' '.join(info['argv'])}`. Records of "
        f"{args.record_size} bytes; LogStore and the file ceiling use {args.records:,} "
        f"records; the 1 MiB rows (LogStore records of {BIG_VALUE:,} bytes, one per batch, "
        f"and raw gRPC messages of 1 MiB) move {args.big_mib:,} MiB; "
        f"peers as many as fill >= {MIN_PEER_RUN_S:.0f} s (at most {args.records:,}). "
        "One client process, loopback; MB/s = 10^6 bytes/s of record values.",
        "",
        "## Measurements",
        "",
        "| system | measurement | records | seconds | rate |",
        "|---|---|---:|---:|---|",
    ]
    for r in results.values():
        lines.append(
            f"| {r.system} | {r.label} | {r.records:,} | {r.seconds:.2f} | {_fmt_rate(r)} |"
        )
    e2e = results.get("ls.e2e")
    if e2e is not None and e2e.extra.get("latency_ms"):
        lat = e2e.extra["latency_ms"]
        lines += [
            "",
            f"End-to-end latency at {E2E_RATE:,} records/s (acks=1, linger_ms={E2E_LINGER_MS}, "
            "send -> poll): "
            f"p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms, p99.9 {lat['p999']:.2f} ms, "
            f"max {lat['max']:.2f} ms over {lat['samples']:,} records.",
        ]
    lines += [
        "",
        "## Ratios (LogStore / other, same run)",
        "",
        "| comparison | ratio |",
        "|---|---:|",
    ]
    for what, value in ratios(results):
        lines.append(f"| {what} | {'-' if value is None else f'{value:.2f}x'} |")
    lines += ["", "## Targets", "", "| target | measured | result |", "|---|---|---|"]
    for what, measured, verdict in targets(results):
        lines.append(f"| {what} | {measured} | {verdict} |")
    lines += [
        "",
        "Notes: Redis runs with appendonly yes, appendfsync everysec (fsync once a second, "
        "like LogStore acks=1 without flush.messages); NATS JetStream uses file storage "
        "(its default sync interval). LogStore acks=all fsyncs before answering. The "
        "group-commit rows use "
        f"{GROUP_COMMIT_THREADS} threads in this process, one Producer each, send_batch of "
        "1,000 records. The file ceilings do not fsync. A 1 MiB produce writes new pages "
        "into the page cache; where the kernel must first get those pages from the host (a "
        "virtual machine that hands freed memory back), that write is slower than gRPC, "
        "and the upload + file append row shows how much.",
        "",
    ]
    return "\n".join(lines)


def chart(path: str, results: dict[str, Result]) -> bool:
    """A PNG of the records/s and MB/s rows; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ok = [r for r in results.values() if r.error is None and r.key != "ls.e2e"]
    groups = [[r for r in ok if r.unit == "records/s"], [r for r in ok if r.unit == "MB/s"]]
    fig, axes = plt.subplots(2, 1, figsize=(10, 9), gridspec_kw={"height_ratios": [3, 1.3]})
    colors = {"LogStore": "tab:blue", "Redis Streams": "tab:red", "NATS JetStream": "tab:green"}
    for ax, rows, unit in zip(axes, groups, ("records/s", "MB/s"), strict=True):
        labels = [f"{r.system}: {r.label}" for r in rows]
        ax.barh(
            labels, [r.rate for r in rows], color=[colors.get(r.system, "tab:gray") for r in rows]
        )
        ax.invert_yaxis()
        ax.set_xlabel(unit)
        ax.tick_params(axis="y", labelsize=8)
    axes[0].set_title("LogStore vs Redis Streams vs NATS JetStream (same machine, same run)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _out_path(out_dir: str, date: str, ext: str) -> str:
    return os.path.join(out_dir, f"{date}.{ext}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.compare", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--record-size", type=int, default=100)
    parser.add_argument("--only", default=",".join(SYSTEMS), help="comma-separated subset")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument(
        "--big-mib", type=int, default=512, help="MiB sent in the 1 MiB-batch and gRPC runs"
    )
    parser.add_argument("--no-install", dest="install", action="store_false")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; choose from {','.join(SYSTEMS)}")
    if args.record_size < 8 or args.records < 1:
        parser.error("--record-size must be >= 8 and --records >= 1")
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop every server started here.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    date = dt.date.today().isoformat()
    info = machine() | {"date": date, "argv": argv}
    results: dict[str, Result] = {}

    def out(r: Result) -> None:
        results[r.key] = r
        print(f"{r.system:15} {r.label:48} {_fmt_rate(r)}", file=sys.stderr, flush=True)

    for system in SYSTEMS:
        if system not in only:
            continue
        try:
            _settle()
            RUNNERS[system](args, out)
        except Unavailable as exc:
            for key in PLANNED[system]:
                if key not in results:
                    out(Result(key, system, key, error=str(exc)))
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # one failing peer must not lose the others' numbers
            out(Result(f"{system}.failed", system, "run", error=f"{type(exc).__name__}: {exc}"))
    info["loadavg_end"] = os.getloadavg()
    os.makedirs(args.out, exist_ok=True)
    text = markdown(info, args, results)
    with open(_out_path(args.out, date, "md"), "w") as f:
        f.write(text)
    raw = {
        "machine": info,
        "records": args.records,
        "record_size": args.record_size,
        "results": [asdict(r) for r in results.values()],
        "ratios": dict(ratios(results)),
        "targets": [
            dict(zip(("target", "measured", "result"), t, strict=True)) for t in targets(results)
        ],
    }
    with open(_out_path(args.out, date, "json"), "w") as f:
        json.dump(raw, f, indent=2)
    chart(_out_path(args.out, date, "png"), results)
    print(text)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the servers were stopped on the way out
        print("interrupted; no results written", file=sys.stderr)
        sys.exit(130)
