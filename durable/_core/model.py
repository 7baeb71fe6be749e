"""The pure domain model: statuses, failure details, states, retry policy arithmetic.

No I/O lives here; the executors and the store build on these types.
"""

from __future__ import annotations

import datetime as _dt
import signal
import threading
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .convert import rebuild


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


#: how many causes (inner failures) a failure record keeps
_MAX_CAUSES = 8


def qualified_name(cls: type) -> str:
    """``module.QualName`` of a class (``builtins.ValueError`` for built-in ones)."""
    return f"{cls.__module__}.{cls.__qualname__}"


def _type_names(cls: type) -> tuple[str, ...]:
    return tuple(qualified_name(c) for c in cls.__mro__ if c is not object)


@dataclass(frozen=True)
class FailureDetails:
    """What went wrong in an activity, sub-orchestration, entity operation or orchestration.

    ``inner_failure`` is the cause: the failure of the activity or sub-orchestration behind a
    :class:`TaskFailedError`, or the exception an error was raised ``from``.
    """

    message: str
    error_type: str
    stack_trace: str | None = None
    inner_failure: FailureDetails | None = None
    #: qualified names (``module.Class``) of the error's type and of its base classes, most derived
    #: first; empty when the failure was not captured from a Python exception
    error_types: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def from_exception(cls, exc: BaseException, *, _depth: int = 0) -> FailureDetails:
        """Capture an exception's message, type, formatted traceback and cause."""
        stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        inner: FailureDetails | None = None
        if _depth < _MAX_CAUSES:
            if isinstance(exc, TaskFailedError):
                inner = exc.details
            elif isinstance(exc.__cause__, BaseException):
                inner = cls.from_exception(exc.__cause__, _depth=_depth + 1)
        return cls(
            message=str(exc) or type(exc).__name__,
            error_type=type(exc).__name__,
            stack_trace=stack,
            inner_failure=inner,
            error_types=_type_names(type(exc)),
        )

    @classmethod
    def of(cls, error: type[BaseException], message: str) -> FailureDetails:
        """A failure of type ``error`` raised by the engine itself (no traceback)."""
        return cls(message, error.__name__, None, None, _type_names(error))

    def is_caused_by(self, error: type[BaseException] | str) -> bool:
        """Whether this failure, or one of its causes (the ``inner_failure`` chain), is ``error``.

        A type matches its subclasses too (``is_caused_by(OSError)`` is true for a
        ``ConnectionError``); a name matches the error's own type only, as ``"Class"`` or
        ``"module.Class"``.
        """
        failure: FailureDetails | None = self
        for _ in range(_MAX_CAUSES + 1):
            if failure is None:
                return False
            if failure._is(error):
                return True
            failure = failure.inner_failure
        return False

    def _is(self, error: type[BaseException] | str) -> bool:
        if isinstance(error, str):
            if "." in error:
                own = self.error_types[0] if self.error_types else self.error_type
                return error in (own, self.error_type)
            return error == self.error_type
        name = qualified_name(error)
        if self.error_types:
            return name in self.error_types
        return self.error_type in (error.__name__, name)

    def to_record(self) -> dict[str, Any]:
        """The plain-dict form stored in history and messages."""
        rec: dict[str, Any] = {
            "message": self.message,
            "error_type": self.error_type,
            "stack_trace": self.stack_trace,
        }
        if self.inner_failure is not None:
            rec["inner"] = self.inner_failure.to_record()
        if self.error_types:
            rec["types"] = list(self.error_types)
        return rec

    @classmethod
    def from_record(cls, rec: dict[str, Any] | None, *, _depth: int = 0) -> FailureDetails | None:
        """Inverse of :meth:`to_record`."""
        if rec is None:
            return None
        inner_rec = rec.get("inner")
        inner = (
            cls.from_record(inner_rec, _depth=_depth + 1)
            if isinstance(inner_rec, dict) and _depth < _MAX_CAUSES
            else None
        )
        types = rec.get("types")
        return cls(
            str(rec.get("message", "")),
            str(rec.get("error_type", "Error")),
            rec.get("stack_trace"),
            inner,
            tuple(str(t) for t in types) if isinstance(types, list) else (),
        )


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
    tags: dict[str, str] = field(default_factory=dict)

    def output_as(self, tp: Any) -> Any:
        """The output rebuilt into type ``tp`` (a dataclass, a pydantic model, ``list[Item]``,
        an enum, ...); raises SerializationError naming the field that does not fit."""
        return rebuild(self.output, tp, f"output of orchestration {self.instance_id!r}")

    def input_as(self, tp: Any) -> Any:
        """The input rebuilt into type ``tp`` (see :meth:`output_as`)."""
        return rebuild(self.input, tp, f"input of orchestration {self.instance_id!r}")

    def raise_if_failed(self) -> None:
        """Raise :class:`TaskFailedError` when the orchestration failed."""
        if self.runtime_status == OrchestrationStatus.FAILED and self.failure_details is not None:
            raise TaskFailedError(self.failure_details.message, self.failure_details)


class ActivityTimeoutError(TimeoutError):
    """An activity attempt ran past its ``timeout``, or did not heartbeat within its
    ``heartbeat_timeout``; the orchestration sees it as the attempt's failure."""


ErrorMatcher = type[BaseException] | str


@dataclass(frozen=True)
class RetryPolicy:
    """How a failed activity or sub-orchestration is retried; waits are durable timers.

    A failure is not retried when it, or one of its causes, matches ``non_retryable_errors``
    (exception types, whose subclasses match too, or names: ``"Class"`` or ``"module.Class"``),
    or when ``should_retry(failure_details)`` returns False. ``should_retry`` runs inside the
    orchestration, on every replay: it must be deterministic.
    """

    first_retry_interval: _dt.timedelta
    max_number_of_attempts: int
    backoff_coefficient: float = 1.0
    max_retry_interval: _dt.timedelta | None = None
    retry_timeout: _dt.timedelta | None = None
    non_retryable_errors: tuple[ErrorMatcher, ...] = ()
    should_retry: Callable[[FailureDetails], bool] | None = None

    def __post_init__(self) -> None:
        if self.first_retry_interval <= _dt.timedelta(0):
            raise ValueError("first_retry_interval must be positive")
        if self.max_number_of_attempts < 1:
            raise ValueError("max_number_of_attempts must be at least 1")
        if self.backoff_coefficient < 1.0:
            raise ValueError("backoff_coefficient must be >= 1.0")
        errors: Iterable[Any] = self.non_retryable_errors
        if isinstance(errors, (str, type)):
            errors = (errors,)
        normalized = tuple(errors)
        for item in normalized:
            valid_type = isinstance(item, type) and issubclass(item, BaseException)
            if not (valid_type or (isinstance(item, str) and item)):
                raise TypeError(f"non_retryable_errors holds exception types or names, not {item!r}")
        object.__setattr__(self, "non_retryable_errors", normalized)
        if self.should_retry is not None and not callable(self.should_retry):
            raise TypeError("should_retry must be a callable taking FailureDetails and returning a bool")

    def is_retryable(self, failure: FailureDetails) -> bool:
        """False when ``failure`` (or one of its causes) is listed in ``non_retryable_errors``."""
        return not any(failure.is_caused_by(error) for error in self.non_retryable_errors)

    def next_delay(
        self, attempt: int, elapsed: _dt.timedelta, failure: FailureDetails | None = None
    ) -> _dt.timedelta | None:
        """Delay before attempt ``attempt + 1`` after attempt ``attempt`` failed with ``failure``,
        or None to give up. Calls ``should_retry`` (whose errors propagate)."""
        if failure is not None and not self.is_retryable(failure):
            return None
        if attempt >= self.max_number_of_attempts:
            return None
        seconds = self.first_retry_interval.total_seconds() * self.backoff_coefficient ** (attempt - 1)
        delay = _dt.timedelta(seconds=seconds)
        if self.max_retry_interval is not None and delay > self.max_retry_interval:
            delay = self.max_retry_interval
        if self.retry_timeout is not None and elapsed + delay > self.retry_timeout:
            return None
        if failure is not None and self.should_retry is not None and not self.should_retry(failure):
            return None
        return delay


#: at most this many tags per instance, each key and value at most this many characters
MAX_TAGS = 32
MAX_TAG_CHARS = 256


def encode_tags(tags: dict[str, str] | None) -> str:
    """Tags as stored (and indexed by the scripts): ``<len>:<key><len>:<value>...``, sorted by key.

    Lengths count bytes of UTF-8. Raises ValueError/TypeError for tags that are not short strings."""
    if not tags:
        return ""
    if not isinstance(tags, dict):
        raise TypeError(f"tags must be a dict of str to str, got {type(tags).__qualname__}")
    if len(tags) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} tags per instance, got {len(tags)}")
    out: list[str] = []
    for key in sorted(tags):
        value = tags[key]
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"tags must map str to str: {key!r}: {value!r}")
        if not key or len(key) > MAX_TAG_CHARS or len(value) > MAX_TAG_CHARS:
            raise ValueError(
                f"tag {key!r}: keys must be 1 to {MAX_TAG_CHARS} characters, values at most that"
            )
        for part in (key, value):
            out.append(f"{len(part.encode())}:{part}")
    return "".join(out)


def decode_tags(data: bytes | str | None) -> dict[str, str]:
    """Inverse of :func:`encode_tags`."""
    if not data:
        return {}
    raw = data if isinstance(data, bytes) else data.encode()
    parts: list[str] = []
    i = 0
    while i < len(raw):
        colon = raw.index(b":", i)
        size = int(raw[i:colon])
        parts.append(raw[colon + 1 : colon + 1 + size].decode())
        i = colon + 1 + size
    return dict(zip(parts[0::2], parts[1::2], strict=True))


def tag_index_part(key: str, value: str) -> str:
    """One tag as it appears in an index key name (``q:t:<this>``)."""
    return f"{len(key.encode())}:{key}{len(value.encode())}:{value}"


_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
_MS = _dt.timedelta(milliseconds=1)


def ms_to_datetime(ms: int) -> _dt.datetime:
    """Milliseconds since the epoch to an aware UTC datetime (exact: no float rounding, so
    :func:`datetime_to_ms` gives ``ms`` back)."""
    return _EPOCH + _dt.timedelta(milliseconds=int(ms))


def datetime_to_ms(value: _dt.datetime) -> int:
    """Aware datetime to milliseconds since the epoch (naive values are taken as UTC; exact)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=_dt.UTC)
    return (value - _EPOCH) // _MS


def is_interrupt(exc: BaseException) -> bool:
    """Whether ``exc``, raised while user code ran, stops the process instead of failing that code.

    Whatever orchestrator, activity or entity code raises is that code's failure, ``SystemExit``
    and ``KeyboardInterrupt`` included (``argparse`` raises ``SystemExit(2)`` on bad input): the
    instance, task or operation fails with it and the worker goes on. The one exception is a
    KeyboardInterrupt that Ctrl-C may have delivered: Python's SIGINT handler raises it in the main
    thread, inside whatever code runs at that moment, where it cannot be told from one the code
    raised itself, so it is let through to stop the process. Where SIGINT cannot raise it (any
    other thread; SIGINT ignored, or routed to an event loop's signal receiver as under ``durable
    worker``), a KeyboardInterrupt is the code's own.

    Shared by the executors of user code: the orchestration executor, activities and entities.
    """
    if not isinstance(exc, KeyboardInterrupt):
        return False
    if threading.current_thread() is not threading.main_thread():
        return False  # signals are handled in the main thread only
    handler = signal.getsignal(signal.SIGINT)
    if handler is None or handler in (signal.SIG_IGN, signal.SIG_DFL):
        return False
    # asyncio's loop.add_signal_handler (anyio's open_signal_receiver) installs a no-op that only
    # wakes the loop; any other Python handler (the default one, asyncio.run's) may raise
    return getattr(handler, "__name__", "") != "_sighandler_noop"
