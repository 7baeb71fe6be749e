"""The running attempts of a worker's activities: their time limits, heartbeats and cancellation.

An :class:`Attempt` is what :class:`~durable.ActivityContext` reports heartbeats to and reads
cancellation from (it may be called from an activity's thread). :class:`AttemptWatch` keeps the
attempts of one worker and wakes up at the nearest deadline: an attempt past its ``timeout``
(start to close, counted from when the function started running) or its ``heartbeat_timeout``
(since its last heartbeat, or its start) is handed to the runner's timeout callback.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import anyio


class Attempt:
    """One delivery of one activity attempt, from dispatch until its result is sent (or dropped)."""

    def __init__(self, eid: str, msg: dict[str, Any]) -> None:
        self.eid = eid
        self.target = str(msg.get("target", ""))
        self.exec = msg.get("exec")
        self.tid = msg.get("tid")
        self.name = str(msg.get("name", ""))
        timeout = msg.get("to")
        beat = msg.get("hbt")
        self.timeout: float | None = timeout / 1000 if isinstance(timeout, int) and timeout > 0 else None
        self.heartbeat_timeout: float | None = beat / 1000 if isinstance(beat, int) and beat > 0 else None
        #: monotonic time the function started running (None while it waits for a thread)
        self.started: float | None = None
        self.last_beat: float | None = None
        #: the last details this attempt recorded (encoded)
        self.details: bytes | None = None
        self._cancelled = False
        #: the runner gave up on the attempt (timed out, or its orchestration ended): its result,
        #: if it ever comes, is discarded
        self.abandoned = False
        #: cancels an ``async def`` activity
        self.scope: anyio.CancelScope | None = None

    # -- the activity's side (any thread) --------------------------------------------------------
    def heartbeat(self, details: bytes | None) -> None:
        self.last_beat = time.monotonic()
        if details is not None:
            self.details = details

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    # -- the runner's side -----------------------------------------------------------------------
    @property
    def limited(self) -> bool:
        """Whether the attempt has a time limit to watch."""
        return self.timeout is not None or self.heartbeat_timeout is not None

    def start(self) -> None:
        now = time.monotonic()
        self.started = now
        self.last_beat = now

    def abandon(self) -> None:
        """Tell the activity to stop; cancel it if it is a coroutine."""
        self.abandoned = True
        self._cancelled = True
        if self.scope is not None:
            self.scope.cancel()

    def due(self) -> float | None:
        """When the attempt times out unless it heartbeats first (monotonic), None for never."""
        if self.started is None or self.abandoned:
            return None
        due = math.inf
        if self.timeout is not None:
            due = self.started + self.timeout
        if self.heartbeat_timeout is not None:
            due = min(due, (self.last_beat or self.started) + self.heartbeat_timeout)
        return due if due != math.inf else None

    def expiry(self, now: float) -> str | None:
        """Why the attempt has timed out at ``now``, or None."""
        if self.started is None or self.abandoned:
            return None
        if self.timeout is not None and now >= self.started + self.timeout:
            return f"the attempt ran longer than its timeout of {self.timeout:g}s"
        if self.heartbeat_timeout is not None:
            since = (self.last_beat or self.started) + self.heartbeat_timeout
            if now >= since:
                return f"the attempt sent no heartbeat for {self.heartbeat_timeout:g}s (heartbeat_timeout)"
        return None

    def elapsed(self) -> float:
        return time.monotonic() - self.started if self.started is not None else 0.0


class AttemptWatch:
    """The attempts of one worker, and the loop that times them out."""

    def __init__(self, on_timeout: Callable[[Attempt, str], None]) -> None:
        self.attempts: dict[str, Attempt] = {}
        self._on_timeout = on_timeout
        self._armed = anyio.Event()

    def add(self, attempt: Attempt) -> None:
        self.attempts[attempt.eid] = attempt

    def remove(self, eid: str) -> Attempt | None:
        return self.attempts.pop(eid, None)

    def arm(self) -> None:
        """A limited attempt started: recompute the next wake-up (event loop thread only)."""
        self._armed.set()

    def running(self) -> list[Attempt]:
        return [a for a in self.attempts.values() if not a.abandoned]

    async def run(self) -> None:
        while True:
            now = time.monotonic()
            wake = math.inf
            for attempt in list(self.attempts.values()):
                reason = attempt.expiry(now)
                if reason is not None:
                    self._on_timeout(attempt, reason)
                    continue
                due = attempt.due()
                if due is not None:
                    wake = min(wake, due)
            with anyio.move_on_after(None if wake == math.inf else max(wake - now, 0.001)):
                await self._armed.wait()
            self._armed = anyio.Event()
