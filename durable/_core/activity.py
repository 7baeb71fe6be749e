"""What an activity sees of the engine: :class:`ActivityContext`.

Pure: the context only records what the activity reports (heartbeats) and reads what the worker
tells it (cancellation) through an :class:`AttemptMonitor` the runtime provides.
"""

from __future__ import annotations

from typing import Any, Protocol

from .serialization import LARGE_PAYLOAD_BYTES, decode, encode

#: encoded heartbeat details are kept in history with the attempt's failure: keep them small
MAX_HEARTBEAT_DETAILS_BYTES = LARGE_PAYLOAD_BYTES


class AttemptMonitor(Protocol):
    """The worker's side of one running attempt (thread-safe: sync activities run on threads)."""

    def heartbeat(self, details: bytes | None) -> None:
        """The activity is alive; ``details`` (encoded, or None to keep the last) is its progress."""
        ...

    @property
    def cancelled(self) -> bool:
        """True once the attempt timed out or its orchestration ended."""
        ...


class ActivityContext:
    """Passed to every activity invocation.

    ``attempt`` counts the retry policy's attempts of one ``call_activity`` (1, 2, 3 ...);
    ``delivery`` counts the deliveries of this attempt (more than 1 after a worker crashed while
    running it); ``idempotency_key`` is the same for every attempt and every delivery of one call.
    """

    def __init__(
        self,
        orchestration_id: str,
        task_id: int,
        attempt: int,
        idempotency_key: str,
        name: str = "",
        *,
        delivery: int = 1,
        heartbeat_details: bytes | None = None,
        monitor: AttemptMonitor | None = None,
    ) -> None:
        self._orchestration_id = orchestration_id
        self._task_id = task_id
        self._attempt = attempt
        self._idempotency_key = idempotency_key
        self._name = name
        self._delivery = delivery
        self._previous_details = heartbeat_details
        self._monitor = monitor

    @property
    def orchestration_id(self) -> str:
        """The instance id of the orchestration that called the activity."""
        return self._orchestration_id

    @property
    def task_id(self) -> int:
        """The task id of this attempt in the orchestration's history."""
        return self._task_id

    @property
    def attempt(self) -> int:
        """1, 2, 3 ...: which attempt of the ``call_activity`` this is (retry policy attempts)."""
        return self._attempt

    @property
    def delivery(self) -> int:
        """1, 2 ...: how often this attempt was delivered (a worker crash delivers it again)."""
        return self._delivery

    @property
    def idempotency_key(self) -> str:
        """``instance:execution:task``, the same for every attempt and delivery of one call."""
        return self._idempotency_key

    @property
    def name(self) -> str:
        """The activity's registered name."""
        return self._name

    @property
    def heartbeat_details(self) -> Any:
        """The last details an earlier attempt of this call recorded with :meth:`heartbeat`, else
        None: where a retried attempt can resume."""
        return decode(self._previous_details)

    @property
    def is_cancelled(self) -> bool:
        """True once this attempt timed out or its orchestration ended: stop and return (the
        result of a cancelled attempt is discarded)."""
        return self._monitor is not None and self._monitor.cancelled

    def heartbeat(self, details: Any = None) -> None:
        """Record that the attempt is alive, and optionally its progress (``details``).

        An attempt called with ``heartbeat_timeout`` must heartbeat at least that often or it is
        timed out. The last ``details`` recorded (calls without details keep them) reach the next
        attempt as :attr:`heartbeat_details`. Raises SerializationError or PayloadTooLargeError
        (over 64 KB) for details that cannot be kept.
        """
        data = None
        if details is not None:
            data = encode(details, what="heartbeat details", limit=MAX_HEARTBEAT_DETAILS_BYTES)
        if self._monitor is not None:
            self._monitor.heartbeat(data)

    def _with_key(self, idempotency_key: str) -> ActivityContext:
        """This context with another idempotency key (an activity that runs several idempotent
        pieces of work, such as an agent's tool calls, gives each its own key)."""
        copy = ActivityContext.__new__(ActivityContext)
        copy.__dict__.update(self.__dict__)
        copy._idempotency_key = idempotency_key
        return copy

    def __repr__(self) -> str:
        return (
            f"ActivityContext(orchestration_id={self._orchestration_id!r}, task_id={self._task_id}, "
            f"attempt={self._attempt}, delivery={self._delivery}, "
            f"idempotency_key={self._idempotency_key!r}, name={self._name!r})"
        )
