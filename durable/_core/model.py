"""The pure domain model: statuses, failure details, states, retry policy arithmetic.

No I/O lives here; the executors and the store build on these types.
"""

from __future__ import annotations

import datetime as _dt
import traceback
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class OrchestrationStatus(StrEnum):
    """The runtime status of an orchestration instance."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    TERMINATED = "TERMINATED"
    SUSPENDED = "SUSPENDED"
    CONTINUED_AS_NEW = "CONTINUED_AS_NEW"

    @property
    def is_terminal(self) -> bool:
        """True for statuses after which the instance does no more work."""
        return self in _TERMINAL


_TERMINAL = frozenset(
    {OrchestrationStatus.COMPLETED, OrchestrationStatus.FAILED, OrchestrationStatus.TERMINATED}
)


@dataclass(frozen=True)
class FailureDetails:
    """What went wrong in an activity, sub-orchestration, entity operation or orchestration."""

    message: str
    error_type: str
    stack_trace: str | None = None

    @classmethod
    def from_exception(cls, exc: BaseException) -> FailureDetails:
        """Capture an exception's message, type name and formatted traceback."""
        stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return cls(message=str(exc) or type(exc).__name__, error_type=type(exc).__name__, stack_trace=stack)

    def to_record(self) -> dict[str, Any]:
        """The plain-dict form stored in history and messages."""
        return {"message": self.message, "error_type": self.error_type, "stack_trace": self.stack_trace}

    @classmethod
    def from_record(cls, rec: dict[str, Any] | None) -> FailureDetails | None:
        """Inverse of :meth:`to_record`."""
        if rec is None:
            return None
        return cls(str(rec.get("message", "")), str(rec.get("error_type", "Error")), rec.get("stack_trace"))


class TaskFailedError(Exception):
    """Raised where a failed activity, sub-orchestration or entity call is awaited/yielded."""

    def __init__(self, message: str, details: FailureDetails) -> None:
        super().__init__(message)
        self.details = details


class NonDeterminismError(Exception):
    """The orchestration code no longer matches its recorded history."""


class OrchestrationNotFoundError(LookupError):
    """No orchestration (or orchestrator function) with that id/name exists."""


class OrchestrationAlreadyExistsError(Exception):
    """An instance with that id is already running."""


@dataclass(frozen=True)
class OrchestrationState:
    """A snapshot of one orchestration instance, with payloads deserialized."""

    instance_id: str
    name: str
    runtime_status: OrchestrationStatus
    input: Any
    output: Any
    custom_status: Any
    failure_details: FailureDetails | None
    created_at: _dt.datetime
    last_updated_at: _dt.datetime
    scheduled_start_at: _dt.datetime | None = None
    parent_instance_id: str | None = None
    #: the orchestrator version the instance is pinned to ("": unversioned, or not pinned yet)
    version: str = ""

    def raise_if_failed(self) -> None:
        """Raise :class:`TaskFailedError` when the orchestration failed."""
        if self.runtime_status == OrchestrationStatus.FAILED and self.failure_details is not None:
            raise TaskFailedError(self.failure_details.message, self.failure_details)


@dataclass(frozen=True)
class RetryPolicy:
    """How a failed activity or sub-orchestration is retried; waits are durable timers."""

    first_retry_interval: _dt.timedelta
    max_number_of_attempts: int
    backoff_coefficient: float = 1.0
    max_retry_interval: _dt.timedelta | None = None
    retry_timeout: _dt.timedelta | None = None

    def __post_init__(self) -> None:
        if self.first_retry_interval <= _dt.timedelta(0):
            raise ValueError("first_retry_interval must be positive")
        if self.max_number_of_attempts < 1:
            raise ValueError("max_number_of_attempts must be at least 1")
        if self.backoff_coefficient < 1.0:
            raise ValueError("backoff_coefficient must be >= 1.0")

    def next_delay(self, attempt: int, elapsed: _dt.timedelta) -> _dt.timedelta | None:
        """Delay before attempt ``attempt + 1`` after attempt ``attempt`` failed, or None to give up."""
        if attempt >= self.max_number_of_attempts:
            return None
        seconds = self.first_retry_interval.total_seconds() * self.backoff_coefficient ** (attempt - 1)
        delay = _dt.timedelta(seconds=seconds)
        if self.max_retry_interval is not None and delay > self.max_retry_interval:
            delay = self.max_retry_interval
        if self.retry_timeout is not None and elapsed + delay > self.retry_timeout:
            return None
        return delay


def ms_to_datetime(ms: int) -> _dt.datetime:
    """Milliseconds since the epoch to an aware UTC datetime."""
    return _dt.datetime.fromtimestamp(ms / 1000.0, tz=_dt.UTC)


def datetime_to_ms(value: _dt.datetime) -> int:
    """Aware datetime to milliseconds since the epoch (naive values are taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=_dt.UTC)
    return int(value.timestamp() * 1000)
