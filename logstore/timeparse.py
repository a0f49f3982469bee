"""ISO 8601 date-times and durations, as `kafka-consumer-groups --reset-offsets` takes them."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from logstore.errors import InvalidRequestError

_DURATION = re.compile(
    r"^P(?:(?P<weeks>\d+(?:\.\d+)?)W)?(?:(?P<days>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<hours>\d+(?:\.\d+)?)H)?(?:(?P<minutes>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)
_MS_PER = {
    "weeks": 604_800_000,
    "days": 86_400_000,
    "hours": 3_600_000,
    "minutes": 60_000,
    "seconds": 1_000,
}


def parse_datetime_ms(text: str) -> int:
    """ms since the epoch of an ISO 8601 date-time; no zone means UTC (Kafka assumes the
    local zone; UTC is explicit and the same on every machine)."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequestError(
            f"invalid date-time {text!r}: use ISO 8601, e.g. 2026-11-28T09:30:00Z"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def parse_duration_ms(text: str) -> int:
    """ms in an ISO 8601 duration such as P1DT2H30M or PT15M (no years or months: their
    length varies)."""
    match = _DURATION.match(text.strip().upper())
    if not match or text.strip().upper() in ("P", "PT"):
        raise InvalidRequestError(
            f"invalid duration {text!r}: use ISO 8601 like PT15M, P1DT2H or P2W"
        )
    return int(sum(float(v) * _MS_PER[k] for k, v in match.groupdict().items() if v))
