"""Tests for `logstore.codec.wire`: the hand-written codec must agree with the generated classes.

Properties over random messages: what we encode parses (with protobuf) to the message we
meant; what protobuf encodes, we decode to the same fields; and bytes that are not a
message give ValueError (the broker answers INVALID_ARGUMENT), never another exception.
"""

from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from logstore.codec import wire
from logstore.v1 import logstore_pb2 as pb

INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
names = st.text(max_size=12)
records = st.binary(max_size=300)
errors = st.one_of(
    st.just(pb.Error()),
    st.builds(pb.Error, code=st.integers(1, 40), message=st.text(max_size=20)),
)
answers = st.builds(wire.PartitionAnswer, INT32, errors, INT64, INT64, records)
responses = st.lists(st.tuples(names, st.lists(answers, max_size=4)), max_size=4)
produce_topics = st.dictionaries(names, st.lists(st.tuples(INT32, records), max_size=3), max_size=3)


def _answer_fields(answer: wire.PartitionAnswer) -> tuple[object, ...]:
    return (
        answer.partition,
        answer.error.SerializeToString(),
        answer.high_watermark,
        answer.log_start_offset,
        bytes(answer.records),
    )


@settings(max_examples=200, deadline=None)
@given(topics=responses)
def test_an_encoded_fetch_response_is_the_protobuf_message(topics: wire.TopicAnswers) -> None:
    parsed = pb.FetchResponse.FromString(wire.encode_response(topics))
    assert [t.topic for t in parsed.topics] == [topic for topic, _ in topics]
    for parsed_topic, (_, expected) in zip(parsed.topics, topics, strict=True):
        got = [
            (p.partition, p.error.SerializeToString(), p.high_watermark, p.log_start_offset,
             p.records)
            for p in parsed_topic.partitions
        ]  # fmt: skip
        assert got == [_answer_fields(a) for a in expected]


@settings(max_examples=200, deadline=None)
@given(topics=responses)
def test_a_protobuf_fetch_response_decodes_to_the_same_fields(
    topics: wire.TopicAnswers,
) -> None:
    message = pb.FetchResponse()
    for topic, expected in topics:
        results = message.topics.add(topic=topic).partitions
        for a in expected:
            result = results.add(partition=a.partition, high_watermark=a.high_watermark)
            result.log_start_offset, result.records = a.log_start_offset, a.records
            if a.error.code:
                result.error.CopyFrom(a.error)
    decoded = wire.decode_response(message.SerializeToString())
    assert [(t, [_answer_fields(a) for a in ans]) for t, ans in decoded] == [
        (t, [_answer_fields(a) for a in ans]) for t, ans in topics
    ]


@settings(max_examples=200, deadline=None)
@given(acks=st.sampled_from([-1, 0, 1]), cid=st.integers(0, 2**62), topics=produce_topics)
def test_an_encoded_produce_request_round_trips_through_protobuf(
    acks: int, cid: int, topics: dict[str, list[tuple[int, bytes]]]
) -> None:
    data = wire.encode_produce_request(acks, cid, topics)
    parsed = pb.ProduceRequest.FromString(data)
    assert (parsed.acks, parsed.correlation_id) == (acks, cid)
    expected = [(t, parts) for t, parts in topics.items()]
    assert [(t.topic, [(p.partition, p.records) for p in t.partitions]) for t in parsed.topics] == (
        expected
    )
    view = wire.decode_produce_request(parsed.SerializeToString())
    assert (view.acks, view.correlation_id) == (acks, cid)
    assert [
        (t.topic, [(p.partition, bytes(p.records)) for p in t.partitions]) for t in view.topics
    ] == expected


@settings(max_examples=1000, deadline=None)
@given(data=st.binary(max_size=200))
def test_garbage_is_refused_with_value_error_or_read_as_protobuf_reads_it(data: bytes) -> None:
    """Only ValueError may escape (UnicodeDecodeError is one); what is accepted must be a
    message protobuf also accepts, with the same topics and partitions."""
    try:
        decoded = wire.decode_response(data)
    except ValueError:
        return
    parsed = pb.FetchResponse.FromString(data)
    assert [(t, [a.partition for a in ans]) for t, ans in decoded] == [
        (t.topic, [p.partition for p in t.partitions]) for t in parsed.topics
    ]
    with contextlib.suppress(ValueError):
        view = wire.decode_produce_request(data)
        assert isinstance(view, wire.ProduceRequestView)
