"""The orchestration context: the only door from orchestrator code to the outside world.

Every method here either reads recorded state (time, instance id) or records an *action*
(schedule an activity, start a timer, ...) that the replay executor matches against history.
"""

from __future__ import annotations

import datetime as _dt
import sys
import uuid
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from . import events as ev
from .convert import return_type as _declared_return
from .entities import EntityId, sort_entities
from .model import FailureDetails, RetryPolicy, datetime_to_ms, ms_to_datetime
from .registry import UNVERSIONED, check_version
from .replay_log import ReplaySafeLogger
from .serialization import encode
from .tasks import CompletableTask, EventTask, RetryableTask, Task

_UUID_NAMESPACE = uuid.UUID("9e952958-5e33-4daf-827f-2fa12937b875")

NameOf = Callable[[Any, str], str]


class _Nothing(dict[Any, Any]):
    """The empty map every context shares until it needs one of its own: reads work as on
    ``{}``; a write raises, so each write site first gives the context its own dict. A cached
    (waiting) instance so holds no empty dicts, which cost 64 bytes each and never shrink."""

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("a context wrote to the shared empty map instead of its own dict")

    __setitem__ = setdefault = update = __ior__ = _refuse


#: see :class:`_Nothing`; ``NO_ITEMS`` is the same for the lists (a tuple: it has no append)
NOTHING: Any = _Nothing()
NO_ITEMS: Any = ()


class OrchestrationContext:
    """Passed to every orchestrator invocation; all its effects are durable and replay-safe."""

    # slots: every cached (waiting) instance holds its context
    __slots__ = (
        "_continue_as_new",
        "_custom_status",
        "_custom_status_set",
        "_event_waiters",
        "_extensions",
        "_instance_id",
        "_is_replaying",
        "_log_records",
        "_logger",
        "_marker_ahead",
        "_name",
        "_name_of",
        "_new_markers",
        "_now_ms",
        "_open_tasks",
        "_parent_instance_id",
        "_patches",
        "_pending_actions",
        "_received_events",
        "_retry_timers",
        "_sequence",
        "_uuid_counter",
        "_version",
    )

    def __init__(self, instance_id: str, name_of: NameOf) -> None:
        self._instance_id = instance_id
        self._name_of = name_of
        self._now_ms = 0
        self._is_replaying = False
        self._sequence = 0
        self._uuid_counter = 0
        # the maps and lists below start as the shared empty ones (NOTHING, NO_ITEMS): a write
        # site first swaps in an own container, and _compact() puts the shared ones back
        #: actions produced by the code and not yet matched with a history event, by task id
        self._pending_actions: dict[int, ev.Event] = NOTHING
        #: tasks waiting for a completion event, by task id
        self._open_tasks: dict[int, CompletableTask[Any]] = NOTHING
        #: retry timers, by timer task id
        self._retry_timers: dict[int, RetryableTask[Any]] = NOTHING
        #: event waits: the one task, or a tuple of them, oldest first (no map of deques: a
        #: waiting instance's wait costs its task alone, not 800 bytes more)
        self._event_waiters: EventTask[Any] | tuple[EventTask[Any], ...] = ()
        #: events raised before the code waited for them, by casefolded name, oldest first
        self._received_events: dict[str, list[tuple[str, bytes | None]]] = NOTHING
        self._custom_status: bytes | None = None
        self._custom_status_set = False
        #: (input, save_events, version: None keeps the current one)
        self._continue_as_new: tuple[bytes | None, bool, str | None] | None = None
        self._extensions: dict[str, Any] = NOTHING
        self._name = ""
        self._parent_instance_id: str | None = None
        self._logger: ReplaySafeLogger | None = None
        #: log records of the current step, kept until the step commits (None: emit at once);
        #: the worker sets a list and emits the records once the step is committed
        self._log_records: list[Any] | None = None
        self._version = UNVERSIONED
        #: what is_patched() answered, by patch id (one answer per execution)
        self._patches: dict[str, bool] = NOTHING
        #: markers of patches first seen in this step, recorded in history when the step ends
        self._new_markers: list[ev.Event] = NO_ITEMS
        #: during replay, whether the recorded step at the replay position holds a patch's marker
        self._marker_ahead: Callable[[str], bool] = no_marker

    @property
    def _now(self) -> _dt.datetime:
        return ms_to_datetime(self._now_ms)

    def _compact(self) -> None:
        """Between steps: emptied maps and lists go back to the shared empty ones (a dict keeps
        its table when emptied)."""
        if not self._pending_actions:
            self._pending_actions = NOTHING
        if not self._open_tasks:
            self._open_tasks = NOTHING
        if not self._retry_timers:
            self._retry_timers = NOTHING
        if not self._received_events:
            self._received_events = NOTHING
        if not self._new_markers:
            self._new_markers = NO_ITEMS
        if self._log_records is not None and not self._log_records:
            self._log_records = NO_ITEMS  # still kept (not None): ctx.logger makes a list when needed

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

    @property
    def parent_instance_id(self) -> str | None:
        """The instance id of the orchestration that started this one as a sub-orchestration."""
        return self._parent_instance_id

    @property
    def logger(self) -> ReplaySafeLogger:
        """A :class:`logging.Logger`-compatible logger (``durable.orchestration``) that writes each
        line once: records are dropped while the code replays history, and every record carries
        ``instance_id``, ``orchestration_name`` and ``orchestration_version`` (``extra``)."""
        if self._logger is None:
            self._logger = ReplaySafeLogger(self)
        return self._logger

    @property
    def version(self) -> str:
        """The orchestrator version this instance is pinned to ("" when unversioned)."""
        return self._version

    def is_patched(self, patch_id: str) -> bool:
        """Whether this execution takes the new code path of patch ``patch_id``.

        True for a new execution, and for a replay whose history recorded the patch's marker at
        this point; False for a history that reached this point before the patch existed. The
        first answer holds for the rest of the execution. A True answer on new code records one
        history event (the marker).
        """
        if not isinstance(patch_id, str) or not patch_id:
            raise ValueError("a patch id is a non-empty string")
        known = self._patches.get(patch_id)
        if known is not None:
            return known
        if self._is_replaying:
            answer = self._marker_ahead(patch_id)
        else:
            answer = True
            if self._new_markers is NO_ITEMS:
                self._new_markers = []
            self._new_markers.append({"k": ev.PATCH_MARKER, "patch": patch_id})
        if self._patches is NOTHING:
            self._patches = {}
        self._patches[patch_id] = answer
        return answer

    # -- actions ---------------------------------------------------------------------------------
    def _next_id(self) -> int:
        tid = self._sequence
        self._sequence += 1
        return tid

    def _add_action(self, action: ev.Event, task: CompletableTask[Any] | None) -> int:
        tid = self._next_id()
        action["tid"] = tid
        if self._pending_actions is NOTHING:
            self._pending_actions = {}
        self._pending_actions[tid] = action
        if task is not None:
            if self._open_tasks is NOTHING:
                self._open_tasks = {}
            self._open_tasks[tid] = task
        return tid

    def call_activity(
        self,
        activity: Callable[..., Any] | str,
        *,
        input: Any = None,
        retry_policy: RetryPolicy | None = None,
        timeout: _dt.timedelta | None = None,
        heartbeat_timeout: _dt.timedelta | None = None,
        return_type: Any = None,
    ) -> Task[Any]:
        """Schedule an activity; the task completes with its result or fails with TaskFailedError.

        ``timeout`` limits each attempt from the moment a worker starts running it (waiting for a
        free slot does not count); ``heartbeat_timeout`` times out an attempt that does not call
        ``ActivityContext.heartbeat()`` this often. Either failure has the error type
        ``ActivityTimeoutError`` and is retried by ``retry_policy`` like any other.

        The result is rebuilt into ``return_type``, else into the activity's annotated return
        type when ``activity`` is the function itself (dataclasses, pydantic models, enums, ...).
        """
        name = self._name_of(activity, "activity")
        data = encode(input, what=f"input of activity {name!r}")
        action: ev.Event = {"k": ev.TASK_SCHEDULED, "name": name, "input": data}
        for key, limit in (("to", timeout), ("hbt", heartbeat_timeout)):
            if limit is not None:
                ms = _positive_ms(limit, "timeout" if key == "to" else "heartbeat_timeout")
                action[key] = ms
        rtype = _result_type(activity, return_type)
        return self._schedule(action, f"activity {name!r}", retry_policy, rtype)

    def call_sub_orchestrator(
        self,
        orchestrator: Callable[..., Any] | str,
        *,
        input: Any = None,
        instance_id: str | None = None,
        retry_policy: RetryPolicy | None = None,
        return_type: Any = None,
        version: str | None = None,
    ) -> Task[Any]:
        """Start a child orchestration and wait for its output (rebuilt into ``return_type``, else
        into the orchestrator's annotated return type when given the function).

        ``version`` pins the child to that version of the orchestrator; None pins it, at its
        first step, to the newest version the worker running that step has registered."""
        name = self._name_of(orchestrator, "orchestrator")
        data = encode(input, what=f"input of sub-orchestration {name!r}")
        action: ev.Event = {"k": ev.SUB_CREATED, "name": name, "input": data, "iid": instance_id}
        if check_version(version) is not None:
            action["ver"] = version
        rtype = _result_type(orchestrator, return_type)
        return self._schedule(action, f"sub-orchestration {name!r}", retry_policy, rtype)

    def _schedule(
        self, action: ev.Event, description: str, retry_policy: RetryPolicy | None, result_type: Any = None
    ) -> Task[Any]:
        task: CompletableTask[Any]
        if retry_policy is not None:
            task = RetryableTask(description, dict(action), retry_policy, self._now_ms, result_type)
        else:
            task = CompletableTask(description, result_type)
        self._emit_call(action, task)
        return task

    def _emit_call(self, action: ev.Event, task: CompletableTask[Any]) -> None:
        action = dict(action)
        if isinstance(task, RetryableTask) and task.call is not None:
            # a retry: the same call (stable idempotency key), its attempt number, and what the
            # earlier attempts last recorded with heartbeat(details)
            action["call"], action["attempt"] = task.call, task.attempt
            if task.details is not None:
                action["hb"] = task.details
        tid = self._add_action(action, task)
        if isinstance(task, RetryableTask) and task.call is None:
            task.call = tid
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
        timer: ev.Event = {"k": ev.TIMER_CREATED, "fire_at": fire_at, "retry": True, "call": retryable.call}
        tid = self._add_action(timer, None)
        if self._retry_timers is NOTHING:
            self._retry_timers = {}
        self._retry_timers[tid] = retryable

    def wait_for_external_event(self, name: str, *, data_type: Any = None) -> Task[Any]:
        """A task completed by the next event ``name`` raised on this instance (buffered if early);
        its data is rebuilt into ``data_type`` when given."""
        # the key and the description are shared by every instance waiting for this event
        key = sys.intern(name.casefold())
        task: EventTask[Any] = EventTask(key, sys.intern(f"event {name!r}"), data_type)
        queue = self._received_events.get(key)
        if queue:
            _, data = queue.pop(0)
            if not queue:
                del self._received_events[key]
            task.complete_with_payload(data)
        else:
            waiters = self._event_waiters
            if isinstance(waiters, tuple):
                self._event_waiters = (*waiters, task) if waiters else task
            else:
                self._event_waiters = (waiters, task)
        return task

    def _take_waiter(self, key: str) -> EventTask[Any] | None:
        """The oldest wait for event ``key`` (casefolded), taken off the waiters; None if none."""
        waiters = self._event_waiters
        if not isinstance(waiters, tuple):
            if waiters.event_key != key:
                return None
            self._event_waiters = ()
            return waiters
        for i, task in enumerate(waiters):
            if task.event_key == key:
                rest = waiters[:i] + waiters[i + 1 :]
                self._event_waiters = rest[0] if len(rest) == 1 else rest
                return task
        return None

    def send_event(self, instance_id: str, event_name: str, *, data: Any = None) -> None:
        """Raise an event on another orchestration instance (one-way, durable)."""
        payload = encode(data, what=f"data of event {event_name!r}")
        self._add_action({"k": ev.EVENT_SENT, "iid": instance_id, "name": event_name, "input": payload}, None)

    def continue_as_new(
        self, new_input: Any, *, save_events: bool = False, version: str | None = None
    ) -> None:
        """Restart this instance with a fresh history and ``new_input`` once the code returns.

        ``version`` moves the instance to that orchestrator version (the only way to change an
        instance's version); None keeps the current one."""
        data = encode(new_input, what="continue_as_new input")
        self._continue_as_new = (data, save_events, check_version(version))

    def set_custom_status(self, value: Any) -> None:
        """Publish a small status value readable by clients while the orchestration runs."""
        self._custom_status = encode(value, what="custom status")
        self._custom_status_set = True

    def new_uuid(self) -> str:
        """A UUID that is the same on every replay of this point of the orchestration."""
        name = f"{self._instance_id}_{self._now_ms}_{self._uuid_counter}"
        self._uuid_counter += 1
        return str(uuid.uuid5(_UUID_NAMESPACE, name))

    # -- entities --------------------------------------------------------------------------------
    def _entity_calls(self) -> _EntityCalls:
        calls = self._extensions.get("entities")
        if calls is None:
            if self._extensions is NOTHING:
                self._extensions = {}
            calls = self._extensions["entities"] = _EntityCalls(self)
            self._extensions["deliver"] = calls.deliver
        return calls

    def signal_entity(
        self,
        entity_id: EntityId | str,
        operation: str,
        *,
        input: Any = None,
        signal_at: _dt.datetime | None = None,
    ) -> None:
        """Send a one-way operation to an entity (durable; applied once, in the order sent);
        ``signal_at`` delays it until that time (Redis clock)."""
        at = datetime_to_ms(signal_at) if signal_at is not None else None
        self._entity_calls().send(ev.ENTITY_SIGNALED, EntityId.of(entity_id), operation, input, at=at)

    def call_entity(
        self, entity_id: EntityId | str, operation: str, *, input: Any = None, return_type: Any = None
    ) -> Task[Any]:
        """Apply an operation on an entity; the task completes with the operation's return value
        (rebuilt into ``return_type`` when given), or fails with TaskFailedError carrying the
        operation's failure details."""
        calls = self._entity_calls()
        task = calls.send(ev.ENTITY_CALLED, EntityId.of(entity_id), operation, input, result_type=return_type)
        assert task is not None
        return task

    def lock_entities(self, *entity_ids: EntityId | str | Iterable[EntityId | str]) -> Task[EntityLock]:
        """Lock entities for a critical section: ``with (yield ctx.lock_entities(a, b)):``.

        Locks are taken in one global order, so overlapping sections never deadlock; while the
        section lasts the orchestration may call only the locked entities, and nobody else can.
        They are released when the ``with`` block ends, or when the orchestration ends.
        """
        flat: list[EntityId | str] = []
        for item in entity_ids:
            flat.extend([item] if isinstance(item, (EntityId, str)) else item)
        return self._entity_calls().lock(sort_entities(flat))


class EntityLock:
    """The entity locks of a critical section; leaving ``with lock:`` releases them."""

    def __init__(self, calls: _EntityCalls, rid: str, entities: list[str]) -> None:
        self._calls = calls
        self._rid = rid
        self._targets = tuple(entities)

    @property
    def entities(self) -> tuple[EntityId, ...]:
        """The locked entities, in lock order."""
        return tuple(EntityId.parse(e) for e in self._targets)

    def release(self) -> None:
        """Release the locks now (idempotent)."""
        self._calls.release(self)

    def __enter__(self) -> EntityLock:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class _EntityCalls:
    """An orchestration's entity requests and critical section (rebuilt identically by replay)."""

    def __init__(self, ctx: OrchestrationContext) -> None:
        self.ctx = ctx
        #: requests waiting for an answer, by task id: (task, action)
        self.open: dict[int, tuple[CompletableTask[Any], ev.Event]] = {}
        self.held: EntityLock | None = None
        self.pending: list[str] | None = None

    def _add(self, action: ev.Event, task: CompletableTask[Any] | None) -> None:
        ctx = self.ctx
        tid = ctx._add_action(action, None)
        if task is not None:
            action["rid"] = f"{ctx.instance_id}:{ctx._now_ms:x}:{tid}"
            self.open[tid] = (task, action)

    def send(
        self,
        kind: str,
        entity: EntityId,
        operation: str,
        value: Any,
        *,
        at: int | None = None,
        result_type: Any = None,
    ) -> CompletableTask[Any] | None:
        target = str(entity)
        held = self.held
        if kind == ev.ENTITY_CALLED:
            if held is not None and target not in held._targets:
                raise RuntimeError(
                    f"inside a critical section an orchestration may only call the locked entities "
                    f"({', '.join(held._targets)}); {target} is not locked"
                )
            if self.pending is not None and target in self.pending:
                raise RuntimeError(f"cannot call {target} while a lock request for it is pending")
        data = encode(value, what=f"input of operation {operation!r} on {target}")
        action: ev.Event = {"k": kind, "name": operation, "entity": target, "input": data}
        if at is not None:
            action["at"] = at
        if held is not None and target in held._targets:
            action["cs"] = held._rid
        task: CompletableTask[Any] | None = None
        if kind == ev.ENTITY_CALLED:
            task = CompletableTask(f"operation {operation!r} on {target}", result_type)
        self._add(action, task)
        return task

    def lock(self, targets: list[str]) -> Task[EntityLock]:
        if not targets:
            raise ValueError("lock_entities needs at least one entity")
        if self.held is not None or self.pending is not None:
            raise RuntimeError(
                "critical sections cannot be nested: this orchestration already holds "
                "or waits for entity locks"
            )
        task: CompletableTask[EntityLock] = CompletableTask(f"lock on {', '.join(targets)}")
        self._add({"k": ev.ENTITY_LOCK_REQUESTED, "entities": targets}, task)
        self.pending = targets
        return task

    def release(self, lock: EntityLock) -> None:
        if self.held is lock:
            self.held = None
            self._add({"k": ev.ENTITY_UNLOCKED, "entities": list(lock._targets), "rid": lock._rid}, None)

    def deliver(self, event: ev.Event) -> bool:
        """The executor's hook for entity responses; True when the event completed a request."""
        if event.get("k") != ev.ENTITY_RESPONDED:
            return False
        rid = event.get("rid")
        found = next((tid for tid, (_, a) in self.open.items() if a.get("rid") == rid), None)
        if found is None:
            return False
        task, action = self.open.pop(found)
        if action["k"] == ev.ENTITY_LOCK_REQUESTED:
            self.pending = None
            self.held = EntityLock(self, str(rid), list(action["entities"]))
            task._set_result(self.held)
            return True
        failure = event.get("failure")
        if failure is None:
            assert isinstance(task, CompletableTask)
            task.complete_with_payload(event.get("result"), undecodable_fails=True)
            return True
        details = FailureDetails.from_record(failure) or FailureDetails("failed", "Error")
        assert isinstance(task, CompletableTask)
        task.fail(f"{task.description} failed: {details.message}", details)
        return True


def no_marker(patch_id: str) -> bool:
    """Outside replay no recorded step lies ahead: the default of ``_marker_ahead``."""
    return False


def _result_type(fn: Callable[..., Any] | str, explicit: Any) -> Any:
    """``explicit`` if given, else the declared return type of ``fn`` when it is a function."""
    if explicit is not None:
        return explicit
    if isinstance(fn, str) or not callable(fn):
        return None
    return _declared_return(fn)


def _positive_ms(value: _dt.timedelta, what: str) -> int:
    if not isinstance(value, _dt.timedelta):
        raise TypeError(f"{what} must be a datetime.timedelta, not {type(value).__qualname__}")
    ms = int(value.total_seconds() * 1000)
    if ms <= 0:
        raise ValueError(f"{what} must be positive (at least a millisecond)")
    return ms
