"""Request-reply: a client asks for PDF reports and waits for "PDF ready at ..." replies.

The PDF generator is a `Responder` on the `pdf.requests` topic; the client is a
`Requester` with a private reply topic. Requests carry `reply_to` and `correlation_id`
headers; the generator answers on `reply_to` with the same correlation id, so each
waiting call gets its own answer even when several are in flight.
"""

from __future__ import annotations

import argparse
import threading
import time

from logstore.examples._common import Deadline, create_topics, finish, run_id, say
from logstore.patterns.request_reply import Requester, Responder
from logstore.types import ConsumerRecord

REPORTS = ["q1-sales", "q2-sales", "churn"]


def generate_pdf(record: ConsumerRecord) -> bytes:
    name = (record.value or b"").decode()
    time.sleep(0.05)  # rendering
    return f"PDF ready at /files/{name}.pdf".encode()


def main(args: argparse.Namespace) -> bool:
    topic = f"pdf.requests.{run_id()}"
    create_topics(args.bootstrap_server, {topic: 1})
    deadline = Deadline(args.timeout)
    stop = threading.Event()
    generator = Responder(args.bootstrap_server, f"pdf-generator.{topic}", topic, generate_pdf)
    thread = threading.Thread(
        target=generator.run, kwargs={"until": stop.is_set, "duration_s": args.timeout}
    )
    thread.start()
    replies: dict[str, str] = {}
    try:
        with Requester(args.bootstrap_server) as client:
            say(f"client: waiting for replies on {client.reply_topic}")
            futures = {name: client.request_async(topic, name.encode()) for name in REPORTS}
            say(f"client: sent {len(futures)} requests, doing other work meanwhile")
            for name, future in futures.items():
                started = time.perf_counter()
                reply = future.result(timeout=deadline.left())
                replies[name] = (reply.value or b"").decode()
                waited = (time.perf_counter() - started) * 1000
                say(f"client: {name} -> {replies[name]} (waited {waited:.0f} ms more)")
    finally:
        stop.set()
        thread.join(timeout=10)
        generator.close()
    say(f"generator answered {generator.answered} request(s)")
    return all(replies.get(n) == f"PDF ready at /files/{n}.pdf" for n in REPORTS)


if __name__ == "__main__":
    finish(main, __doc__ or "")
