"""Kafka clients through LogStore's Kafka listener, beside LogStore's own client over gRPC
and Redis Streams, in one run.

`python -m bench.kafka [--records N] [--record-size B] [--only grpc,confluent,kcat,redis]
[--out DIR] [--no-install]` measures the same records (default 1,000,000 values of 100
bytes, one partition, acks=1) through:

* LogStore's Python client over gRPC: `Producer.send()` per record, `Consumer.poll()`
  without a group (the like-for-like rows: one call per record, as Kafka clients make);
* confluent-kafka (librdkafka) through the Kafka listener: `produce()` per record and
  `consume()` from an assigned partition, unmodified. Consumed twice: with
  `fetch.queue.backoff.ms=10`, and with librdkafka's defaults, under which it stops
  fetching for `fetch.queue.backoff.ms` (1,000 ms) whenever more than
  `queued.min.messages` (100,000) records wait in its queue, so a Python loop that is
  slower than the fetcher measures librdkafka's back-off rather than the broker;
* kcat (Debian's, librdkafka): `kcat -P` from a file of lines and `kcat -C -e`;
* Redis Streams (redis-server, appendonly with fsync every second; redis-py with hiredis
  when it installs): XADD pipelined 1,000 a round trip, XREADGROUP COUNT 1,000 + XACK.

Every system gets the same warm-up first (WARMUP records through the same calls), so no
side is measured cold. The broker is a `logstore serve` child with a temporary data dir,
serving gRPC and Kafka at once; each row writes to its own topic. Writes
`<out>/kafka-<date>.json` and `.md`. Ratios are the point: absolute rates on a small
shared machine move by tens of percent between runs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

from bench.compare import (
    START_TIMEOUT_S,
    Result,
    Unavailable,
    _binary,
    _consume,
    _free_port,
    _module,
    _produce_sends,
    _records_result,
    _redis_runs,
    _server,
    _settle,
    _stop,
    machine,
)

SYSTEMS = ("grpc", "confluent", "kcat", "redis")
#: records each system sends and reads before its timed rows
WARMUP = 20_000
_LISTENING = re.compile(r"listening on (\S+), data in .*; Kafka listener on (\S+)")


@contextlib.contextmanager
def _broker() -> Iterator[tuple[str, str]]:
    """A broker child serving gRPC and Kafka; yields (gRPC address, Kafka bootstrap)."""
    root = tempfile.mkdtemp(prefix="logstore-bench-kafka-")
    proc = None
    try:
        with open(os.path.join(root, "broker.log"), "w") as log:
            proc = subprocess.Popen(
                [
                    sys.executable, "-m", "logstore.cli.main", "serve",
                    "--data-dir", os.path.join(root, "data"),
                    "--listen", "127.0.0.1:0",
                    "--kafka-listen", "127.0.0.1:0",
                    "--log-level", "WARNING",
                ],
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                text=True,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )  # fmt: skip
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = _LISTENING.search(line)
        if match is None:
            raise Unavailable(f"broker did not start: {line!r}")
        yield match.group(1), match.group(2)
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(root, ignore_errors=True)


# --- LogStore over gRPC ---------------------------------------------------------------------


def run_grpc(args: argparse.Namespace, address: str, bootstrap: str, out: Out) -> None:
    value = os.urandom(args.record_size)
    _produce_sends(address, "warm-grpc", value, WARMUP, acks=1)
    _consume(address, "warm-grpc", WARMUP, None)
    _settle()
    s = _produce_sends(address, "grpc", value, args.records, acks=1)
    out(
        _records_result(
            "grpc.send",
            "LogStore gRPC",
            "Producer.send() per record",
            args.records,
            args.record_size,
            s,
        )
    )
    _settle()
    s = _consume(address, "grpc", args.records, None)
    out(
        _records_result(
            "grpc.poll",
            "LogStore gRPC",
            "Consumer.poll(), no group",
            args.records,
            args.record_size,
            s,
        )
    )


# --- confluent-kafka through the Kafka listener ---------------------------------------------


def _confluent_produce(bootstrap: str, topic: str, value: bytes, n: int) -> float:
    from confluent_kafka import Producer

    producer = Producer(
        {"bootstrap.servers": bootstrap, "acks": 1, "queue.buffering.max.messages": 1_000_000}
    )
    failures: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    produce, poll = producer.produce, producer.poll
    start = time.perf_counter()
    for i in range(n):
        while True:
            try:
                produce(topic, value, on_delivery=delivered)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                poll(0.01)
        if i % 10_000 == 0:
            poll(0)
    if producer.flush(START_TIMEOUT_S) != 0:
        raise RuntimeError("confluent-kafka did not deliver every record")
    elapsed = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"{len(failures)} deliveries failed, first: {failures[0]}")
    return elapsed


def _confluent_consume(bootstrap: str, topic: str, n: int, **config: Any) -> float:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{topic}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            **config,
        }
    )
    try:
        start = time.perf_counter()
        consumer.assign([TopicPartition(topic, 0, 0)])
        received = 0
        deadline = time.monotonic() + START_TIMEOUT_S
        while received < n:
            # 1,000 a call: with 10,000, librdkafka 2.16 held one call of each run for
            # ~0.9 s with every record already fetched (measured here), a client quirk
            messages = consumer.consume(num_messages=min(1_000, n - received), timeout=1.0)
            for message in messages:
                if message.error() is not None:
                    raise RuntimeError(f"consume failed: {message.error()}")
            received += len(messages)
            if messages:
                deadline = time.monotonic() + START_TIMEOUT_S
            elif time.monotonic() > deadline:
                raise RuntimeError(f"consume() stalled at {received} of {n}")
        return time.perf_counter() - start
    finally:
        consumer.close()


def run_confluent(args: argparse.Namespace, address: str, bootstrap: str, out: Out) -> None:
    _module("confluent_kafka", "confluent-kafka", args.install)
    value = os.urandom(args.record_size)
    _confluent_produce(bootstrap, "warm-confluent", value, WARMUP)
    _confluent_consume(bootstrap, "warm-confluent", WARMUP)
    _settle()
    s = _confluent_produce(bootstrap, "confluent", value, args.records)
    out(
        _records_result(
            "confluent.produce",
            "confluent-kafka",
            "produce() per record, acks=1",
            args.records,
            args.record_size,
            s,
        )
    )
    _settle()
    s = _confluent_consume(bootstrap, "confluent", args.records, **{"fetch.queue.backoff.ms": 10})
    label = "consume(), fetch.queue.backoff.ms=10"
    out(
        _records_result(
            "confluent.consume", "confluent-kafka", label, args.records, args.record_size, s
        )
    )
    _settle()
    s = _confluent_consume(bootstrap, "confluent", args.records)
    label = "consume(), librdkafka defaults"
    out(
        _records_result(
            "confluent.consume.defaults",
            "confluent-kafka",
            label,
            args.records,
            args.record_size,
            s,
        )
    )


# --- kcat -----------------------------------------------------------------------------------


def _kcat_produce(kcat: str, bootstrap: str, topic: str, path: str, n: int) -> float:
    start = time.perf_counter()
    subprocess.run(
        [kcat, "-P", "-b", bootstrap, "-t", topic, "-p", "0", "-X", "acks=1", "-l", path],
        check=True, timeout=600, capture_output=True,
    )  # fmt: skip
    return time.perf_counter() - start


def _kcat_consume(kcat: str, bootstrap: str, topic: str, n: int) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        [kcat, "-C", "-b", bootstrap, "-t", topic, "-p", "0", "-o", "beginning", "-e", "-q",
         "-c", str(n), "-f", "x"],
        check=True, timeout=600, capture_output=True,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    if len(done.stdout) != n:
        raise RuntimeError(f"kcat read {len(done.stdout)} of {n} records")
    return elapsed


def run_kcat(args: argparse.Namespace, address: str, bootstrap: str, out: Out) -> None:
    kcat = _binary("kcat", "kcat", args.install)
    # kcat -P sends one record per line: values of record_size - 1 letters plus the newline
    line = b"v" * max(1, args.record_size - 1) + b"\n"
    with tempfile.TemporaryDirectory(prefix="bench-kcat-") as tmp:
        warm, full = os.path.join(tmp, "warm"), os.path.join(tmp, "full")
        with open(warm, "wb") as f:
            f.write(line * WARMUP)
        with open(full, "wb") as f:
            f.write(line * args.records)
        _kcat_produce(kcat, bootstrap, "warm-kcat", warm, WARMUP)
        _kcat_consume(kcat, bootstrap, "warm-kcat", WARMUP)
        _settle()
        s = _kcat_produce(kcat, bootstrap, "kcat", full, args.records)
        out(
            _records_result(
                "kcat.produce", "kcat", "kcat -P from a file", args.records, args.record_size, s
            )
        )
        _settle()
        s = _kcat_consume(kcat, bootstrap, "kcat", args.records)
        out(
            _records_result("kcat.consume", "kcat", "kcat -C -e", args.records, args.record_size, s)
        )


# --- Redis Streams --------------------------------------------------------------------------


def run_redis(args: argparse.Namespace, address: str, bootstrap: str, out: Out) -> None:
    binary = _binary("redis-server", "redis-server", args.install)
    # Before redis-py is imported: it picks its reply parser at import, and hiredis's C
    # parser is what a fair peer uses (pure Python parsing measured here at ~31k XADD/s).
    with contextlib.suppress(Unavailable):
        _module("hiredis", "hiredis", args.install)
    redis = _module("redis", "redis", args.install)
    from redis.utils import HIREDIS_AVAILABLE

    if not HIREDIS_AVAILABLE:
        print("note: redis-py parses replies in Python (hiredis unavailable)", file=sys.stderr)
    port = _free_port()
    value = os.urandom(args.record_size)
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp:
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", tmp,
                "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
                "--daemonize", "no"]  # fmt: skip
        with _server(argv, port, "redis-server"):
            client = redis.Redis(host="127.0.0.1", port=port)
            try:
                _redis_runs(client, value, args.records, out)
            finally:
                client.close()


Out = Callable[[Result], None]
RUNNERS: dict[str, Callable[[argparse.Namespace, str, str, Out], None]] = {
    "grpc": run_grpc,
    "confluent": run_confluent,
    "kcat": run_kcat,
    "redis": run_redis,
}

#: (numerator, denominator, what the ratio means, target or None)
RATIOS = (
    ("confluent.produce", "grpc.send", "confluent-kafka produce / LogStore gRPC send()", 0.7),
    ("confluent.consume", "grpc.poll", "confluent-kafka consume / LogStore gRPC poll()", 0.7),
    ("confluent.produce", "redis.xadd", "confluent-kafka produce / Redis XADD pipelined", 5.0),
    ("confluent.consume", "redis.xreadgroup", "confluent-kafka consume / Redis XREADGROUP", 5.0),
    ("confluent.consume.defaults", "grpc.poll", "the same, librdkafka defaults", None),
    ("kcat.produce", "grpc.send", "kcat -P / LogStore gRPC send()", None),
    ("kcat.consume", "grpc.poll", "kcat -C / LogStore gRPC poll()", None),
)


def ratios(results: dict[str, Result]) -> list[dict[str, Any]]:
    rows = []
    for top, bottom, meaning, target in RATIOS:
        a, b = results.get(top), results.get(bottom)
        if a is None or b is None or a.error or b.error or b.rate <= 0:
            continue
        value = a.rate / b.rate
        met = None if target is None else value >= target
        rows.append({"ratio": meaning, "value": value, "target": target, "met": met})
    return rows


def markdown(info: dict[str, Any], args: argparse.Namespace, results: dict[str, Result]) -> str:
    lines = [
        f"# Kafka clients through LogStore's Kafka listener, {info['date']}",
        "",
        f"{args.records:,} records of {args.record_size} bytes, one partition, acks=1; "
        f"every system warmed with {WARMUP:,} records first. Command: "
        f"`python -m bench.kafka {' '.join(info['argv'])}`.",
        "",
        "| system | what | records/s | MB/s |",
        "|---|---|---:|---:|",
    ]
    for r in results.values():
        if r.error:
            lines.append(f"| {r.system} | {r.label} | not run: {r.error} | |")
        else:
            lines.append(
                f"| {r.system} | {r.label} | {r.rate:,.0f} | {r.nbytes / r.seconds / 1e6:.1f} |"
            )
    lines += ["", "| ratio | value | target |", "|---|---:|---|"]
    for row in ratios(results):
        target = (
            ""
            if row["target"] is None
            else f">= {row['target']:g} ({'met' if row['met'] else 'missed'})"
        )
        lines.append(f"| {row['ratio']} | {row['value']:.2f} | {target} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.kafka", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--record-size", type=int, default=100)
    parser.add_argument("--only", default=",".join(SYSTEMS))
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--no-install", dest="install", action="store_false")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    if set(only) - set(SYSTEMS):
        parser.error(f"choose systems from {','.join(SYSTEMS)}")
    date = dt.date.today().isoformat()
    info = machine() | {"date": date, "argv": argv}
    results: dict[str, Result] = {}

    def out(r: Result) -> None:
        results[r.key] = r
        rate = f"not run: {r.error}" if r.error else f"{r.rate:,.0f} records/s"
        print(f"{r.system:16} {r.label:44} {rate}", file=sys.stderr, flush=True)

    with _broker() as (address, bootstrap):
        from logstore import Admin

        with Admin(address) as admin:  # every row's topic, one partition, made the same way
            for system in ("grpc", "confluent", "kcat"):
                admin.create_topic(system, partitions=1)
                admin.create_topic(f"warm-{system}", partitions=1)
        for system in SYSTEMS:
            if system not in only:
                continue
            try:
                RUNNERS[system](args, address, bootstrap, out)
            except Unavailable as exc:
                out(Result(f"{system}.unavailable", system, "run", error=str(exc)))
            except Exception as exc:  # one failing system must not lose the others' numbers
                out(Result(f"{system}.failed", system, "run", error=f"{type(exc).__name__}: {exc}"))
    os.makedirs(args.out, exist_ok=True)
    text = markdown(info, args, results)
    base = os.path.join(args.out, f"kafka-{date}")
    with open(base + ".md", "w") as f:
        f.write(text)
    raw = {
        "machine": info,
        "records": args.records,
        "record_size": args.record_size,
        "results": [asdict(r) for r in results.values()],
        "ratios": ratios(results),
    }
    with open(base + ".json", "w") as f:
        json.dump(raw, f, indent=2)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
