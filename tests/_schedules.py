"""Helpers shared by the schedule tests."""

from __future__ import annotations

import datetime as dt
import re

from _poll import wait_until

from durable import ScheduleDescription
from durable._core.calendar import slot_id

__all__ = ["SECOND", "run_id", "slot_of", "wait_until"]

SECOND = dt.timedelta(seconds=1)
SLOT_ID = re.compile(r"^(?P<sid>[^@]+)@(?P<at>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)$")


def slot_of(instance_id: str) -> dt.datetime:
    """The slot in a run's instance id (``{schedule_id}@{UTC ISO-8601 seconds}Z``)."""
    match = SLOT_ID.match(instance_id)
    assert match, instance_id
    return dt.datetime.strptime(match["at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def run_id(desc: ScheduleDescription, offset: int = 0) -> str:
    """The instance id of the run ``offset`` slots after the description's next run (1 s interval)."""
    assert desc.next_run_at is not None
    return slot_id(desc.schedule_id, int((desc.next_run_at + offset * SECOND).timestamp() * 1000))
