"""Request-reply over two topics, matched by correlation id.

A `Requester` sends a request with headers `reply_to` (its reply topic) and
`correlation_id` (a fresh UUID), and waits for the reply carrying the same correlation id.
One background thread per requester reads the reply topic and completes the waiting
futures; replies nobody waits for (late, or for another requester sharing the topic) are
dropped. A `Responder` is a group consumer of the request topic that produces its
handler's result to each request's `reply_to` topic, then commits (at least once: after a
crash a request may be answered twice, and the requester keeps the first answer).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

from logstore.client.admin import Admin
from logstore.client.consumer import Consumer
from logstore.client.producer import Producer
from logstore.errors import LogStoreError, RequestTimedOutError, TopicExistsError
from logstore.patterns import headers as h
from logstore.patterns.delivery import rewind, run_bounded
from logstore.types import ConsumerRecord

log = logging.getLogger(__name__)

#: prefix of the private reply topics requesters create (and delete on close)
PRIVATE_REPLY_PREFIX = "logstore.replies."
#: how long the reply reader waits per poll (s); also bounds how long close() takes
_READER_POLL_S = 0.1


class RequestFailedError(LogStoreError):
    """The responder's handler raised; the message is the responder's "Type: message"."""


class Requester:
    """Sends requests and waits for their replies.

    >>> with Requester("127.0.0.1:9092") as requester:                # doctest: +SKIP
    ...     reply = requester.request("pdf.requests", b"report 7", timeout=30)

    `reply_topic=None` creates a private one-partition reply topic, deleted by `close()`;
    a named reply topic is created when missing and may be shared by several requesters
    (each reads every reply and keeps its own). Thread-safe: many threads may wait at once.
    `security` (ssl_cafile, ssl_certfile, ssl_keyfile, token) goes to every client built
    here; without it they fall back to LOGSTORE_TLS_CA, LOGSTORE_TOKEN, ...
    """

    def __init__(
        self,
        bootstrap: str,
        reply_topic: str | None = None,
        *,
        security: Mapping[str, str | None] | None = None,
    ) -> None:
        self._private = reply_topic is None
        self._security = dict(security or {})
        self.reply_topic = reply_topic or f"{PRIVATE_REPLY_PREFIX}{uuid.uuid4().hex}"
        self._bootstrap = bootstrap
        with Admin(bootstrap, **self._security) as admin:
            partitions = _ensure_topic(admin, self.reply_topic)
        self._pending: dict[str, Future[ConsumerRecord]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._consumer = Consumer(
            bootstrap,
            group_id=None,
            auto_offset_reset="latest",
            fetch_max_wait_ms=100,
            **self._security,
        )
        tps = [(self.reply_topic, p) for p in range(partitions)]
        self._consumer.assign(tps)
        # Resolve "latest" now: a reply landing before that would otherwise be skipped.
        for tp in tps:
            self._consumer.position(tp)
        self._producer = Producer(bootstrap, acks="all", linger_ms=0, **self._security)
        self._reader = threading.Thread(
            target=self._read_replies, name="logstore-requester", daemon=True
        )
        self._reader.start()

    def request_async(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Mapping[str, bytes | None] | None = None,
    ) -> Future[ConsumerRecord]:
        """Send a request; the future completes with the reply record, or fails with
        `RequestFailedError` when the responder's handler raised. It never times out by
        itself: wait with `result(timeout)`."""
        return self._send(topic, value, key, headers)[1]

    def request(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Mapping[str, bytes | None] | None = None,
        timeout: float = 30.0,
    ) -> ConsumerRecord:
        """Send a request and wait up to `timeout` seconds for its reply.

        Raises `RequestTimedOutError` when no reply came in time (the request stays in the
        topic and may still be answered; that late reply is dropped) and
        `RequestFailedError` when the responder's handler raised.
        """
        correlation_id, future = self._send(topic, value, key, headers)
        try:
            return future.result(timeout=timeout)
        except TimeoutError:
            raise RequestTimedOutError(
                f"no reply on {self.reply_topic!r} to request {correlation_id} sent to "
                f"{topic!r} within {timeout} s"
            ) from None
        finally:
            with self._lock:
                self._pending.pop(correlation_id, None)

    def _send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: Mapping[str, bytes | None] | None,
    ) -> tuple[str, Future[ConsumerRecord]]:
        correlation_id = uuid.uuid4().hex
        future: Future[ConsumerRecord] = Future()
        # registered before sending: the reply may arrive before send() returns
        with self._lock:
            self._pending[correlation_id] = future
        sent = dict(headers or {})
        sent[h.REPLY_TO] = self.reply_topic.encode()
        sent[h.CORRELATION_ID] = correlation_id.encode()
        try:
            self._producer.send(topic, value=value, key=key, headers=sent).result()
        except BaseException:
            with self._lock:
                self._pending.pop(correlation_id, None)
            raise
        return correlation_id, future

    def _read_replies(self) -> None:
        while not self._stop.is_set():
            try:
                records = self._consumer.poll(timeout=_READER_POLL_S)
            except Exception as exc:  # keep serving: a transient fetch error is not fatal
                log.warning("reply reader: %s", exc)
                time.sleep(_READER_POLL_S)
                continue
            for record in records:
                self._complete(record)

    def _complete(self, record: ConsumerRecord) -> None:
        correlation_id = h.header_str(record.headers, h.CORRELATION_ID)
        if correlation_id is None:
            return
        with self._lock:
            future = self._pending.pop(correlation_id, None)
        if future is None or future.done():
            return
        error = h.header_str(record.headers, h.REPLY_ERROR)
        if error is not None:
            future.set_exception(RequestFailedError(error))
        else:
            future.set_result(record)

    def close(self) -> None:
        """Stop the reply reader, fail waiting requests, delete a private reply topic."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._reader.join(timeout=5)
        with self._lock:
            pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(RequestTimedOutError("the requester was closed"))
        self._consumer.close()
        self._producer.close()
        if self._private:
            try:
                with Admin(self._bootstrap, **self._security) as admin:
                    admin.delete_topic(self.reply_topic)
            except LogStoreError as exc:
                log.info("could not delete reply topic %s: %s", self.reply_topic, exc)

    def __enter__(self) -> Requester:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


ReplyHandler = Callable[[ConsumerRecord], bytes | None]


class Responder:
    """Answers requests: `handler(record)` returns the reply value (bytes or None).

    The reply goes to the request's `reply_to` topic with the same `correlation_id`, keyed
    by it. When the handler raises, the reply carries a `reply_error` header instead, so the
    requester fails at once rather than timing out. Requests without `reply_to` are
    handled and not answered. Use from one thread.
    """

    def __init__(
        self,
        bootstrap: str,
        group_id: str,
        topic: str,
        handler: ReplyHandler,
        *,
        consumer_options: Mapping[str, Any] | None = None,
        security: Mapping[str, str | None] | None = None,
    ) -> None:
        self.handler = handler
        self.answered = 0
        secure = dict(security or {})
        options: dict[str, Any] = {"auto_offset_reset": "earliest", "fetch_max_wait_ms": 100}
        options.update(consumer_options or {})
        options["enable_auto_commit"] = False
        self.consumer = Consumer(bootstrap, group_id=group_id, **options, **secure)
        self.consumer.subscribe([topic])
        self.producer = Producer(bootstrap, acks="all", linger_ms=0, **secure)

    def poll_once(self, timeout: float = 0.2) -> int:
        """Answer what one poll returned, then commit; returns how many were answered."""
        records = self.consumer.poll(timeout=timeout)
        try:
            replies = [self._answer(record) for record in records]
            for reply in replies:
                if reply is not None:
                    reply.result()  # acknowledged before the request's offset is committed
        except BaseException:
            rewind(self.consumer, records)  # answer the whole poll again: at least once
            raise
        if records:
            self.consumer.commit()
        answered = sum(1 for reply in replies if reply is not None)
        self.answered += answered
        return answered

    def _answer(self, record: ConsumerRecord) -> Future[Any] | None:
        reply_to = h.header_str(record.headers, h.REPLY_TO)
        correlation_id = h.header(record.headers, h.CORRELATION_ID)
        extra: list[tuple[str, bytes | None]] = []
        try:
            value = self.handler(record)
        except Exception as exc:  # reported to the requester, not raised here
            value = None
            extra = [(h.REPLY_ERROR, f"{type(exc).__name__}: {exc}".encode())]
        if reply_to is None or correlation_id is None:
            return None
        return self.producer.send(
            reply_to,
            value=value,
            key=correlation_id,
            headers=[(h.CORRELATION_ID, correlation_id), *extra],
        )

    def run(
        self,
        *,
        duration_s: float | None = None,
        until: Callable[[], bool] | None = None,
        poll_timeout: float = 0.2,
    ) -> int:
        """Answer requests until `until()` or `duration_s` (one is required); returns how
        many were answered in all."""
        run_bounded(self.poll_once, duration_s, until, poll_timeout)
        return self.answered

    def close(self) -> None:
        try:
            self.consumer.close()
        finally:
            self.producer.close()

    def __enter__(self) -> Responder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ensure_topic(admin: Admin, name: str) -> int:
    """Create `name` with one partition when missing; return its partition count."""
    try:
        return len(admin.create_topic(name, partitions=1).partitions)
    except TopicExistsError:
        return len(admin.describe_topic(name).partitions)
