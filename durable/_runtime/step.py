"""One partition step: what its orchestration half and entity half share while they build the commit.

A step reads a batch of inbox entries, hands each target's messages to the half that owns it
(orchestrations, or entities for ``@name@key`` targets), and commits everything they planned in one
atomic script call. Both halves have the same shape (:class:`StepHalf`): load what the step
addresses (one round trip), process each target's messages (pure, no I/O), flush into the plan.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .._core.serialization import pack_record
from .._store.keys import PartitionKeys, partition_of
from .._store.store import CommitPlan

if TYPE_CHECKING:
    from .._core.executor import StepResult
    from .instances import Instance

#: an inbox message decoded into a dict with at least ``kind`` and ``target``
Message = dict[str, Any]


@dataclass(eq=False)
class StepState:
    """The commit plan of one step, and what the step touched."""

    index: int
    partitions: int
    keys: PartitionKeys
    #: the inbox stream of another partition
    inbox_of: Callable[[int], str]
    now: int
    plan: CommitPlan
    #: the step's messages by target, in inbox order (what the halves will process), for a look
    #: ahead in ``load``
    messages: dict[str, list[Message]] = field(default_factory=dict)
    #: the orchestration instances the step addresses, held for the step (the replay cache may
    #: evict one while another partition's step commits)
    instances: dict[str, Instance] = field(default_factory=dict)
    touched: dict[str, Instance] = field(default_factory=dict)
    finished: list[tuple[Instance, StepResult]] = field(default_factory=list)
    started: list[Instance] = field(default_factory=list)
    #: the metric kind of every message this step dead-letters (counted once it commits)
    dead_lettered: list[str] = field(default_factory=list)
    #: what to do once the step has committed, and only then (emit spans and log lines)
    after_commit: list[Callable[[], None]] = field(default_factory=list)
    #: what the step's entities observed for the metrics, e.g. schedule runs (counted once it commits)
    notes: list[tuple[str, Any]] = field(default_factory=list)
    #: instances addressed by a lifecycle command (rewind, recursive terminate) that needs their
    #: history even when they are not running
    needs_history: set[str] = field(default_factory=set)

    def route(self, target: str, msg: Message) -> None:
        """Send ``msg`` to the partition of ``target`` as part of this step's commit."""
        data = pack_record(msg)
        p = partition_of(target, self.partitions)
        if p == self.index:
            self.plan.self_messages.append({"m": data})
        else:
            self.plan.outbox.append({"dst": self.inbox_of(p), "m": data})


class StepHalf(Protocol):
    """The orchestration half and the entity half of a partition step."""

    def owns(self, target: str) -> bool:
        """Whether messages to ``target`` are this half's."""
        ...

    async def load(self, step: StepState, targets: list[str]) -> None:
        """Read what the step's targets need from Redis (one round trip)."""
        ...

    def process(self, step: StepState, target: str, msgs: list[Message]) -> None:
        """Apply one target's messages, in inbox order, to the step's plan (no I/O)."""
        ...

    def flush(self, step: StepState) -> None:
        """Add what is left (record writes, releases, dead letters) to the step's plan."""
        ...
