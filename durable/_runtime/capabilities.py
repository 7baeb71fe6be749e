"""What the live workers of a hub can run, as this worker last heard it (every heartbeat).

Each heartbeat publishes this worker's capabilities (``o|name|version``, ``o|name|*``, ``a|name``,
``e|name``; see :func:`durable._core.registry.capability`) with the expiry of its heartbeat, and
reads everybody's. A capability is *live* while some worker's heartbeat carrying it has not
expired, and *recent* while it was live within the grace period: work for a capability that is
not recent fails (for activities, entities and unknown orchestrator names), work for a recent one
waits for a worker that has it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable


class CapabilityView:
    """Capability -> until when (Redis-clock ms) a live worker is known to have it."""

    def __init__(
        self,
        now_ms: Callable[[], int],
        grace_ms: int,
        own: Iterable[str] = (),
        fetch: Callable[[], Awaitable[dict[str, int]]] | None = None,
    ) -> None:
        self._now_ms = now_ms
        self.grace_ms = grace_ms
        self._own = frozenset(own)
        self._expiry: dict[str, int] = {}
        self._fetch = fetch

    async def refresh(self) -> None:
        """Read everybody's capabilities now, rather than at the next heartbeat: before giving up
        on work for code this worker lacks (a worker that just started has it, and this worker
        has not heard yet)."""
        if self._fetch is not None:
            self.update(await self._fetch())

    async def confirm_recent(self, cap: str) -> bool:
        """:meth:`recent`, refreshed from Redis when the last heartbeat says no."""
        if self.recent(cap):
            return True
        await self.refresh()
        return self.recent(cap)

    @property
    def own(self) -> frozenset[str]:
        """This worker's own capabilities."""
        return self._own

    def update(self, expiry: dict[str, int]) -> None:
        """Take what the last heartbeat read."""
        self._expiry = dict(expiry)

    def expiry(self, cap: str) -> int | None:
        return self._expiry.get(cap)

    def live(self, cap: str) -> bool:
        """Whether a live worker has ``cap`` (this worker included)."""
        if cap in self._own:
            return True
        until = self._expiry.get(cap)
        return until is not None and until > self._now_ms()

    def recent(self, cap: str) -> bool:
        """Whether a worker had ``cap`` within the grace period (so work for it waits rather than
        failing)."""
        if cap in self._own:
            return True
        until = self._expiry.get(cap)
        return until is not None and until > self._now_ms() - self.grace_ms

    def stale(self) -> list[str]:
        """Capabilities some worker once had and none has had within the grace period."""
        return sorted(c for c in self._expiry if not self.recent(c))
