"""Requester / Responder against a real broker: replies matched by correlation id."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from logstore import Admin
from logstore.errors import RequestTimedOutError
from logstore.patterns import headers as h
from logstore.patterns.request_reply import Requester, RequestFailedError, Responder
from logstore.types import ConsumerRecord


@contextmanager
def responding(responder: Responder) -> Iterator[Responder]:
    """Run `responder` in a thread for the block's duration."""
    stop = threading.Event()
    thread = threading.Thread(target=lambda: responder.run(until=stop.is_set, duration_s=60))
    thread.start()
    try:
        yield responder
    finally:
        stop.set()
        thread.join(timeout=10)
        responder.close()


def pdf_handler(record: ConsumerRecord) -> bytes:
    assert record.value is not None
    if record.value == b"broken":
        raise ValueError("template missing")
    return b"/files/" + record.value + b".pdf"


def test_concurrent_requests_each_get_their_own_reply(
    bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic = unique("pdf.requests")
    with Admin(bootstrap) as admin:
        admin.create_topic(topic, partitions=2)
    responder = Responder(bootstrap, unique("pdf-service"), topic, pdf_handler)
    with responding(responder), Requester(bootstrap) as requester:
        futures = {
            n: requester.request_async(topic, f"report-{n}".encode(), key=str(n).encode())
            for n in range(8)
        }
        replies = {n: f.result(timeout=15) for n, f in futures.items()}
        single = requester.request(topic, b"summary", timeout=15)
        private = requester.reply_topic
    for n, reply in replies.items():
        assert reply.value == f"/files/report-{n}.pdf".encode()
        assert reply.topic == private
        assert h.header(reply.headers, h.CORRELATION_ID) is not None
    assert single.value == b"/files/summary.pdf"
    assert responder.answered == 9
    with Admin(bootstrap) as admin:
        assert private not in admin.list_topics()  # a private reply topic goes with close()


def test_handler_error_fails_the_request_and_silence_times_out(
    bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic, silent = unique("pdf.requests"), unique("nobody.listens")
    shared = unique("replies")
    with Admin(bootstrap) as admin:
        admin.create_topic(topic, partitions=1)
        admin.create_topic(silent, partitions=1)
    responder = Responder(bootstrap, unique("pdf-service"), topic, pdf_handler)
    with responding(responder), Requester(bootstrap, reply_topic=shared) as requester:
        with pytest.raises(RequestFailedError, match="ValueError: template missing"):
            requester.request(topic, b"broken", timeout=15)
        with pytest.raises(RequestTimedOutError, match=r"within 0\.3 s"):
            requester.request(silent, b"hello?", timeout=0.3)
        assert requester.request(topic, b"ok", timeout=15).value == b"/files/ok.pdf"
    with Admin(bootstrap) as admin:
        assert shared in admin.list_topics()  # a named reply topic is kept


def test_two_requesters_sharing_a_reply_topic_keep_their_own_replies(
    bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic, shared = unique("quotes"), unique("quote.replies")
    with Admin(bootstrap) as admin:
        admin.create_topic(topic, partitions=1)
    responder = Responder(bootstrap, unique("quoter"), topic, lambda r: (r.value or b"") * 2)
    with (
        responding(responder),
        Requester(bootstrap, reply_topic=shared) as first,
        Requester(bootstrap, reply_topic=shared) as second,
    ):
        a = first.request_async(topic, b"a")
        b = second.request_async(topic, b"b")
        assert a.result(timeout=15).value == b"aa"
        assert b.result(timeout=15).value == b"bb"
