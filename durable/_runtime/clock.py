"""The worker's estimate of the Redis clock (durable timers and timestamps use Redis time)."""

from __future__ import annotations

import time


class Clock:
    """Redis-clock milliseconds, estimated from the local clock plus the last measured offset."""

    def __init__(self) -> None:
        self._offset_ms = 0.0

    def now_ms(self) -> int:
        return int(time.time() * 1000 + self._offset_ms)

    def observe(self, redis_now_ms: int) -> None:
        """Record a reading of the Redis clock (from TIME or a script's reply)."""
        if redis_now_ms > 0:
            self._offset_ms = redis_now_ms - time.time() * 1000
