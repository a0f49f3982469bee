"""On-disk format constants: Kafka RecordBatch v2, offset index, time index, file names.

Every number that describes the bytes on disk lives here and nowhere else.

RecordBatch v2 header (all integers big-endian; 61 bytes, then the records)::

    offset | size | field
    -------+------+----------------------------------------------------------------
         0 |    8 | baseOffset            int64  first offset in the batch
         8 |    4 | batchLength           int32  bytes after this field (total - 12)
        12 |    4 | partitionLeaderEpoch  int32
        16 |    1 | magic                 int8   = 2
        17 |    4 | crc                   uint32 CRC-32C of bytes [21, end)
        21 |    2 | attributes            int16  bits 0-2 codec (0 none, 1 gzip,
           |      |                              2 snappy, 3 lz4, 4 zstd), 3 timestamp type,
           |      |                              4 transactional, 5 control
        23 |    4 | lastOffsetDelta       int32  last offset - baseOffset
        27 |    8 | baseTimestamp         int64  ms since epoch
        35 |    8 | maxTimestamp          int64  ms since epoch
        43 |    8 | producerId            int64  -1 when not idempotent
        51 |    2 | producerEpoch         int16  -1 when not idempotent
        53 |    4 | baseSequence          int32  -1 when not idempotent
        57 |    4 | recordCount           int32
        61 |    … | records               (compressed as a whole when codec != 0, in
           |      |                              the forms `logstore.codec.compression` names)

The CRC does not cover baseOffset, batchLength or partitionLeaderEpoch, so the broker can
assign offsets by patching bytes 0-8 without recomputing anything.

Record (inside the records section; varints are zigzag, as in protobuf sint)::

    length varint | attributes int8 | timestampDelta varlong | offsetDelta varint |
    keyLength varint (-1 = null) | key | valueLength varint (-1 = null) | value |
    headerCount varint | { headerKeyLength varint | headerKey utf-8 |
                           headerValueLength varint (-1 = null) | headerValue } …

Offset index (`.index`), 8-byte entries::

    offset | size | field
         0 |    4 | relativeOffset uint32  batch last offset - segment base offset
         4 |    4 | position       uint32  byte position of that batch in the .log

Time index (`.timeindex`), 12-byte entries::

    offset | size | field
         0 |    8 | timestamp      int64   largest timestamp so far in the segment (ms)
         8 |    4 | relativeOffset uint32  offset holding it - segment base offset
"""

from __future__ import annotations

import struct
from typing import Final

# --- RecordBatch v2 header -------------------------------------------------------------
BASE_OFFSET_OFFSET: Final = 0
BATCH_LENGTH_OFFSET: Final = 8
PARTITION_LEADER_EPOCH_OFFSET: Final = 12
MAGIC_OFFSET: Final = 16
CRC_OFFSET: Final = 17
ATTRIBUTES_OFFSET: Final = 21
LAST_OFFSET_DELTA_OFFSET: Final = 23
BASE_TIMESTAMP_OFFSET: Final = 27
MAX_TIMESTAMP_OFFSET: Final = 35
PRODUCER_ID_OFFSET: Final = 43
PRODUCER_EPOCH_OFFSET: Final = 51
BASE_SEQUENCE_OFFSET: Final = 53
RECORD_COUNT_OFFSET: Final = 57
RECORDS_OFFSET: Final = 61

#: bytes of baseOffset + batchLength: the part of a batch not counted in batchLength
LOG_OVERHEAD: Final = 12
#: the fixed header: a batch is at least this long
BATCH_HEADER_SIZE: Final = RECORDS_OFFSET
#: the CRC covers [CRC_COVERED_FROM, end of batch)
CRC_COVERED_FROM: Final = ATTRIBUTES_OFFSET

MAGIC_V2: Final = 2

#: the whole header in one struct, in field order (see the module docstring)
BATCH_HEADER: Final = struct.Struct(">qiibIhiqqqhii")
#: the part after the CRC that the CRC covers and the encoder writes in one go
BATCH_HEADER_AFTER_CRC: Final = struct.Struct(">hiqqqhii")
#: the first 17 bytes: baseOffset, batchLength, partitionLeaderEpoch, magic
BATCH_PREFIX: Final = struct.Struct(">qiib")
INT64: Final = struct.Struct(">q")
INT32: Final = struct.Struct(">i")
INT16: Final = struct.Struct(">h")
UINT32: Final = struct.Struct(">I")

# attributes bits
COMPRESSION_CODEC_MASK: Final = 0x07
TIMESTAMP_TYPE_MASK: Final = 0x08
TRANSACTIONAL_FLAG_MASK: Final = 0x10
CONTROL_FLAG_MASK: Final = 0x20

CODEC_NONE: Final = 0
CODEC_GZIP: Final = 1
CODEC_SNAPPY: Final = 2
CODEC_LZ4: Final = 3
CODEC_ZSTD: Final = 4
CODEC_NAMES: Final = {
    CODEC_NONE: "none",
    CODEC_GZIP: "gzip",
    CODEC_SNAPPY: "snappy",
    CODEC_LZ4: "lz4",
    CODEC_ZSTD: "zstd",
}
#: Kafka's `compression.type` names, as the producer and the CLI take them
COMPRESSION_TYPES: Final = tuple(CODEC_NAMES.values())

TIMESTAMP_TYPE_CREATE_TIME: Final = 0
TIMESTAMP_TYPE_LOG_APPEND_TIME: Final = 1

NO_PRODUCER_ID: Final = -1
NO_PRODUCER_EPOCH: Final = -1
NO_SEQUENCE: Final = -1
NO_PARTITION_LEADER_EPOCH: Final = -1
NO_TIMESTAMP: Final = -1

#: Kafka's default and LogStore's hard ceiling for decompressed records section (bytes):
#: a compressed batch that inflates beyond this is rejected (compression-bomb guard).
MAX_DECOMPRESSED_BYTES: Final = 64 * 1024 * 1024

# --- Index files -------------------------------------------------------------------------
OFFSET_INDEX_ENTRY_SIZE: Final = 8
TIME_INDEX_ENTRY_SIZE: Final = 12
#: (field, numpy type) of an entry, in file order: `offset_index` and `time_index` build
#: their dtypes from these, so that importing the format (as every client does, for record
#: batches) does not load numpy
OFFSET_INDEX_FIELDS: Final = (("relative_offset", ">u4"), ("position", ">u4"))
TIME_INDEX_FIELDS: Final = (("timestamp", ">i8"), ("relative_offset", ">u4"))

# --- File names --------------------------------------------------------------------------
LOG_SUFFIX: Final = ".log"
INDEX_SUFFIX: Final = ".index"
TIME_INDEX_SUFFIX: Final = ".timeindex"
SNAPSHOT_SUFFIX: Final = ".snapshot"
DELETED_SUFFIX: Final = ".deleted"
CLEANED_SUFFIX: Final = ".cleaned"
SWAP_SUFFIX: Final = ".swap"
TEMP_SUFFIX: Final = ".tmp"
OFFSET_NAME_DIGITS: Final = 20

#: written in the data directory on clean shutdown, removed when the broker starts
CLEAN_SHUTDOWN_FILE: Final = ".logstore_cleanshutdown"
#: Kafka's text checkpoint format: version line, count line, "topic partition offset" lines
RECOVERY_POINT_CHECKPOINT_FILE: Final = "recovery-point-offset-checkpoint"
#: where compaction has cleaned each compacted partition up to (Kafka's file and format)
CLEANER_OFFSET_CHECKPOINT_FILE: Final = "cleaner-offset-checkpoint"
LOG_START_OFFSET_CHECKPOINT_FILE: Final = "log-start-offset-checkpoint"
#: the data directory's identity (Kafka's file and format): version, cluster.id, node.id
META_PROPERTIES_FILE: Final = "meta.properties"
#: per-topic configuration, JSON, in the data directory's topic metadata folder
TOPIC_METADATA_DIR: Final = "__topics"


def offset_file_name(base_offset: int, suffix: str) -> str:
    """The file name of a segment component: 20-digit zero-padded base offset + suffix."""
    return f"{base_offset:0{OFFSET_NAME_DIGITS}d}{suffix}"
