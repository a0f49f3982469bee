"""Per-partition sequence numbers of an idempotent producer."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from logstore.client.producer.sequences import SEQUENCE_MODULUS, PartitionSequence
from logstore.codec import format as fmt


@given(counts=st.lists(st.integers(1, 10_000), max_size=50), start=st.integers(0, 2**31 - 1))
def test_sequences_are_dense_and_wrap_like_kafka(counts: list[int], start: int) -> None:
    seq = PartitionSequence(7, 0)
    seq.next_seq = start
    expected = start
    for count in counts:
        assert seq.take(count) == expected
        expected = (expected + count) % SEQUENCE_MODULUS
    assert seq.next_seq == expected


def test_without_a_producer_id_every_batch_has_no_sequence() -> None:
    seq = PartitionSequence()
    assert not seq.idempotent
    assert [seq.take(5), seq.take(1)] == [fmt.NO_SEQUENCE, fmt.NO_SEQUENCE]
    assert seq.next_seq == 0


@given(before=st.lists(st.integers(1, 100), max_size=5), unsent=st.lists(st.integers(1, 100)))
def test_a_reset_renumbers_unsent_batches_from_zero(before: list[int], unsent: list[int]) -> None:
    seq = PartitionSequence(7, 0)
    for count in before:
        seq.take(count)
    bases = seq.reset(8, 1, unsent)
    assert (seq.producer_id, seq.producer_epoch) == (8, 1)
    assert bases == [sum(unsent[:i]) for i in range(len(unsent))]
    assert seq.take(1) == sum(unsent)
