"""The orchestration context: the only door from orchestrator code to the outside world.

Every method here either reads recorded state (time, instance id) or records an *action*
(schedule an activity, start a timer, ...) that the replay executor matches against history.
"""

from __future__ import annotations

import datetime as _dt
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from . import _events as ev
from ._model import RetryPolicy, datetime_to_ms, ms_to_datetime
from ._serialization import decode, encode
from ._tasks import CompletableTask, RetryableTask, Task

_UUID_NAMESPACE = uuid.UUID("9e952958-5e33-4daf-827f-2fa12937b875")

NameOf = Callable[[Any, str], str]


class OrchestrationContext:
    """Passed to every orchestrator invocation; all its effects are durable and replay-safe."""

    def __init__(self, instance_id: str, name_of: NameOf) -> None:
        self._instance_id = instance_id
        self._name_of = name_of
        self._now = ms_to_datetime(0)
        self._now_ms = 0
        self._is_replaying = False
        self._sequence = 0
        self._uuid_counter = 0
        #: actions produced by the code and not yet matched with a history event, by task id
        self._pending_actions: dict[int, ev.Event] = {}
        #: tasks waiting for a completion event, by task id
        self._open_tasks: dict[int, CompletableTask[Any]] = {}
        #: retry timers, by timer task id
        self._retry_timers: dict[int, RetryableTask[Any]] = {}
        self._event_waiters: dict[str, deque[CompletableTask[Any]]] = {}
        self._received_events: dict[str, deque[tuple[str, bytes | None]]] = {}
        self._custom_status: bytes | None = None
        self._custom_status_set = False
        self._continue_as_new: tuple[bytes | None, bool] | None = None
        self._extensions: dict[str, Any] = {}

    # -- read-only facts -------------------------------------------------------------------------
    @property
    def instance_id(self) -> str:
        """The id of this orchestration instance."""
        return self._instance_id

    @property
    def current_utc_datetime(self) -> _dt.datetime:
        """The time of the current step as recorded in history (timezone-aware UTC)."""
        return self._now

    @property
    def is_replaying(self) -> bool:
        """True while the code re-runs over recorded history (use it to silence logging)."""
        return self._is_replaying

    # -- actions ---------------------------------------------------------------------------------
    def _next_id(self) -> int:
        tid = self._sequence
        self._sequence += 1
        return tid

    def _add_action(self, action: ev.Event, task: CompletableTask[Any] | None) -> int:
        tid = self._next_id()
        action["tid"] = tid
        self._pending_actions[tid] = action
        if task is not None:
            self._open_tasks[tid] = task
        return tid

    def call_activity(
        self,
        activity: Callable[..., Any] | str,
        *,
        input: Any = None,
        retry_policy: RetryPolicy | None = None,
    ) -> Task[Any]:
        """Schedule an activity; the task completes with its result or fails with TaskFailedError."""
        name = self._name_of(activity, "activity")
        data = encode(input, what=f"input of activity {name!r}")
        action: ev.Event = {"k": ev.TASK_SCHEDULED, "name": name, "input": data}
        return self._schedule(action, f"activity {name!r}", retry_policy)

    def call_sub_orchestrator(
        self,
        orchestrator: Callable[..., Any] | str,
        *,
        input: Any = None,
        instance_id: str | None = None,
        retry_policy: RetryPolicy | None = None,
    ) -> Task[Any]:
        """Start a child orchestration and wait for its output."""
        name = self._name_of(orchestrator, "orchestrator")
        data = encode(input, what=f"input of sub-orchestration {name!r}")
        action: ev.Event = {"k": ev.SUB_CREATED, "name": name, "input": data, "iid": instance_id}
        return self._schedule(action, f"sub-orchestration {name!r}", retry_policy)

    def _schedule(self, action: ev.Event, description: str, retry_policy: RetryPolicy | None) -> Task[Any]:
        task: CompletableTask[Any]
        if retry_policy is not None:
            task = RetryableTask(description, dict(action), retry_policy, self._now_ms)
        else:
            task = CompletableTask(description)
        self._emit_call(action, task)
        return task

    def _emit_call(self, action: ev.Event, task: CompletableTask[Any]) -> None:
        action = dict(action)
        tid = self._add_action(action, task)
        if action["k"] == ev.SUB_CREATED and not action.get("iid"):
            action["iid"] = f"{self._instance_id}:{tid:04d}"

    def create_timer(self, fire_at: _dt.datetime | _dt.timedelta) -> Task[None]:
        """A durable timer that completes at ``fire_at`` (absolute, or relative to the step time)."""
        when = self._now + fire_at if isinstance(fire_at, _dt.timedelta) else fire_at
        task: CompletableTask[None] = CompletableTask("timer")
        self._add_action({"k": ev.TIMER_CREATED, "fire_at": datetime_to_ms(when)}, task)
        return task

    def _create_retry_timer(self, retryable: RetryableTask[Any], delay: _dt.timedelta) -> None:
        fire_at = datetime_to_ms(self._now + delay)
        tid = self._add_action({"k": ev.TIMER_CREATED, "fire_at": fire_at, "retry": True}, None)
        self._retry_timers[tid] = retryable

    def wait_for_external_event(self, name: str) -> Task[Any]:
        """A task completed by the next event ``name`` raised on this instance (buffered if early)."""
        key = name.casefold()
        task: CompletableTask[Any] = CompletableTask(f"event {name!r}")
        queue = self._received_events.get(key)
        if queue:
            _, data = queue.popleft()
            task._set_result(decode(data))
        else:
            self._event_waiters.setdefault(key, deque()).append(task)
        return task

    def send_event(self, instance_id: str, event_name: str, *, data: Any = None) -> None:
        """Raise an event on another orchestration instance (one-way, durable)."""
        payload = encode(data, what=f"data of event {event_name!r}")
        self._add_action({"k": ev.EVENT_SENT, "iid": instance_id, "name": event_name, "input": payload}, None)

    def continue_as_new(self, new_input: Any, *, save_events: bool = False) -> None:
        """Restart this instance with a fresh history and ``new_input`` once the code returns."""
        self._continue_as_new = (encode(new_input, what="continue_as_new input"), save_events)

    def set_custom_status(self, value: Any) -> None:
        """Publish a small status value readable by clients while the orchestration runs."""
        self._custom_status = encode(value, what="custom status")
        self._custom_status_set = True

    def new_uuid(self) -> str:
        """A UUID that is the same on every replay of this point of the orchestration."""
        name = f"{self._instance_id}_{self._now_ms}_{self._uuid_counter}"
        self._uuid_counter += 1
        return str(uuid.uuid5(_UUID_NAMESPACE, name))
