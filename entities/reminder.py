"""Reminder: a scheduled signal (``signal_at``).

A signal can carry a time: the worker parks it on the partition's timer set and applies it no
earlier than that time (on the Redis server's clock), durably, even if every worker restarts in
between. Anyone can send one: a client (``client.signal_entity(..., signal_at=when)``), an entity
(``ctx.signal_entity(..., signal_at=when)``, as :meth:`Reminder.set` does to itself), or any
language (the ``at`` field of the wire format, docs/wire-format.md).

:class:`Reminder` stores a message and a due time and schedules a ``ring`` signal to itself. Each
``set`` schedules a new ring and makes the earlier ones stale: a ring only counts when it carries
the current due time, which is also how ``cancel`` works (durable signals cannot be withdrawn,
so the entity ignores the ones it no longer wants, and counts them).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from durable import Entity, EntityId

#: The registered name of :class:`Reminder` (entity ids ``@reminder@<key>``).
REMINDER = "reminder"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def due_time(spec: dict[str, Any]) -> dt.datetime:
    """The due time of a ``set`` request: ``{"at": ISO-8601 date-time}`` or ``{"in_s": seconds}``."""
    if spec.get("at") is not None:
        due = dt.datetime.fromisoformat(str(spec["at"]).replace("Z", "+00:00"))
        return due if due.tzinfo is not None else due.replace(tzinfo=dt.UTC)
    return _now() + dt.timedelta(seconds=float(spec.get("in_s", 60)))


class Reminder(Entity):
    """A reminder. State: ``{"message", "due", "rang_at", "rings", "ignored"}`` (times as ISO-8601
    strings; ``ignored`` counts the stale rings that arrived)."""

    state: Any = None

    def set(self, spec: dict[str, Any]) -> str:
        """Remind of ``spec["message"]`` at ``spec["at"]`` (or in ``spec["in_s"]`` seconds);
        returns the due time."""
        due = due_time(spec).isoformat()
        ignored = self.state["ignored"] if self.state else 0
        message = str(spec.get("message", ""))
        self.state = {"message": message, "due": due, "rang_at": None, "rings": 0, "ignored": ignored}
        self.context.signal_entity(
            self.entity_id, "ring", input=due, signal_at=dt.datetime.fromisoformat(due)
        )
        return due

    def ring(self, due: str | None = None) -> bool:
        """The scheduled signal: records when it rang. Returns False for a stale ring (one of an
        earlier ``set``, or of a cancelled reminder)."""
        if not self.state:
            return False  # never set, or deleted: nothing to remember
        if self.state["due"] is None or due != self.state["due"]:
            self.state["ignored"] += 1
            return False
        self.state["rang_at"] = _now().isoformat()
        self.state["rings"] += 1
        return True

    def cancel(self) -> None:
        """Forget the pending ring (it still arrives, and is ignored)."""
        if self.state:
            self.state["due"] = None

    def get(self) -> Any:
        """The reminder's state (None when it was never set)."""
        return self.state


def reminder(key: str) -> EntityId:
    """The id of reminder ``key``."""
    return EntityId(REMINDER, key)
