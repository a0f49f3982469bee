"""Choosing a partition for a record, exactly as Kafka's producer does.

Keyed records go to ``to_positive(murmur2(key)) % num_partitions``, bit for bit Kafka's
``BuiltInPartitioner.partitionForKey``: a key written through LogStore lands in the same
partition number as it would in Kafka with the same partition count, so data and consumers
can move between the two without reshuffling keys.

Records without a key use sticky partitioning (KIP-480): all of a topic's null-key records go
to one partition until the producer reports that the batch for that partition is complete,
then to a different one. Sticking fills batches faster than spraying records at random, which
means fewer, larger batches for the same load.

Invariants:

* `murmur2` returns a signed 32-bit integer (``-2**31 <= h < 2**31``), equal to what Java's
  ``org.apache.kafka.common.utils.Utils.murmur2`` returns for the same bytes.
* `partition_for_key` and `StickyPartitioner.partition` return an integer in
  ``0..num_partitions-1``, and raise `InvalidPartitionsError` if ``num_partitions < 1``.
* `partition_for_key` is a pure function of ``(key, num_partitions)``.
"""

from __future__ import annotations

import random
import struct
import threading
from collections.abc import Callable
from typing import Final, NoReturn

from logstore.errors import InvalidPartitionsError

__all__ = ["StickyPartitioner", "murmur2", "partition_for_key", "to_positive"]

#: Kafka's murmur2 seed and mixing constants (``r`` is the 24 in ``k >>> 24``)
MURMUR2_SEED: Final = 0x9747B28C
MURMUR2_M: Final = 0x5BD1E995
MURMUR2_R: Final = 24

#: Bound ``unpack_from`` of ``<nI`` for ``n`` words, indexed by ``n``. Building the format
#: string and looking it up in struct's cache costs about as much as hashing a 10-byte key,
#: so keys up to 256 bytes (almost all of them) skip that; longer ones fall back to it.
_UNPACK_WORDS: Final[tuple[Callable[[bytes], tuple[int, ...]], ...]] = tuple(
    struct.Struct(f"<{n}I").unpack_from for n in range(65)
)


def murmur2(data: bytes) -> int:
    """Return Kafka's 32-bit MurmurHash2 of `data` as a signed int, as Java returns it.

    Any bytes-like object works (bytes, bytearray, memoryview of bytes).

    The constants in the body are literals rather than the module names above on purpose:
    this runs once per keyed record, and a literal is cheaper to load than a global.
    """
    length = len(data)
    # MURMUR2_SEED ^ length. Java's length is an int; a record key is far below 2**31 bytes,
    # so h starts within 32 bits like Java's.
    h = 0x9747B28C ^ length
    words = length >> 2
    if words:
        unpack = (
            _UNPACK_WORDS[words]
            if words < len(_UNPACK_WORDS)
            else struct.Struct(f"<{words}I").unpack_from
        )
        # Java reads each word little-endian (byte 0 lowest), as '<I' does.
        for k in unpack(data):
            # k must be reduced to 32 bits before the shift (Java's `k >>> 24` sees only the
            # low 32 bits). The second k * m and h * m need no mask of their own: the low
            # 32 bits of an XOR depend only on the low 32 bits of its operands, so masking
            # once after the XOR gives Java's wrapped result.
            k = (k * 0x5BD1E995) & 0xFFFFFFFF
            h = ((h * 0x5BD1E995) ^ ((k ^ (k >> 24)) * 0x5BD1E995)) & 0xFFFFFFFF
    tail = length & 3
    if tail:
        # Java XORs the 1-3 trailing bytes in at bit offsets 0, 8 and 16: that is the tail
        # read as a little-endian integer.
        tail_bits = int.from_bytes(data[length - tail :], "little")
        h = ((h ^ tail_bits) * 0x5BD1E995) & 0xFFFFFFFF
    # h is within 32 bits here, so Python's >> is Java's unsigned >>>.
    h ^= h >> 13
    h = (h * 0x5BD1E995) & 0xFFFFFFFF
    h ^= h >> 15
    # Reinterpret the 32 bits as two's complement, as Java's int does.
    return (h ^ 0x80000000) - 0x80000000


def to_positive(n: int) -> int:
    """Return `n` with the sign bit of its 32-bit form cleared (Kafka's ``Utils.toPositive``).

    Kafka uses this rather than ``abs`` because ``abs(-2**31)`` overflows in Java; the
    result is always in ``0..2**31-1``.
    """
    return n & 0x7FFFFFFF


def partition_for_key(key: bytes, num_partitions: int) -> int:
    """Return the partition Kafka's default partitioner picks for a record with `key`.

    Equal to ``to_positive(murmur2(key)) % num_partitions``, always in
    ``0..num_partitions-1``. An empty key is a key (it hashes); a null key must go through
    `StickyPartitioner` instead.
    """
    if num_partitions < 1:
        _raise_bad_count(num_partitions)
    # to_positive inlined: this runs once per keyed record.
    return (murmur2(key) & 0x7FFFFFFF) % num_partitions


class StickyPartitioner:
    """Kafka's sticky partitioner for null-key records (KIP-480), one sticky partition per topic.

    `partition` returns the topic's current sticky partition, choosing one at random the
    first time. The producer calls `on_new_batch` with the partition whose batch just filled
    up; that moves the topic to a different partition, chosen uniformly among the others.

    Invariants:

    * The sticky partition of a topic changes only when a caller reports a new batch for
      exactly that partition, or when it is no longer below the partition count passed in
      (which only happens if a caller passes a smaller count than before).
    * With ``num_partitions > 1`` a move never picks the partition being left; with
      ``num_partitions == 1`` the partition is always 0.
    * Every returned partition is in ``0..num_partitions-1`` for the count passed in.

    Thread-safe: one lock guards the per-topic state, so concurrent producers see each
    topic's sticky partition change once per completed batch.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        """`rng` supplies the random choices; pass a seeded one to make a test repeatable."""
        self._rng = rng if rng is not None else random.Random()
        self._lock = threading.Lock()
        self._sticky: dict[str, int] = {}

    def partition(self, topic: str, num_partitions: int) -> int:
        """Return the partition for the next null-key record of `topic`."""
        if num_partitions < 1:
            _raise_bad_count(num_partitions)
        with self._lock:
            current = self._sticky.get(topic)
            if current is not None and current < num_partitions:
                return current
            return self._choose_locked(topic, num_partitions, avoid=None)

    def on_new_batch(self, topic: str, num_partitions: int, previous: int) -> None:
        """Move `topic` off `previous`, the partition whose batch is now full or sent.

        If the topic has already moved off `previous` this does nothing: several threads can
        see the same batch fill up, and only the first report may move the topic, or one
        full batch would skip the topic past a partition it never used (Kafka's
        ``StickyPartitionCache.nextPartition`` behaves the same way). If the topic has no
        sticky partition yet, one other than `previous` is chosen.
        """
        if num_partitions < 1:
            _raise_bad_count(num_partitions)
        with self._lock:
            current = self._sticky.get(topic)
            if current is not None and current != previous:
                return
            self._choose_locked(topic, num_partitions, avoid=previous)

    def _choose_locked(self, topic: str, num_partitions: int, avoid: int | None) -> int:
        """Pick, record and return a new sticky partition; the caller holds the lock."""
        if num_partitions == 1:
            chosen = 0
        elif avoid is not None and 0 <= avoid < num_partitions:
            # Uniform over the other n-1 partitions with a single draw: numbers at or past
            # `avoid` shift up by one. Kafka redraws until it differs; same distribution.
            chosen = self._rng.randrange(num_partitions - 1)
            if chosen >= avoid:
                chosen += 1
        else:
            chosen = self._rng.randrange(num_partitions)
        self._sticky[topic] = chosen
        return chosen


def _raise_bad_count(num_partitions: int) -> NoReturn:
    # Callers test `num_partitions < 1` inline so the common case costs no extra call.
    raise InvalidPartitionsError(
        f"invalid partition count {num_partitions}: a topic has at least 1 partition"
    )
