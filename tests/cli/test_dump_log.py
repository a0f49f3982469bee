"""`logstore dump-log` on segments a real broker wrote, intact and damaged."""

from __future__ import annotations

import re
import shutil
import struct
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from logstore.cli.main import cli
from logstore.client.producer import Producer
from logstore.codec import format as fmt
from logstore.codec import record_batch as rb
from tests.cli.conftest import run_cli
from tests.codec import kafka_peers as peers
from tests.server.conftest import BrokerProcess

SEGMENT = "00000000000000000000"
PLAIN_BATCHES = 5


@pytest.fixture
def segment(broker: BrokerProcess, tmp_path: Path) -> Path:
    """A copy of a live segment of six one-record batches (the last zstd), indexed per batch."""
    run_cli(
        "topics", "create", "seg", "--config", "index.interval.bytes=0", bootstrap=broker.address
    )
    start = int(time.time() * 1000) - 60_000
    with Producer(broker.address) as producer:
        for i in range(PLAIN_BATCHES):
            # one record per batch: result() waits for each acknowledgement; rising
            # timestamps give the time index an entry per batch
            value = f"value-{i}".encode()
            headers = {"h": b"v"}
            producer.send("seg", value, b"k", headers, timestamp_ms=start + i).result()
    with Producer(broker.address, compression="zstd") as producer:
        producer.send("seg", value=b"z" * 300, timestamp_ms=start + PLAIN_BATCHES).result()
    copy = tmp_path / "copy"
    shutil.copytree(broker.data_dir / "seg-0", copy)
    return copy / f"{SEGMENT}.log"


def dump(*args: str) -> Result:
    return CliRunner().invoke(cli, ["dump-log", *args])


def batch_positions(log: Path) -> list[int]:
    return [pos for pos, _ in rb.iter_batches(log.read_bytes())]


def test_intact_segment_is_described_batch_by_batch(segment: Path) -> None:
    result = dump(str(segment))
    assert result.exit_code == 0, result.output
    batches = [line for line in result.stdout.splitlines() if line.startswith("baseOffset:")]
    assert len(batches) == PLAIN_BATCHES + 1
    first = batches[0]
    for field in (
        "baseOffset: 0",
        "lastOffset: 0",
        "count: 1",
        "position: 0",
        "magic: 2",
        "compresscodec: none",
        "isvalid: true",
        "producerEpoch: 0",
        "baseSequence: 0",
    ):
        assert field in first, field
    assert re.search(r"CreateTime: \d+ baseTimestamp: \d+ maxTimestamp: \d+ size: \d+", first)
    assert "compresscodec: zstd" in batches[-1]
    assert "Summary: 6 batch(es), 0 invalid, 6 record(s), offsets 0..5" in result.stdout


def test_print_records_shows_key_value_headers_and_truncates(segment: Path) -> None:
    result = dump(str(segment), "--print-records", "--max-bytes", "20")
    assert result.exit_code == 0, result.output
    records = [line for line in result.stdout.splitlines() if line.startswith("| offset:")]
    assert len(records) == PLAIN_BATCHES + 1
    assert records[0].startswith("| offset: 0 CreateTime: ")
    assert (
        "keySize: 1 valueSize: 7 sequence: 0 headers: [h=v] key: k payload: value-0" in records[0]
    )
    assert records[-1].endswith("payload: " + "z" * 20 + "...(+280 bytes)")


def test_corrupted_byte_makes_the_batch_invalid_and_the_exit_non_zero(segment: Path) -> None:
    third = batch_positions(segment)[2]
    data = bytearray(segment.read_bytes())
    data[third + fmt.RECORDS_OFFSET + 3] ^= 0xFF
    segment.write_bytes(bytes(data))

    result = run_cli("dump-log", str(segment))
    assert result.code != 0
    invalid = [line for line in result.out.splitlines() if "isvalid: false" in line]
    assert len(invalid) == 1 and f"position: {third} " in invalid[0]
    assert result.err.startswith("error: ") and result.err.count("\n") == 1
    assert "CRC" in result.err and "Traceback" not in result.err


def test_torn_tail_is_reported(segment: Path) -> None:
    with segment.open("ab") as f:
        f.write(b"\x00" * 20)
    result = dump(str(segment))
    assert result.exit_code != 0
    assert "Invalid data at position" in result.stdout


def test_verify_index_accepts_the_broker_indexes(segment: Path) -> None:
    result = dump(str(segment), "--verify-index")
    assert result.exit_code == 0, result.output
    assert re.search(rf"Verified {SEGMENT}\.index: [1-9]\d* entries, ok", result.stdout)
    assert re.search(rf"Verified {SEGMENT}\.timeindex: [1-9]\d* entries, ok", result.stdout)


def test_verify_index_reports_a_tampered_offset_index(segment: Path) -> None:
    index = segment.with_suffix(fmt.INDEX_SUFFIX)
    relative, position = struct.unpack_from(">II", index.read_bytes(), 0)
    assert position in batch_positions(segment)
    with index.open("r+b") as f:
        f.write(struct.pack(">II", relative, position + 1))

    result = dump(str(segment), "--verify-index")
    assert result.exit_code != 0
    assert f"entry 0 (offset {relative}): no batch starts at {position + 1}" in result.stdout
    assert "index" in result.stderr


def test_verify_index_reports_a_time_index_that_goes_back(segment: Path) -> None:
    time_index = segment.with_suffix(fmt.TIME_INDEX_SUFFIX)
    with time_index.open("r+b") as f:
        f.seek(fmt.TIME_INDEX_ENTRY_SIZE)  # the second entry: an earlier time than the first
        f.write(struct.pack(">qI", 1, 0))
    result = dump(str(segment), "--verify-index")
    assert result.exit_code != 0
    assert "entry 1: timestamp or offset goes back from entry 0" in result.stdout


def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    result = dump(str(tmp_path / "nope.log"))
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1


# --- Kafka's four codecs ----------------------------------------------------------------------

KAFKA_CODECS = ("gzip", "snappy", "lz4", "zstd")


def test_print_records_decodes_every_kafka_codec(broker: BrokerProcess, tmp_path: Path) -> None:
    """One batch per codec, compressed by LogStore's producer and stored by a broker."""
    run_cli("topics", "create", "codecs", bootstrap=broker.address)
    for name in KAFKA_CODECS:
        with Producer(broker.address, compression=name) as producer:
            producer.send("codecs", value=name.encode() * 100, key=name.encode()).result()
    copy = tmp_path / "copy"
    shutil.copytree(broker.data_dir / "codecs-0", copy)

    result = dump(str(copy / f"{SEGMENT}.log"), "--print-records", "--max-bytes", "12")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    codecs = [re.search(r"compresscodec: (\w+)", line) for line in lines]
    assert [m.group(1) for m in codecs if m] == list(KAFKA_CODECS)
    records = [line for line in lines if line.startswith("| offset:")]
    for offset, (name, line) in enumerate(zip(KAFKA_CODECS, records, strict=True)):
        shown = (name * 100)[:12]
        assert f"| offset: {offset} " in line, line
        assert f"key: {name} payload: {shown}...(+{len(name) * 100 - 12} bytes)" in line


def test_print_records_decodes_batches_librdkafka_compressed(tmp_path: Path) -> None:
    """A segment of batches as librdkafka sent them (its snappy is one raw block, not
    xerial-framed), offsets assigned as a broker would."""
    records: list[rb.RecordInput] = [
        (b"k%d" % i, b"value %d " % i * 20, [("n", b"%d" % i)], 1_700_000_000_000 + i)
        for i in range(30)
    ]
    segment = bytearray()
    next_offset = batches = 0
    for name in KAFKA_CODECS:
        sent = peers.librdkafka_produce(name, records)
        for pos, header in rb.iter_batches(sent):
            assert header.codec == fmt.COMPRESSION_TYPES.index(name)
            batch = bytearray(sent[pos : pos + header.size])
            rb.set_base_offset(batch, 0, next_offset)  # as a broker assigns offsets
            segment += batch
            next_offset += header.last_offset_delta + 1
            batches += 1
    log = tmp_path / f"{SEGMENT}.log"
    log.write_bytes(bytes(segment))

    result = dump(str(log), "--print-records")
    assert result.exit_code == 0, result.output
    printed = [line for line in result.stdout.splitlines() if line.startswith("| offset:")]
    assert len(printed) == 4 * len(records)
    for i, line in enumerate(printed):
        assert f"| offset: {i} " in line and f"headers: [n={i % 30}]" in line
    summary = f"Summary: {batches} batch(es), 0 invalid, 120 record(s), offsets 0..119"
    assert summary in result.stdout


def test_compressed_records_that_do_not_decode_fail_the_dump(tmp_path: Path) -> None:
    """Under a valid CRC the batch line is fine; printing its records finds the damage."""
    batch = bytearray(rb.encode_batch([(b"k", b"v" * 100, None, 1_000)], codec=fmt.CODEC_LZ4))
    del batch[fmt.RECORDS_OFFSET :]
    batch += b"\x04\x22\x4d\x18 not an lz4 frame"
    struct.pack_into(">i", batch, fmt.BATCH_LENGTH_OFFSET, len(batch) - fmt.LOG_OVERHEAD)
    struct.pack_into(">I", batch, fmt.CRC_OFFSET, rb.compute_crc(batch, 0, len(batch)))
    log = tmp_path / f"{SEGMENT}.log"
    log.write_bytes(bytes(batch))

    assert dump(str(log)).exit_code == 0
    result = run_cli("dump-log", str(log), "--print-records")
    assert result.code != 0
    assert "compresscodec: lz4" in result.out and "isvalid: true" in result.out
    assert "| records cannot be decoded: lz4-compressed records do not decompress" in result.out
    assert result.err.startswith("error: 1 problem(s)") and "lz4-compressed" in result.err
