"""Header names and topic-name conventions shared by the patterns and the `dlq` commands.

Header values are UTF-8 text (numbers in decimal, timestamps in ms since the epoch), so any
client, including `logstore consume --json`, can read them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from logstore.types import Headers

# --- retry topics ----------------------------------------------------------------------------
RETRY_PREFIX = "logstore.retry."
RETRY_ORIGINAL_TOPIC = "logstore.retry.original-topic"
RETRY_ORIGINAL_PARTITION = "logstore.retry.original-partition"
RETRY_ORIGINAL_OFFSET = "logstore.retry.original-offset"
#: attempts made so far (all failed), counting in-process retries
RETRY_ATTEMPTS = "logstore.retry.attempts"
RETRY_ERROR_TYPE = "logstore.retry.error-type"
RETRY_ERROR_MESSAGE = "logstore.retry.error-message"
#: wall-clock ms before which the record must not be handled again
RETRY_NOT_BEFORE = "logstore.retry.not-before"

# --- dead letter queues ----------------------------------------------------------------------
DLQ_PREFIX = "logstore.dlq."
DLQ_ORIGINAL_TOPIC = "logstore.dlq.original-topic"
DLQ_ORIGINAL_PARTITION = "logstore.dlq.original-partition"
DLQ_ORIGINAL_OFFSET = "logstore.dlq.original-offset"
DLQ_ATTEMPTS = "logstore.dlq.attempts"
DLQ_ERROR_TYPE = "logstore.dlq.error-type"
DLQ_ERROR_MESSAGE = "logstore.dlq.error-message"
#: wall-clock ms when the record was dead-lettered
DLQ_TIMESTAMP = "logstore.dlq.timestamp"

# --- request/reply ---------------------------------------------------------------------------
REPLY_TO = "reply_to"
CORRELATION_ID = "correlation_id"
#: set on a reply when the responder's handler raised: "ErrorType: message"
REPLY_ERROR = "reply_error"

# --- idempotence -----------------------------------------------------------------------------
MESSAGE_ID = "message-id"

# --- topic names -----------------------------------------------------------------------------
DLQ_SUFFIX = ".dlq"
RETRY_INFIX = ".retry."
#: longest error message kept in a header (characters)
MAX_ERROR_MESSAGE_CHARS = 1000


def retry_topic(topic: str, level: int) -> str:
    """`orders`, 2 -> `orders.retry.2` (levels are 1-based)."""
    return f"{topic}{RETRY_INFIX}{level}"


def dlq_topic(topic: str) -> str:
    return f"{topic}{DLQ_SUFFIX}"


def is_dlq_topic(name: str) -> bool:
    return name.endswith(DLQ_SUFFIX) and len(name) > len(DLQ_SUFFIX)


def retry_level(name: str) -> int | None:
    """The level of a retry topic name (`orders.retry.2` -> 2), else None."""
    base, sep, level = name.rpartition(RETRY_INFIX)
    if not sep or not base or not level.isdigit() or int(level) < 1:
        return None
    return int(level)


def source_of(name: str) -> str:
    """The topic a retry or DLQ topic belongs to (`orders.retry.2` -> `orders`)."""
    if retry_level(name) is not None:
        return name.rpartition(RETRY_INFIX)[0]
    if is_dlq_topic(name):
        return name[: -len(DLQ_SUFFIX)]
    return name


def header(headers: Headers | Iterable[tuple[str, bytes | None]], name: str) -> bytes | None:
    """The last value of header `name` (Kafka allows repeats; the latest wins), else None."""
    found = None
    for key, value in headers:
        if key == name:
            found = value
    return found


def header_str(headers: Headers, name: str) -> str | None:
    value = header(headers, name)
    return None if value is None else value.decode("utf-8", "replace")


def header_int(headers: Headers, name: str) -> int | None:
    text = header_str(headers, name)
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


def without(headers: Headers, prefixes: tuple[str, ...]) -> list[tuple[str, bytes | None]]:
    """`headers` minus every header whose name starts with one of `prefixes`."""
    return [(k, v) for k, v in headers if not k.startswith(prefixes)]


def encode(values: Mapping[str, object]) -> list[tuple[str, bytes | None]]:
    """name -> value (str/int) as UTF-8 header pairs."""
    return [(k, str(v).encode()) for k, v in values.items()]
