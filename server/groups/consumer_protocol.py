"""Kafka's ConsumerProtocol: the subscription and assignment bytes of classic "consumer" groups.

Kafka consumers put these in JoinGroup's protocol metadata (a subscription) and SyncGroup's
assignments; the broker only relays them, and reads them only to describe a group (its
members' topics and partitions). All integers big-endian; strings int16 length + UTF-8;
arrays int32 count (-1 null); bytes int32 length (-1 null).

ConsumerProtocolSubscription, versions 0-3::

    version int16 | topics [string] | user_data bytes
    | v1+: owned_partitions [topic string, partitions [int32]]
    | v2+: generation_id int32 | v3+: rack_id string

ConsumerProtocolAssignment, versions 0-3 (the same layout in each)::

    version int16 | assigned_partitions [topic string, partitions [int32]] | user_data bytes

As Kafka does, a version newer than 3 is read as version 3 (newer versions only append
fields). Anything unreadable raises ValueError.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

PROTOCOL_TYPE = "consumer"
#: the newest version whose layout this module knows
MAX_VERSION = 3

TopicPartition = tuple[str, int]

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")


@dataclass(frozen=True)
class Subscription:
    """What a member of a consumer group subscribes to and (v1+) owns."""

    topics: list[str]
    owned: list[TopicPartition]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def _take(self, size: int) -> bytes:
        if size < 0 or self._pos + size > len(self._data):
            raise ValueError("consumer protocol data is truncated")
        chunk = self._data[self._pos : self._pos + size]
        self._pos += size
        return chunk

    def int16(self) -> int:
        return int(_I16.unpack(self._take(2))[0])

    def int32(self) -> int:
        return int(_I32.unpack(self._take(4))[0])

    def string(self) -> str:
        size = self.int16()
        if size < 0:
            raise ValueError("consumer protocol data has a null string where one is needed")
        try:
            return self._take(size).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("consumer protocol data has a string that is not UTF-8") from None

    def skip_bytes(self) -> None:
        size = self.int32()
        if size > 0:
            self._take(size)

    def count(self) -> int:
        size = self.int32()
        # every element takes at least 2 bytes: a count beyond that is corrupt, not huge
        if size > (len(self._data) - self._pos) // 2:
            raise ValueError("consumer protocol data has an array longer than its bytes")
        return max(size, 0)

    def partitions(self) -> list[TopicPartition]:
        result = []
        for _ in range(self.count()):
            topic = self.string()
            result.extend((topic, self.int32()) for _ in range(self.count()))
        return result


def _version(reader: _Reader) -> int:
    version = reader.int16()
    if version < 0:
        raise ValueError(f"consumer protocol version {version} is invalid")
    return min(version, MAX_VERSION)


def decode_subscription(data: bytes) -> Subscription:
    """The topics (in the member's order) and owned partitions of a subscription."""
    reader = _Reader(bytes(data))
    version = _version(reader)
    topics = [reader.string() for _ in range(reader.count())]
    reader.skip_bytes()  # user data: the assignor's, not the broker's
    owned = reader.partitions() if version >= 1 else []
    return Subscription(topics, owned)


def decode_assignment(data: bytes) -> list[TopicPartition]:
    """The partitions of an assignment, in its order; empty bytes are no partitions (the
    group's assignment before its leader sent one)."""
    if not data:
        return []
    reader = _Reader(bytes(data))
    _version(reader)
    return reader.partitions()


def _string(value: str) -> bytes:
    encoded = value.encode("utf-8")
    return _I16.pack(len(encoded)) + encoded


def _partitions(partitions: list[TopicPartition]) -> bytes:
    by_topic: dict[str, list[int]] = {}
    for topic, partition in partitions:
        by_topic.setdefault(topic, []).append(partition)
    parts = [_I32.pack(len(by_topic))]
    for topic, indexes in by_topic.items():
        parts.append(_string(topic))
        parts.append(_I32.pack(len(indexes)))
        parts.extend(_I32.pack(p) for p in indexes)
    return b"".join(parts)


def encode_subscription(topics: list[str]) -> bytes:
    """A version 0 subscription to `topics`, no user data."""
    body = b"".join(_string(t) for t in topics)
    return _I16.pack(0) + _I32.pack(len(topics)) + body + _I32.pack(-1)


def encode_assignment(partitions: list[TopicPartition]) -> bytes:
    """A version 0 assignment of `partitions` (grouped by topic in first-seen order), no
    user data."""
    return _I16.pack(0) + _partitions(partitions) + _I32.pack(-1)
