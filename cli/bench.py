"""`logstore bench ...`: producer, consumer and end-to-end throughput and latency tests.

Modelled on Kafka's kafka-producer-perf-test and kafka-consumer-perf-test. Every run uses
a fresh topic `bench-<uuid8>`; without --bootstrap-server it starts its own broker on a
free loopback port with a temporary data dir, and removes both when done.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import queue
import random
import re
import shutil
import signal
import string
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import click
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from logstore.cli.common import (
    check_bootstrap,
    console,
    fail,
    json_option,
    open_admin,
    print_json,
    probe_broker,
)
from logstore.client.consumer import Consumer
from logstore.client.producer import Producer
from logstore.codec import format as fmt

F = TypeVar("F", bound=Callable[..., Any])

#: how long a self-started broker may take to print its address, and to stop (s)
BROKER_START_TIMEOUT_S = 30.0
BROKER_STOP_TIMEOUT_S = 30.0
#: a consumer that receives nothing for this long has stalled; the run fails (s)
STALL_TIMEOUT_S = 30.0
#: Kafka's perf tools print "MB/sec" meaning MiB/s; kept so numbers compare directly
MB = 1024 * 1024
#: send mode times about this many records (the first of every count/N): a done-callback
#: costs about as much as a send(), so timing many records cut the send rate measured
MAX_LATENCY_SAMPLES = 10_000
#: records per progress-bar refresh in per-record loops; refreshing on every record is costly
PROGRESS_EVERY = 2_000
#: e2e puts the send time (perf_counter_ns) in the first bytes of each value
_STAMP = struct.Struct(">q")
_LISTENING = re.compile(r"listening on (\S+), data in")


# --- the broker and topic a run uses ------------------------------------------------------------


@dataclass
class Target:
    """Where a run sends its records, and what it must clean up afterwards."""

    address: str
    topic: str
    partitions: int
    external: bool
    pid: int | None = None
    data_dir: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "external": self.external,
            "pid": self.pid,
            "data_dir": self.data_dir,
        }


@contextlib.contextmanager
def _local_broker() -> Iterator[tuple[str, int, str]]:
    """A `logstore serve` child on 127.0.0.1:0; yields (address, pid, temp dir).

    A separate process rather than an in-process Broker so the broker's work does not
    share this interpreter's GIL with the clients being measured.
    """
    root = tempfile.mkdtemp(prefix="logstore-bench-")
    log_path = os.path.join(root, "broker.log")
    proc: subprocess.Popen[str] | None = None
    try:
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "logstore.cli.main",
                    "serve",
                    "--data-dir",
                    os.path.join(root, "data"),
                    "--listen",
                    "127.0.0.1:0",
                    "--log-level",
                    "WARNING",
                ],
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                text=True,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
        address = _read_address(proc, log_path)
        probe_broker(address, timeout_s=BROKER_START_TIMEOUT_S)
        yield address, proc.pid, root
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(root, ignore_errors=True)


def _read_address(proc: subprocess.Popen[str], log_path: str) -> str:
    """The HOST:PORT from the broker's first stdout line (it picked a free port)."""
    assert proc.stdout is not None
    line: list[str] = []
    # readline() alone could wait forever on a broker that hangs before printing.
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(BROKER_START_TIMEOUT_S)
    match = _LISTENING.search(line[0]) if line else None
    if match is None:
        with open(log_path, errors="replace") as f:
            tail = " | ".join(f.read().strip().splitlines()[-3:])
        fail(f"the benchmark broker did not start: {tail or 'no output'}")
    return match.group(1)


def _stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM for a clean shutdown; SIGKILL if it does not come in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=BROKER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


@contextlib.contextmanager
def bench_target(bootstrap: str | None, partitions: int) -> Iterator[Target]:
    """A fresh topic on `bootstrap`, or on a broker of our own when it is None."""
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    with contextlib.ExitStack() as stack:
        if bootstrap is None:
            address, pid, root = stack.enter_context(_local_broker())
            target = Target(address, topic, partitions, False, pid, root)
        else:
            address = bootstrap
            target = Target(address, topic, partitions, True)
        with open_admin(address) as admin:
            admin.create_topic(topic, partitions=partitions)
        try:
            yield target
        finally:
            if target.external:
                # The broker outlives the run: leave it as it was found.
                with open_admin(address) as admin:
                    admin.delete_topic(topic)


# --- measuring --------------------------------------------------------------------------------


class Throttle:
    """Holds a loop to `rate` items per second (<= 0: unlimited), like Kafka's throttler.

    Sleeps only when ahead of schedule, so a slow stretch is followed by a catch-up burst
    and the average over the run stays at the rate asked for.
    """

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.start = time.perf_counter()

    def wait(self, done: int) -> None:
        if self.rate <= 0:
            return
        ahead = self.start + done / self.rate - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)


def percentiles(latencies_ms: Sequence[float]) -> dict[str, Any] | None:
    """Nearest-rank p50/p99/p99.9 (so they can only increase), plus count, mean and max."""
    if not latencies_ms:
        return None
    ordered = sorted(latencies_ms)
    n = len(ordered)

    def rank(q: float) -> float:
        return round(ordered[min(n - 1, max(0, math.ceil(q * n) - 1))], 3)

    return {
        "samples": n,
        "avg": round(sum(ordered) / n, 3),
        "p50": rank(0.50),
        "p99": rank(0.99),
        "p999": rank(0.999),
        "max": round(ordered[-1], 3),
    }


def payload(size: int) -> bytes:
    """Random letters, as Kafka's perf test uses: compressible, but not trivially so."""
    rng = random.Random(0)  # fixed: runs with the same options send the same bytes
    return "".join(rng.choices(string.ascii_uppercase, k=size)).encode()


@contextlib.contextmanager
def progress_bar(total: int, label: str, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A rich bar on stderr; yields `update(completed)`. A no-op when not `enabled` or
    when stderr is not a terminal: redrawn bars make no sense in a log file, and rich
    leaves a blank line behind there."""
    if not (enabled and sys.stderr.isatty()):
        yield lambda _completed: None
        return
    bar = Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console(err=True),
        transient=True,
    )
    task = bar.add_task(label, total=total)
    with bar:
        yield lambda completed: bar.update(task, completed=completed)


def rates(count: int, record_size: int, elapsed_s: float) -> dict[str, float]:
    elapsed_s = max(elapsed_s, 1e-9)
    return {
        "elapsed_s": round(elapsed_s, 3),
        "records_per_s": round(count / elapsed_s, 1),
        "mb_per_s": round(count * record_size / elapsed_s / MB, 3),
    }


# --- options ----------------------------------------------------------------------------------


def _optional_bootstrap(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> str | None:
    return None if value is None else check_bootstrap(ctx, param, value)


#: what a run sends when not told: Kafka's perf-test docs use 1,000,000 records of 100
#: bytes, which takes well under 20 s here for produce and consume
DEFAULT_NUM_RECORDS = 1_000_000
DEFAULT_RECORD_SIZE = 100
#: e2e runs at a fixed rate, so its default count is what that rate sends in 4 s
DEFAULT_E2E_RECORDS = 20_000
DEFAULT_E2E_THROUGHPUT = 5_000.0


def common_options(num_records: int) -> Callable[[F], F]:
    """Options every bench command takes; `num_records` is the default count."""

    def decorate(func: F) -> F:
        return _with_common_options(func, num_records)

    return decorate


def _with_common_options(func: F, num_records: int) -> F:
    decorators = [
        click.option(
            "--num-records",
            type=click.IntRange(min=1),
            default=num_records,
            show_default=True,
            help="Records to send.",
        ),
        click.option(
            "--record-size",
            type=click.IntRange(min=1),
            default=DEFAULT_RECORD_SIZE,
            show_default=True,
            help="Value bytes.",
        ),
        click.option("--partitions", type=click.IntRange(min=1), default=1, show_default=True),
        # No LOGSTORE_BOOTSTRAP fallback on purpose: a variable set for everyday commands
        # must not aim a load test at a shared broker.
        click.option(
            "--bootstrap-server",
            "bootstrap",
            metavar="HOST:PORT",
            callback=_optional_bootstrap,
            help="Benchmark this broker [default: start a temporary local one].",
        ),
        json_option,
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def producer_options(func: F) -> F:
    """The producer settings the produce and e2e benchmarks expose."""
    decorators = [
        click.option(
            "--acks", type=click.Choice(["all", "1", "0"]), default="all", show_default=True
        ),
        click.option(
            "--compression",
            type=click.Choice(fmt.COMPRESSION_TYPES),
            default="none",
            show_default=True,
        ),
        click.option(
            "--batch-size", type=click.IntRange(min=1), default=262_144, show_default=True
        ),
        click.option("--linger-ms", type=click.FloatRange(min=0), default=5, show_default=True),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def _producer(
    address: str, acks: str, compression: str, batch_size: int, linger_ms: float
) -> Producer:
    return Producer(
        address,
        acks=acks if acks == "all" else int(acks),
        compression=compression,
        batch_size=batch_size,
        linger_ms=linger_ms,
    )


def _report(result: dict[str, Any], as_json: bool, line: str) -> None:
    if as_json:
        print_json(result)
    else:
        click.echo(line)


def _latency_text(latency: dict[str, Any] | None) -> str:
    if latency is None:
        return ""
    return (
        f", {latency['avg']:.2f} ms avg latency, {latency['max']:.2f} ms max latency, "
        f"{latency['p50']:.2f} ms 50th, {latency['p99']:.2f} ms 99th, "
        f"{latency['p999']:.2f} ms 99.9th"
    )


# --- commands -----------------------------------------------------------------------------------


@click.group()
def bench() -> None:
    """Measure producer, consumer and end-to-end throughput and latency.

    Each run creates a fresh topic bench-<uuid8>. Without --bootstrap-server it starts a
    temporary broker on a free loopback port and removes it and its data afterwards; with
    one, it deletes the topic afterwards. MB/s means MiB of record values per second.

    Without options a run sends 1,000,000 records of 100 bytes (e2e: 20,000 at 5,000/s).

    \b
    Examples:
      logstore bench produce
      logstore bench produce --num-records 500000 --record-size 100 --mode batch
      logstore bench produce --num-records 100000 --record-size 100 --acks 1 --json
      logstore bench consume --num-records 500000 --record-size 100 --group bench
      logstore bench e2e --num-records 20000 --record-size 100 --throughput 5000
    """


@bench.command("produce")
@common_options(DEFAULT_NUM_RECORDS)
@producer_options
@click.option(
    "--throughput",
    type=float,
    default=-1,
    show_default=True,
    metavar="RECORDS_PER_S",
    help="Rate limit; -1 = unlimited.",
)
@click.option(
    "--mode",
    type=click.Choice(["send", "batch"]),
    default="send",
    show_default=True,
    help="send: one send() per record, with latency; batch: send_batch() in chunks.",
)
@click.option(
    "--chunk-records",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="Records per send_batch() call (batch mode).",
)
@click.option(
    "--producers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Producer processes sharing the records (and --throughput); rates are totals.",
)
def produce_cmd(
    num_records: int,
    record_size: int,
    partitions: int,
    bootstrap: str | None,
    as_json: bool,
    acks: str,
    compression: str,
    batch_size: int,
    linger_ms: float,
    throughput: float,
    mode: str,
    chunk_records: int,
    producers: int,
) -> None:
    """Send NUM_RECORDS records as fast as allowed; report records/s, MB/s and latency.

    In send mode, latency is from send() to acknowledgement, sampled on about 10,000
    evenly spaced records.

    \b
    Examples:
      logstore bench produce --num-records 500000 --record-size 100 --mode batch
      logstore bench produce --num-records 200000 --record-size 1000 --compression zstd
    """
    value = payload(record_size)
    settings = (acks, compression, batch_size, linger_ms)
    with (
        bench_target(bootstrap, partitions) as target,
        progress_bar(num_records, "produce", not as_json) as update,
    ):
        job = _ProduceJob(target.address, target.topic, value, mode, chunk_records, settings)
        if producers == 1:
            elapsed, samples = job.run(num_records, throughput, update)
        else:
            elapsed, samples = _produce_in_processes(
                job, num_records, throughput, producers, update
            )
    latency = None if mode == "batch" else percentiles(samples)
    result = {
        "command": "produce",
        "topic": target.topic,
        "mode": mode,
        "producers": producers,
        "num_records": num_records,
        "record_size": record_size,
        "partitions": partitions,
        "acks": acks,
        "compression": compression,
        "batch_size": batch_size,
        "linger_ms": linger_ms,
        "throughput_limit": throughput,
        **rates(num_records, record_size, elapsed),
        "latency_ms": latency,
        "broker": target.as_json(),
    }
    _report(
        result,
        as_json,
        f"{num_records} records sent, {result['records_per_s']:.1f} records/sec "
        f"({result['mb_per_s']:.2f} MB/sec){_latency_text(latency)}.",
    )


@dataclass(frozen=True)
class _ProduceJob:
    """What one producer (in this process or a child) sends; picklable for child processes."""

    address: str
    topic: str
    value: bytes
    mode: str
    chunk: int
    #: (acks, compression, batch_size, linger_ms)
    settings: tuple[str, str, int, float]

    def run(
        self, count: int, rate: float, update: Callable[[int], None]
    ) -> tuple[float, list[float]]:
        """Send `count` records; returns (elapsed s, latency samples in ms)."""
        producer = _producer(self.address, *self.settings)
        try:
            if self.mode == "batch":
                return _produce_batches(
                    producer, self.topic, self.value, count, self.chunk, rate, update
                )
            return _produce_sends(producer, self.topic, self.value, count, rate, update)
        finally:
            producer.close()


def _produce_child(
    job: _ProduceJob,
    count: int,
    rate: float,
    index: int,
    start: Any,
    progress: Any,
    results: Any,
) -> None:
    """Body of one `--producers` child: connect, wait for the others, send, report."""
    try:
        _producer(job.address, *job.settings).close()  # metadata and channel warm-up
        start.wait()
        elapsed, samples = job.run(count, rate, lambda done: progress.__setitem__(index, done))
        results.put((index, elapsed, samples, None))
    except BaseException as exc:  # reported to the parent, which fails the run
        results.put((index, 0.0, [], f"{type(exc).__name__}: {exc}"))


def _produce_in_processes(
    job: _ProduceJob, count: int, rate: float, producers: int, update: Callable[[int], None]
) -> tuple[float, list[float]]:
    """Split `count` over `producers` processes started together; returns (slowest elapsed,
    all latency samples). Processes, not threads: each has its own GIL, as separate
    applications would."""
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(producers)
    progress = ctx.Array("q", producers)
    results = ctx.Queue()
    shares = [count // producers + (i < count % producers) for i in range(producers)]
    children = [
        ctx.Process(
            target=_produce_child,
            args=(job, share, rate / producers, i, start, progress, results),
            daemon=True,
        )
        for i, share in enumerate(shares)
    ]
    for child in children:
        child.start()
    outcomes = []
    try:
        while len(outcomes) < producers:
            try:
                outcomes.append(results.get(timeout=0.2))
            except queue.Empty:
                if not any(c.is_alive() for c in children) and results.empty():
                    fail("a producer process died without reporting")
            update(sum(progress))
    finally:
        for child in children:
            child.join(STALL_TIMEOUT_S)
            if child.is_alive():
                child.kill()
                child.join()
    failed = [error for _, _, _, error in outcomes if error]
    if failed:
        fail(f"{len(failed)} producer process(es) failed, first: {failed[0]}")
    update(count)
    return max(elapsed for _, elapsed, _, _ in outcomes), [
        ms for _, _, samples, _ in outcomes for ms in samples
    ]


def _produce_sends(
    producer: Producer,
    topic: str,
    value: bytes,
    count: int,
    rate: float,
    update: Callable[[int], None],
) -> tuple[float, list[float]]:
    """One send() per record; returns (elapsed s, latency samples in ms).

    Only the first record of every `count // MAX_LATENCY_SAMPLES` gets a done-callback, the
    rest go through a bare send() loop, and the progress bar is updated once per
    PROGRESS_EVERY records, so the loop costs little more than the send() calls themselves.
    """
    latencies: list[float] = []
    errors: list[BaseException] = []

    def timed(started: float) -> Callable[[Future[Any]], None]:
        def done(future: Future[Any]) -> None:
            # runs on the producer's thread the moment the batch is acknowledged
            error = future.exception()
            if error is None:
                latencies.append((time.perf_counter() - started) * 1000)
            else:
                errors.append(error)

        return done

    throttle = Throttle(rate)
    send = producer.send
    step = max(1, count // MAX_LATENCY_SAMPLES)  # records per latency sample
    start = throttle.start = time.perf_counter()
    last: Future[Any] | None = None
    done = shown = 0
    while done < count:
        n = min(step, count - done)
        last = send(topic, value)
        last.add_done_callback(timed(time.perf_counter()))
        for _ in range(n - 1):
            last = send(topic, value)
        done += n
        if rate > 0:
            throttle.wait(done)
        if done - shown >= PROGRESS_EVERY:
            update(done)
            shown = done
    producer.flush()
    elapsed = time.perf_counter() - start
    update(count)
    if last is not None:
        last.result()  # raises what failed the final batch
    if errors:
        fail(f"{len(errors)} sampled record(s) failed, first: {errors[0]}")
    return elapsed, latencies


def _produce_batches(
    producer: Producer,
    topic: str,
    value: bytes,
    count: int,
    chunk: int,
    rate: float,
    update: Callable[[int], None],
) -> tuple[float, list[float]]:
    """send_batch() in chunks of `chunk` records; returns (elapsed s, no latency samples)."""
    values = [value] * chunk  # one list reused: building it is not what is being measured
    throttle = Throttle(rate)
    start = throttle.start = time.perf_counter()
    futures = []
    sent = 0
    while sent < count:
        n = min(chunk, count - sent)
        futures.append(producer.send_batch(topic, values if n == chunk else values[:n]))
        sent += n
        update(sent)
        throttle.wait(sent)
    producer.flush()
    elapsed = time.perf_counter() - start
    for future in futures:
        future.result()  # raises the first batch failure
    return elapsed, []


def _prefill(target: Target, value: bytes, count: int, update: Callable[[int], None]) -> None:
    """Write `count` records spread evenly over the partitions, acks=1 to go fast."""
    chunk = 10_000
    with Producer(target.address, acks=1) as producer:
        futures = []
        sent = 0
        while sent < count:
            n = min(chunk, count - sent)
            part = (sent // chunk) % target.partitions
            futures.append(producer.send_batch(target.topic, [value] * n, partition=part))
            sent += n
            update(sent)
        producer.flush()
        for future in futures:
            future.result()


@bench.command("consume")
@common_options(DEFAULT_NUM_RECORDS)
@click.option(
    "--group",
    help="Consume as a member of group G (subscribe); default: assign() without a group.",
)
@click.option("--max-poll-records", type=click.IntRange(min=1), default=500, show_default=True)
def consume_cmd(
    num_records: int,
    record_size: int,
    partitions: int,
    bootstrap: str | None,
    as_json: bool,
    group: str | None,
    max_poll_records: int,
) -> None:
    """Pre-fill a topic with NUM_RECORDS records, then time poll() reading them all back.

    The time runs from subscribe()/assign() to the last record, so with --group it
    includes joining the group (also reported alone as startup_ms: time to first record).

    \b
    Examples:
      logstore bench consume --num-records 500000 --record-size 100
      logstore bench consume --num-records 500000 --record-size 100 --partitions 4 --group g1
    """
    value = payload(record_size)
    with bench_target(bootstrap, partitions) as target:
        with progress_bar(num_records, "pre-fill", not as_json) as update:
            _prefill(target, value, num_records, update)
        consumer = Consumer(
            target.address,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,  # commits would add work the benchmark does not ask for
            max_poll_records=max_poll_records,
        )
        try:
            with progress_bar(num_records, "consume", not as_json) as update:
                start = time.perf_counter()
                if group is None:
                    consumer.assign([(target.topic, p) for p in range(partitions)])
                else:
                    consumer.subscribe([target.topic])
                first, received, nbytes = _drain(consumer, num_records, update)
                elapsed = time.perf_counter() - start
        finally:
            consumer.close()
    result = {
        "command": "consume",
        "topic": target.topic,
        "group": group,
        "num_records": received,
        "record_size": record_size,
        "partitions": partitions,
        "bytes": nbytes,
        "startup_ms": round((first - start) * 1000, 3),
        **rates(received, record_size, elapsed),
        "broker": target.as_json(),
    }
    _report(
        result,
        as_json,
        f"{received} records consumed, {result['records_per_s']:.1f} records/sec "
        f"({result['mb_per_s']:.2f} MB/sec), {result['startup_ms']:.1f} ms to first record.",
    )


def _drain(consumer: Consumer, count: int, update: Callable[[int], None]) -> tuple[float, int, int]:
    """poll() until `count` records arrived; returns (time of first record, records, bytes)."""
    received = nbytes = 0
    first = 0.0
    last_progress = time.perf_counter()
    while received < count:
        records = consumer.poll(timeout=1.0)
        now = time.perf_counter()
        if not records:
            if now - last_progress > STALL_TIMEOUT_S:
                fail(f"consumer stalled: {received} of {count} records after {STALL_TIMEOUT_S} s")
            continue
        if not received:
            first = now
        last_progress = now
        received += len(records)
        # Every value of a bench topic has the same size: one len() per poll, not a
        # generator step per record, which cost the loop ~10% of its rate.
        nbytes += len(records) * len(records[-1].value or b"")
        update(received)
    return first, received, nbytes


@bench.command("e2e")
@common_options(DEFAULT_E2E_RECORDS)
@producer_options
@click.option(
    "--throughput",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_E2E_THROUGHPUT,
    show_default=True,
    metavar="RECORDS_PER_S",
    help="Fixed send rate.",
)
def e2e_cmd(
    num_records: int,
    record_size: int,
    partitions: int,
    bootstrap: str | None,
    as_json: bool,
    acks: str,
    compression: str,
    batch_size: int,
    linger_ms: float,
    throughput: float,
) -> None:
    """Produce at a fixed rate while a consumer thread measures send-to-poll latency.

    Each value starts with its send time (8 bytes), so --record-size must be at least 8.

    \b
    Examples:
      logstore bench e2e --num-records 20000 --record-size 100 --throughput 5000
      logstore bench e2e --num-records 50000 --record-size 100 --throughput 10000 --acks 1
    """
    if record_size < _STAMP.size:
        raise click.BadParameter(
            f"must be at least {_STAMP.size} for e2e", param_hint="--record-size"
        )
    tail = payload(record_size)[_STAMP.size :]
    with bench_target(bootstrap, partitions) as target:
        reader = _LatencyReader(target, num_records)
        reader.start()
        if not reader.ready.wait(STALL_TIMEOUT_S):
            fail("the consumer did not start")
        producer = _producer(target.address, acks, compression, batch_size, linger_ms)
        try:
            with progress_bar(num_records, "e2e", not as_json) as update:
                throttle = Throttle(throughput)
                start = throttle.start = time.perf_counter()
                last: Future[Any] | None = None
                for i in range(num_records):
                    stamp = _STAMP.pack(time.perf_counter_ns())
                    last = producer.send(target.topic, stamp + tail)
                    if i % PROGRESS_EVERY == 0:
                        update(reader.received)
                    throttle.wait(i + 1)
                producer.flush()
                if last is not None:
                    last.result()  # raises what failed the final batch
                while reader.is_alive():
                    reader.join(0.1)
                    update(reader.received)
                elapsed = time.perf_counter() - start
        finally:
            producer.close()
            reader.stop.set()
            reader.join()
    if reader.error is not None:
        raise reader.error
    result = {
        "command": "e2e",
        "topic": target.topic,
        "num_records": reader.received,
        "record_size": record_size,
        "partitions": partitions,
        "acks": acks,
        "compression": compression,
        "batch_size": batch_size,
        "linger_ms": linger_ms,
        "throughput_limit": throughput,
        **rates(reader.received, record_size, elapsed),
        "latency_ms": percentiles(reader.latencies),
        "broker": target.as_json(),
    }
    _report(
        result,
        as_json,
        f"{reader.received} records end to end at {result['records_per_s']:.1f} records/sec"
        f"{_latency_text(result['latency_ms'])}.",
    )


class _LatencyReader(threading.Thread):
    """Consumes the e2e topic and records, per record, poll time minus the send time."""

    def __init__(self, target: Target, count: int) -> None:
        super().__init__(name="bench-e2e-consumer", daemon=True)
        self.target = target
        self.count = count
        self.received = 0
        self.latencies: list[float] = []
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        # A consumer is used from one thread only: it is built, used and closed here.
        try:
            with Consumer(self.target.address, auto_offset_reset="earliest") as consumer:
                consumer.assign([(self.target.topic, p) for p in range(self.target.partitions)])
                consumer.poll(timeout=0.1)  # resolves positions before the clock starts
                self.ready.set()
                self._read(consumer)
        except BaseException as exc:  # handed to the main thread to raise
            self.error = exc
            self.ready.set()

    def _read(self, consumer: Consumer) -> None:
        unpack = _STAMP.unpack_from
        quiet_since = time.perf_counter()
        while self.received < self.count and not self.stop.is_set():
            records = consumer.poll(timeout=0.5)
            now_ns = time.perf_counter_ns()
            if not records:
                if time.perf_counter() - quiet_since > STALL_TIMEOUT_S:
                    raise TimeoutError(
                        f"e2e consumer stalled at {self.received} of {self.count} records"
                    )
                continue
            quiet_since = time.perf_counter()
            self.latencies.extend((now_ns - unpack(r.value)[0]) / 1e6 for r in records)  # type: ignore[arg-type]
            self.received += len(records)
