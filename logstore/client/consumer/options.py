"""Validated consumer options and the retry backoff: plain values, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

from logstore import errors
from logstore.types import check_assignor_name

#: accepted auto_offset_reset values; "none" is Kafka's spelling of "error"
RESET_POLICIES = frozenset({"earliest", "latest", "error", "none"})
#: strategy of a partition whose position comes from the group's commit, else the policy
COMMITTED = "committed"
_INT32_MAX = 2**31 - 1
#: the longest wait between retries of a failing request (s)
MAX_RETRY_BACKOFF_S = 1.0


@dataclass(frozen=True)
class ConsumerOptions:
    """Validated consumer options (Kafka names in snake_case; sizes in bytes, times in ms)."""

    group_id: str | None
    auto_offset_reset: str
    enable_auto_commit: bool
    auto_commit_interval_ms: int
    max_poll_records: int
    fetch_min_bytes: int
    fetch_max_wait_ms: int
    fetch_max_bytes: int
    max_partition_fetch_bytes: int
    session_timeout_ms: int
    heartbeat_interval_ms: int
    max_poll_interval_ms: int
    request_timeout_ms: int
    retry_backoff_ms: int
    metadata_max_age_ms: int
    client_id: str
    group_remote_assignor: str | None

    def validate(self) -> None:
        if self.group_id == "":
            raise errors.InvalidRequestError("group_id must be None or a non-empty string")
        if self.group_remote_assignor is not None:
            check_assignor_name(self.group_remote_assignor)
        if self.auto_offset_reset not in RESET_POLICIES:
            raise errors.InvalidRequestError(
                f"auto_offset_reset {self.auto_offset_reset!r}: use 'earliest', 'latest' or 'error'"
            )
        for name in (
            "auto_commit_interval_ms",
            "max_poll_records",
            "fetch_max_bytes",
            "max_partition_fetch_bytes",
            "session_timeout_ms",
            "heartbeat_interval_ms",
            "max_poll_interval_ms",
            "request_timeout_ms",
            "metadata_max_age_ms",
        ):
            if getattr(self, name) <= 0:
                raise errors.InvalidRequestError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("fetch_min_bytes", "fetch_max_wait_ms", "retry_backoff_ms"):
            if getattr(self, name) < 0:
                raise errors.InvalidRequestError(f"{name} must be >= 0, got {getattr(self, name)}")
        # sent as int32 request fields: a larger value would fail in a background thread
        for name in (
            "fetch_min_bytes",
            "fetch_max_wait_ms",
            "fetch_max_bytes",
            "max_partition_fetch_bytes",
            "session_timeout_ms",
            "max_poll_interval_ms",
        ):
            if getattr(self, name) > _INT32_MAX:
                raise errors.InvalidRequestError(
                    f"{name} must be <= {_INT32_MAX}, got {getattr(self, name)}"
                )

    @property
    def reset_policy(self) -> str:
        return "error" if self.auto_offset_reset == "none" else self.auto_offset_reset

    def require_group(self, what: str) -> str:
        """The group id; raises InvalidRequestError, naming `what`, when there is none."""
        if self.group_id is None:
            raise errors.InvalidRequestError(f"{what} needs a consumer created with a group_id")
        return self.group_id


class Backoff:
    """Exponential retry delay in seconds: base, 2 x base, ... capped at MAX_RETRY_BACKOFF_S."""

    def __init__(self, base_s: float) -> None:
        self._base = max(base_s, 0.001)
        self._next = self._base

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, MAX_RETRY_BACKOFF_S)
        return delay

    def reset(self) -> None:
        self._next = self._base
