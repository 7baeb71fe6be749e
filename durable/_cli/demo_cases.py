"""What a sample package's ``demo`` module builds ``durable demo`` from: the cases (one
orchestration to follow, or a script that drives entities), their expected outcomes, and the run
handle a script uses."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from .._client import AsyncClient
from .._core.entities import EntityId
from .._core.model import OrchestrationState, OrchestrationStatus

if TYPE_CHECKING:
    from .demo_display import _Row

#: What a row of the live view and of the summary shows while a case has not started.
_SCHEDULED = "SCHEDULED"
#: how often a script polls what has no change event
_POLL_S = 0.05


# ------------------------------------------------------------------------------------------------
# what the samples' demo modules build


@dataclass(frozen=True)
class DemoSettings:
    """What the command line lets a sample's ``cases()`` adapt to."""

    fan_out: int = 200


@dataclass(frozen=True)
class Outcome:
    """How a case ended, as its ``check`` and ``describe`` see it."""

    status: OrchestrationStatus
    output: Any = None
    #: the failure message (a failed orchestration or script)
    failure: str | None = None

    @classmethod
    def of(cls, state: OrchestrationState) -> Outcome:
        details = state.failure_details
        return cls(state.runtime_status, state.output, details.message if details else None)


Check = Callable[[Outcome], str | None]
Describe = Callable[[Outcome], str]


def expect(condition: bool, message: str) -> str | None:
    """A check's verdict: None when ``condition`` holds, else ``message``."""
    return None if condition else message


def _no_children(instance_id: str) -> list[str]:
    return []


@dataclass(frozen=True)
class OrchestrationCase:
    """One orchestration instance the demo schedules, follows and checks."""

    key: str
    title: str
    orchestrator: Any
    input: Any
    check: Check
    describe: Describe
    expected_status: OrchestrationStatus = OrchestrationStatus.COMPLETED
    #: play the approver: raise this event once the custom status is "waiting for approval"
    approve_event: str | None = None
    #: shown while the instance runs and has no custom status
    hint: str = ""
    #: the instance ids of the children it starts (purged with it), from its own instance id
    children: Callable[[str], list[str]] = _no_children
    #: show "k/N activities done" while it runs: (activity name, N) ...
    progress_activity: tuple[str, int] | None = None
    #: ... and, under this label, the rate of those activities in the summary
    rate_label: str | None = None


@dataclass(frozen=True)
class ScriptCase:
    """A case driven by an async script (signals, entity reads, orchestrations, raw Redis): the
    script's return value is the case's output; an exception fails the case."""

    key: str
    title: str
    script: Callable[[DemoRun], Awaitable[Any]]
    check: Check
    describe: Describe
    hint: str = ""


Case = OrchestrationCase | ScriptCase


class DemoRun:
    """What a :class:`ScriptCase`'s script works with: the client, the Redis and hub, and helpers
    that keep the ids of one run apart from another's and clean up after it."""

    def __init__(self, client: AsyncClient, redis_url: str, hub: str, run_id: str, row: _Row) -> None:
        self.client = client
        self.redis_url = redis_url
        self.hub = hub
        self.run_id = run_id
        self._row = row

    def key(self, name: str) -> str:
        """A key (or instance id) unique to this run of the demo."""
        return f"demo-{self.run_id}-{name}"

    def entity(self, name: str, key: str) -> EntityId:
        """The id of entity ``name`` with a key unique to this run (deleted when the demo ends)."""
        entity_id = EntityId(name, self.key(key))
        self._row.entities.append(str(entity_id))
        return entity_id

    def progress(self, text: str) -> None:
        """Show ``text`` in the live view while the script runs."""
        self._row.progress = text

    def track(self, instance_id: str) -> str:
        """Remember an orchestration instance the script started itself: like those of
        :meth:`run_orchestration`, it is terminated if it still runs, then purged, when the demo
        ends. Returns the id."""
        self._row.instances.append(instance_id)
        return instance_id

    async def entity_state(self, entity_id: EntityId | str) -> Any:
        """The entity's state (None when it does not exist)."""
        state = await self.client.get_entity(entity_id)
        return None if state is None else state.state

    async def wait_for_entity(self, entity_id: EntityId | str, until: Callable[[Any], bool]) -> Any:
        """Poll the entity until ``until(state)`` holds (a signal has no completion to wait for);
        returns that state. The demo's timeout bounds the wait."""
        while True:
            state = await self.entity_state(entity_id)
            if until(state):
                return state
            await anyio.sleep(_POLL_S)

    async def run_orchestration(self, orchestrator: Any, input: Any, key: str) -> OrchestrationState:
        """Start an orchestration (instance id unique to this run, purged when the demo ends) and
        wait for it to finish."""
        instance_id = self.key(key)
        self._row.instances.append(instance_id)
        await self.client.schedule_new_orchestration(orchestrator, input=input, instance_id=instance_id)
        return await self.client.wait_for_orchestration_completion(instance_id, timeout=3600)
