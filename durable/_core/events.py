"""History events and inbox message kinds (plain dicts, msgpack-encoded in Redis).

Every history event is a dict with ``k`` (kind), ``eid`` (dense index in the execution's history)
and ``ts`` (Redis time in ms when it was recorded), plus kind-specific fields. Payload fields
(``input``, ``result``, ``output``) hold already-encoded bytes so that user values are serialized
exactly once, where they are produced.
"""

from __future__ import annotations

from typing import Any, Final

Event = dict[str, Any]

# History event kinds
ORCHESTRATOR_STARTED: Final = "OrchestratorStarted"  # ts: the step's time
EXECUTION_STARTED: Final = "ExecutionStarted"  # name, input, exec, parent, ver (the pinned version)
TASK_SCHEDULED: Final = "TaskScheduled"  # tid, name, input[, to, hbt, call, attempt, hb]
TASK_COMPLETED: Final = "TaskCompleted"  # tid, result
TASK_FAILED: Final = "TaskFailed"  # tid, failure[, details: last heartbeat details]
SUB_CREATED: Final = "SubOrchestrationCreated"  # tid, name, iid, input
SUB_COMPLETED: Final = "SubOrchestrationCompleted"  # tid, result
SUB_FAILED: Final = "SubOrchestrationFailed"  # tid, failure
TIMER_CREATED: Final = "TimerCreated"  # tid, fire_at
TIMER_FIRED: Final = "TimerFired"  # tid, fire_at
EVENT_RAISED: Final = "EventRaised"  # name, input
EVENT_SENT: Final = "EventSent"  # tid, iid, name, input
ENTITY_SIGNALED: Final = "EntitySignaled"  # tid, entity, op, input
ENTITY_CALLED: Final = "EntityCalled"  # tid, entity, op, input, rid
ENTITY_LOCK_REQUESTED: Final = "EntityLockRequested"  # tid, entities, rid
ENTITY_UNLOCKED: Final = "EntityUnlocked"  # tid, entities, rid
ENTITY_RESPONDED: Final = "EntityResponded"  # rid, result | failure
EXECUTION_SUSPENDED: Final = "ExecutionSuspended"  # reason
EXECUTION_RESUMED: Final = "ExecutionResumed"  # reason
EXECUTION_TERMINATED: Final = "ExecutionTerminated"  # output
EXECUTION_COMPLETED: Final = "ExecutionCompleted"  # status, result, failure
EXECUTION_REWOUND: Final = "ExecutionRewound"  # reason: a failed execution was rewound to running
PATCH_MARKER: Final = "PatchMarker"  # patch: the id ctx.is_patched() was asked about (it said True)

#: Events that schedule work; during replay each must match an action the code produced.
SCHEDULING_EVENTS: Final = frozenset(
    {
        TASK_SCHEDULED,
        SUB_CREATED,
        TIMER_CREATED,
        EVENT_SENT,
        ENTITY_SIGNALED,
        ENTITY_CALLED,
        ENTITY_LOCK_REQUESTED,
        ENTITY_UNLOCKED,
    }
)

# Inbox message kinds (the ``kind`` field of a stream entry)
MSG_START: Final = "start"
MSG_EVENT: Final = "event"
MSG_TERMINATE: Final = "terminate"
MSG_SUSPEND: Final = "suspend"
MSG_RESUME: Final = "resume"
MSG_TASK_COMPLETED: Final = "task_completed"
MSG_TASK_FAILED: Final = "task_failed"
MSG_TIMER_FIRED: Final = "timer_fired"
MSG_SUB_COMPLETED: Final = "sub_completed"
MSG_SUB_FAILED: Final = "sub_failed"
MSG_ENTITY_RESPONSE: Final = "entity_response"
MSG_SIGNAL: Final = "signal"
MSG_CALL: Final = "call"
MSG_LOCK: Final = "lock"
MSG_UNLOCK: Final = "unlock"
MSG_REWIND: Final = "rewind"
#: to a partition (no target): purge the terminal instances that match a filter, in batches
MSG_PURGE: Final = "purge"
#: the outcome of a step that a worker with the code ran for the partition owner (delegation.py)
MSG_STEP_RESULT: Final = "step_result"
