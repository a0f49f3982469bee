"""Sequence numbers of an idempotent producer, per partition (Kafka's producer state).

The broker accepts a batch from (producer id, epoch) only when its base sequence is the one
after the last batch it appended for that partition, and answers a repeat of a recent batch
with its original offset. So, per partition:

- every record gets the next sequence once, when its batch is encoded; retries resend the
  same bytes with the same sequence, so sequences stay dense however often a batch is sent;
- when a batch fails for good the broker still waits for its sequence, so the partition's
  unsent batches are renumbered from 0 under a fresh producer id (`PartitionSequence.reset`).

Pure state: no I/O, no locks (the producer serialises access per partition).
"""

from __future__ import annotations

from collections.abc import Iterable

from logstore.codec import format as fmt

#: sequences wrap here, as Kafka's (int32 max + 1)
SEQUENCE_MODULUS = 2**31


class PartitionSequence:
    """The producer id, epoch and next base sequence of one partition.

    Invariants: `next_seq` is the base sequence of the next batch taken, in
    [0, SEQUENCE_MODULUS); without a producer id (idempotence off) every batch is stamped
    NO_SEQUENCE and `next_seq` stays 0.
    """

    __slots__ = ("next_seq", "producer_epoch", "producer_id")

    def __init__(
        self, producer_id: int = fmt.NO_PRODUCER_ID, producer_epoch: int = fmt.NO_PRODUCER_EPOCH
    ) -> None:
        self.producer_id = producer_id
        self.producer_epoch = producer_epoch
        self.next_seq = 0

    @property
    def idempotent(self) -> bool:
        return self.producer_id != fmt.NO_PRODUCER_ID

    def take(self, count: int) -> int:
        """The base sequence for a batch of `count` records; the next one starts after it."""
        if self.producer_id == fmt.NO_PRODUCER_ID:
            return fmt.NO_SEQUENCE
        seq = self.next_seq
        self.next_seq = (seq + count) % SEQUENCE_MODULUS
        return seq

    def reset(self, producer_id: int, producer_epoch: int, counts: Iterable[int]) -> list[int]:
        """Start over under a new producer id: batches of `counts` records (unsent, in order)
        get base sequences from 0, returned in order; later batches follow them."""
        self.producer_id = producer_id
        self.producer_epoch = producer_epoch
        self.next_seq = 0
        return [self.take(count) for count in counts]
