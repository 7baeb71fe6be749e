"""The orchestration replay executor: history and new events in; new history and actions out.

Pure: no Redis, no clocks, no event loop. A live executor is kept in the owning worker's cache, so
a step only feeds the new events to the suspended generator (linear cost); after a cache miss the
executor is rebuilt by replaying the recorded history, during which every scheduling event must
match the action the code produces at that point, or :class:`NonDeterminismError` is raised.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import events as ev
from .context import NO_ITEMS, NOTHING, NameOf, OrchestrationContext, no_marker
from .convert import input_type, rebuild
from .model import FailureDetails, NonDeterminismError, OrchestrationStatus, is_interrupt, ms_to_datetime
from .registry import UNVERSIONED
from .serialization import SerializationError, decode, encode, pack_record, unpack_record
from .tasks import CompletableTask, RetryableTask, Task

OrchestratorFn = Callable[..., Any]
#: (name, version or None for the newest) -> (version, function), or None when not registered
VersionResolver = Callable[[str, str | None], tuple[str, OrchestratorFn] | None]
#: fields of a scheduling event that strict replay compares besides its kind and name
_STRICT_FIELDS = ("input", "fire_at", "iid", "entity", "entities")

_COMPLETIONS = {
    ev.TASK_COMPLETED,
    ev.TASK_FAILED,
    ev.SUB_COMPLETED,
    ev.SUB_FAILED,
    ev.TIMER_FIRED,
}


#: events that act on the instance rather than on one execution: a step's control events that
#: arrive after its execution continued as new apply to the next execution
_CONTROL_EVENTS = frozenset({ev.EXECUTION_TERMINATED, ev.EXECUTION_SUSPENDED, ev.EXECUTION_RESUMED})


@dataclass
class StepResult:
    """What one step produced."""

    new_events: list[ev.Event] = field(default_factory=list)
    actions: list[ev.Event] = field(default_factory=list)
    status: OrchestrationStatus = OrchestrationStatus.RUNNING
    output: bytes | None = None
    failure: FailureDetails | None = None
    custom_status: bytes | None = None
    custom_status_set: bool = False
    continue_as_new: tuple[bytes | None, list[tuple[str, bytes | None]]] | None = None
    #: the version the next execution is pinned to (with continue_as_new)
    continue_version: str | None = None
    #: after a continue-as-new: the step's later terminate/suspend/resume events, for the next execution
    continue_with: list[ev.Event] = field(default_factory=list)
    nondeterminism: bool = False


class OrchestrationExecutor:
    """Drives one execution of one orchestration instance.

    A cached executor lives as long as its instance waits, so it keeps little: the suspended
    code (its generator and context) and the history of earlier steps packed (msgpack, one
    chunk per step), decoded again only when something reads :attr:`history`."""

    __slots__ = (
        "_current",
        "_done",
        "_driver",
        "_env",
        "_failure",
        "_frozen",
        "_frozen_len",
        "_history",
        "_output",
        "_replay_error",
        "_status",
        "_suspended",
        "_suspended_buffer",
        "ctx",
        "replay_failed_at",
    )

    def __init__(
        self,
        instance_id: str,
        resolve: Callable[[str], OrchestratorFn | None],
        name_of: NameOf,
        context_factory: Callable[[str, NameOf], OrchestrationContext] = OrchestrationContext,
        *,
        resolve_version: VersionResolver | None = None,
        strict: bool = False,
    ) -> None:
        """``resolve`` finds an orchestrator by name; ``resolve_version``, when given, finds it by
        name and version instead (the worker's registry). ``strict`` replay also compares the
        inputs, timer times and target ids of scheduling events with what the code produces, so
        a random or clock-dependent value surfaces as non-determinism (tests use it)."""
        #: the events not packed yet (those of the current step, or all once thawed)
        self._history: list[ev.Event] = []
        #: the events of earlier steps, packed, one chunk per step (None: none packed; one chunk
        #: is kept as is, without a list)
        self._frozen: bytes | list[bytes] | None = None
        self._frozen_len = 0
        self.ctx = context_factory(instance_id, name_of)
        #: (resolve, resolve_version, strict): one tuple shared by the executors of a worker
        self._env = _shared_env(resolve, resolve_version, strict)
        #: where replay found the code at odds with the history (index into it), if it did
        self.replay_failed_at: int | None = None
        self._driver: Any = None  # generator or coroutine
        self._current: Task[Any] | None = None
        self._status = OrchestrationStatus.RUNNING
        self._output: bytes | None = None
        self._failure: FailureDetails | None = None
        self._suspended = False
        self._suspended_buffer: list[ev.Event] | None = None
        self._done = False
        self._replay_error: NonDeterminismError | None = None

    # the id, name and version live in the context (one copy per cached instance)
    @property
    def instance_id(self) -> str:
        return self.ctx._instance_id

    @property
    def name(self) -> str:
        """The orchestrator's name (known once ExecutionStarted is applied)."""
        return self.ctx._name

    @property
    def version(self) -> str:
        """The version this execution is pinned to (known once ExecutionStarted is applied)."""
        return self.ctx._version

    @property
    def history(self) -> list[ev.Event]:
        """The execution's history so far (earlier steps are decoded from their packed form)."""
        frozen = self._frozen
        if frozen is not None:
            chunks = [frozen] if isinstance(frozen, bytes) else frozen
            thawed = [e for chunk in chunks for e in unpack_record(chunk)]
            thawed.extend(self._history)
            self._history, self._frozen, self._frozen_len = thawed, None, 0
        return self._history

    @history.setter
    def history(self, events: list[ev.Event]) -> None:
        self._history, self._frozen, self._frozen_len = events, None, 0

    @property
    def history_len(self) -> int:
        """``len(history)``, without decoding it."""
        return self._frozen_len + len(self._history)

    def _freeze(self) -> None:
        """Pack the events not packed yet: a cached instance holds its past as bytes, not dicts
        (the live generator, not the history, carries the code forward)."""
        events = self._history
        if not events:
            return
        chunk = pack_record(events)
        frozen = self._frozen
        if frozen is None:
            self._frozen = chunk
        elif isinstance(frozen, bytes):
            self._frozen = [frozen, chunk]
        else:
            frozen.append(chunk)
        self._frozen_len += len(events)
        self._history = NO_ITEMS  # (the history property and _append make a list again)

    @property
    def status(self) -> OrchestrationStatus:
        """The status after the last processed event."""
        if not self._done and self._suspended:
            return OrchestrationStatus.SUSPENDED
        return self._status

    @property
    def replay_error(self) -> NonDeterminismError | None:
        """The mismatch :meth:`replay` found (it fails the next step), if any."""
        return self._replay_error

    @property
    def failure(self) -> FailureDetails | None:
        """Why the execution failed (None unless it did)."""
        return self._failure

    @property
    def is_done(self) -> bool:
        """True once the execution completed, failed, was terminated or continued as new."""
        return self._done

    # -- public entry points ---------------------------------------------------------------------
    def replay(self, history: list[ev.Event]) -> None:
        """Rebuild state from recorded history (a non-determinism error surfaces in the next step)."""
        self.ctx._is_replaying = True
        cursor = _ReplayCursor(history)
        self.ctx._marker_ahead = cursor.marker_ahead
        try:
            replayed = self.history  # (a fresh executor's: empty)
            for pos, event in enumerate(history):
                cursor.pos = pos
                self._apply(event)
                replayed.append(event)
            cursor.pos = len(history) - 1  # a leftover action: reported at the last event
            if not history or history[-1].get("k") != ev.EXECUTION_COMPLETED:
                self._check_replayed_all()
            self._freeze()
            self.ctx._compact()
        except NonDeterminismError as exc:
            self._replay_error = exc
            self.replay_failed_at = cursor.pos
            self.history = list(history)
        finally:
            self.ctx._is_replaying = False
            self.ctx._marker_ahead = no_marker

    def _check_replayed_all(self) -> None:
        """After a complete replay every action the code produced must be in the history: one
        left over is new code that would run out of order (after events it should precede)."""
        pending = self.ctx._pending_actions
        if not pending or self._done:
            return
        tid = min(pending)
        raise NonDeterminismError(
            f"orchestration {self.instance_id!r}: the code now schedules {_describe(pending[tid])} "
            f"(task {tid}) at a point the history has already passed without it"
        )

    def execute(self, new_events: list[ev.Event]) -> StepResult:
        """Apply new events (the first is usually OrchestratorStarted) and collect what follows."""
        result = StepResult()
        self.ctx._is_replaying = False
        self.ctx._custom_status_set = False
        if self._replay_error is not None:
            return self._fail_nondeterministic(self._replay_error, result)
        leftover: list[ev.Event] = []
        try:
            for i, event in enumerate(new_events):
                if self._done:
                    leftover = new_events[i:]
                    break
                if self._apply(event):
                    self._append(event, result)
            markers = self.ctx._new_markers
            if markers:
                self.ctx._new_markers = NO_ITEMS
                for marker in markers:
                    self._append(marker, result)
            if self.ctx._pending_actions and self._status != OrchestrationStatus.TERMINATED:
                # Whatever the code scheduled and history does not hold yet is new work.
                for tid in sorted(self.ctx._pending_actions):
                    action = self.ctx._pending_actions.pop(tid)
                    self._append(action, result)
                    result.actions.append(action)
            if self.ctx._continue_as_new is not None and not self._done:
                self._finish(OrchestrationStatus.CONTINUED_AS_NEW, self.ctx._continue_as_new[0], None)
        except NonDeterminismError as exc:
            return self._fail_nondeterministic(exc, result)
        if self._done:
            self._append(
                {
                    "k": ev.EXECUTION_COMPLETED,
                    "status": self._status.value,
                    "result": self._output,
                    "failure": self._failure.to_record() if self._failure else None,
                },
                result,
            )
            if self._status == OrchestrationStatus.CONTINUED_AS_NEW:
                assert self.ctx._continue_as_new is not None
                data, save_events, version = self.ctx._continue_as_new
                carried: list[tuple[str, bytes | None]] = []
                if save_events:
                    for queue in self.ctx._received_events.values():
                        carried.extend(queue)
                    # events of this step after the point where the code continued as new
                    carried.extend(
                        (str(e["name"]), e.get("input")) for e in leftover if e["k"] == ev.EVENT_RAISED
                    )
                result.continue_as_new = (data, carried)
                result.continue_version = self.version if version is None else version
                result.continue_with = [e for e in leftover if e["k"] in _CONTROL_EVENTS]
        result.status = self.status
        result.output = self._output
        result.failure = self._failure
        result.custom_status = self.ctx._custom_status
        result.custom_status_set = self.ctx._custom_status_set
        self._freeze()
        self.ctx._compact()
        return result

    # -- internals -------------------------------------------------------------------------------
    def _append(self, event: ev.Event, result: StepResult) -> None:
        event["eid"] = self._frozen_len + len(self._history)
        event.setdefault("ts", self.ctx._now_ms)
        if self._history is NO_ITEMS:
            self._history = []
        self._history.append(event)
        result.new_events.append(event)

    def _fail_nondeterministic(self, exc: NonDeterminismError, result: StepResult) -> StepResult:
        self._replay_error = None
        result = self.abort(FailureDetails(str(exc), "NonDeterminismError", None), result)
        result.nondeterminism = True
        return result

    def abort(self, details: FailureDetails, result: StepResult) -> StepResult:
        """Fail the execution now (after the events already in ``result``), dropping new actions."""
        self._close_driver()
        self._done = True
        self._status = OrchestrationStatus.FAILED
        self._failure = details
        result.actions.clear()
        self.ctx._pending_actions = NOTHING
        self._append(
            {"k": ev.EXECUTION_COMPLETED, "status": "FAILED", "result": None, "failure": details.to_record()},
            result,
        )
        result.status = OrchestrationStatus.FAILED
        result.failure = details
        result.continue_as_new = None
        return result

    def _apply(self, event: ev.Event) -> bool:
        """Apply one event; False means it was a duplicate or stale and is not recorded."""
        kind = event["k"]
        ctx = self.ctx
        if kind == ev.ORCHESTRATOR_STARTED:
            ctx._now_ms = int(event["ts"])
            return True
        if kind in ev.SCHEDULING_EVENTS:
            self._match_action(event)
            return True
        if kind == ev.EXECUTION_STARTED:
            self._start(event)
            return True
        if kind == ev.EXECUTION_TERMINATED:
            self._close_driver()
            self._finish(OrchestrationStatus.TERMINATED, event.get("output"), None)
            return True
        if kind in (ev.EXECUTION_COMPLETED, ev.EXECUTION_REWOUND, ev.PATCH_MARKER):
            return True
        if kind == ev.EXECUTION_SUSPENDED:
            self._suspended = True
            return True
        if kind == ev.EXECUTION_RESUMED:
            self._suspended = False
            buffered, self._suspended_buffer = self._suspended_buffer, None
            for item in buffered or ():
                self._deliver(item)
            return True
        if self._suspended:
            if self._suspended_buffer is None:
                self._suspended_buffer = []
            self._suspended_buffer.append(event)
            return True
        return self._deliver(event)

    def _deliver(self, event: ev.Event) -> bool:
        kind = event["k"]
        ctx = self.ctx
        if kind == ev.EVENT_RAISED:
            key = str(event["name"]).casefold()
            waiter = ctx._take_waiter(key)
            if waiter is not None:
                waiter.complete_with_payload(event.get("input"))
            else:
                if ctx._received_events is NOTHING:
                    ctx._received_events = {}
                ctx._received_events.setdefault(key, []).append((event["name"], event.get("input")))
            self._resume()
            return True
        if kind in _COMPLETIONS:
            tid = event.get("tid")
            if kind == ev.TIMER_FIRED and tid in ctx._retry_timers:
                retryable = ctx._retry_timers.pop(tid)
                retryable.attempt += 1
                ctx._emit_call(retryable.action, retryable)
                return True
            task = ctx._open_tasks.pop(tid, None) if isinstance(tid, int) else None
            if task is None:
                return False
            if kind in (ev.TASK_COMPLETED, ev.SUB_COMPLETED):
                task.complete_with_payload(event.get("result"))
            elif kind == ev.TIMER_FIRED:
                task._set_result(None)
            else:
                details = FailureDetails.from_record(event.get("failure")) or FailureDetails(
                    "failed", "Error"
                )
                if isinstance(task, RetryableTask):
                    delay, details = self._retry_delay(task, event, details)
                    if delay is not None:
                        ctx._create_retry_timer(task, delay)
                        return True
                desc = task.description if isinstance(task, CompletableTask) else "task"
                task.fail(f"{desc} failed: {details.message}", details)
            self._resume()
            return True
        return self._deliver_extension(event)

    def _retry_delay(
        self, task: RetryableTask[Any], event: ev.Event, details: FailureDetails
    ) -> tuple[_dt.timedelta | None, FailureDetails]:
        """The wait before the next attempt of a failed retryable call (None: give up), and the
        failure to report if it gives up."""
        if isinstance(event.get("details"), bytes):
            task.details = event["details"]
        elapsed = ms_to_datetime(self.ctx._now_ms) - ms_to_datetime(task.first_attempt_ms)
        try:
            return task.policy.next_delay(task.attempt, elapsed, details), details
        except BaseException as exc:  # should_retry raised: the call fails with that error
            if is_interrupt(exc):
                raise
            return None, dataclasses.replace(FailureDetails.from_exception(exc), inner_failure=details)

    def _deliver_extension(self, event: ev.Event) -> bool:
        """Hook for event kinds owned by other modules (entities); unknown kinds are dropped."""
        handler = self.ctx._extensions.get("deliver")
        if handler is not None and handler(event):
            self._resume()
            return True
        return False

    def _match_action(self, event: ev.Event) -> None:
        tid = event.get("tid")
        action = self.ctx._pending_actions.pop(tid, None) if isinstance(tid, int) else None
        if action is None:
            raise NonDeterminismError(
                f"orchestration {self.instance_id!r}: history records {_describe(event)} (task {tid}), "
                "but the code did not schedule it at this point"
            )
        if action["k"] != event["k"] or action.get("name") != event.get("name"):
            raise NonDeterminismError(
                f"orchestration {self.instance_id!r}: history records {_describe(event)} (task {tid}), "
                f"but the code now schedules {_describe(action)}"
            )
        if self._env[2]:
            for key in _STRICT_FIELDS:
                if key in event and action.get(key) != event[key]:
                    raise NonDeterminismError(
                        f"orchestration {self.instance_id!r}: history records {_describe(event)} "
                        f"(task {tid}) with a different {key} than the code now produces "
                        "(a random, clock- or environment-dependent value in the orchestrator?)"
                    )
        # history is authoritative (e.g. generated sub-orchestration ids)
        action.update(event)

    def _start(self, event: ev.Event) -> None:
        self.ctx._name = sys.intern(str(event["name"]))  # one string per orchestrator name
        # a history recorded before versions existed has no "ver": it is unversioned; a new
        # execution without a pinned version (None) is pinned now, to the newest registered one
        requested: str | None = event.get("ver", UNVERSIONED)
        fn: OrchestratorFn | None
        resolve, resolve_version, _ = self._env
        if resolve_version is not None:
            found = resolve_version(self.name, requested)
            version, fn = found if found is not None else (requested or UNVERSIONED, None)
        else:
            version, fn = requested or UNVERSIONED, resolve(self.name)
        if "ver" in event:
            event["ver"] = version  # recorded in history: the instance keeps it for life
        self.ctx._version = version
        if fn is None:
            label = f" version {version!r}" if version else ""
            self._finish(
                OrchestrationStatus.FAILED,
                None,
                FailureDetails(
                    f"no orchestrator named {self.name!r}{label} is registered with this worker",
                    "OrchestrationNotFoundError",
                ),
            )
            return
        parent = event.get("parent")
        self.ctx._parent_instance_id = parent.get("iid") if isinstance(parent, dict) else None
        try:
            value = rebuild(
                decode(event.get("input")), input_type(fn), f"input of orchestration {self.name!r}"
            )
            out = fn(self.ctx, value)
        except BaseException as exc:  # SystemExit too: user code fails its instance, not the worker
            if is_interrupt(exc):
                raise
            self._finish(OrchestrationStatus.FAILED, None, FailureDetails.from_exception(exc))
            return
        if inspect.isgenerator(out) or inspect.iscoroutine(out):
            driver: Any = out
            self._driver = driver
            self._step(driver.send, None)
        else:
            self._complete_with(out)

    def _resume(self) -> None:
        while not self._done and self._current is not None and self._current.is_complete:
            task, driver = self._current, self._driver
            self._current = None
            if task.is_failed:
                self._step(driver.throw, task.get_exception())
            else:
                self._step(driver.send, task._result)

    def _step(self, advance: Callable[[Any], Any], value: Any) -> None:
        try:
            yielded = advance(value)
        except StopIteration as stop:
            self._driver = None
            self._complete_with(stop.value)
            return
        except NonDeterminismError:
            raise
        except BaseException as exc:  # SystemExit too: user code fails its instance, not the worker
            if is_interrupt(exc):
                raise
            self._driver = None
            self._finish(OrchestrationStatus.FAILED, None, FailureDetails.from_exception(exc))
            return
        if self.ctx._continue_as_new is not None:
            self._close_driver()
            self._finish(OrchestrationStatus.CONTINUED_AS_NEW, self.ctx._continue_as_new[0], None)
            return
        if not isinstance(yielded, Task):
            self._close_driver()
            self._finish(
                OrchestrationStatus.FAILED,
                None,
                FailureDetails(
                    f"orchestrator yielded/awaited {type(yielded).__qualname__}; only durable tasks "
                    "(ctx.call_activity, ctx.create_timer, when_all, ...) may be awaited",
                    "TypeError",
                ),
            )
            return
        self._current = yielded
        if yielded.is_complete:
            self._resume()

    def _complete_with(self, value: Any) -> None:
        if self.ctx._continue_as_new is not None:
            self._finish(OrchestrationStatus.CONTINUED_AS_NEW, self.ctx._continue_as_new[0], None)
            return
        try:
            data = encode(value, what=f"output of orchestration {self.name!r}")
        except (SerializationError, ValueError) as exc:
            self._finish(OrchestrationStatus.FAILED, None, FailureDetails.from_exception(exc))
            return
        self._finish(OrchestrationStatus.COMPLETED, data, None)

    def _finish(
        self, status: OrchestrationStatus, output: bytes | None, failure: FailureDetails | None
    ) -> None:
        self._done = True
        self._status = status
        self._output = output
        self._failure = failure

    def _close_driver(self) -> None:
        if self._driver is not None:
            driver, self._driver = self._driver, None
            try:
                driver.close()  # runs the code's finally blocks; what they raise is ignored
            except BaseException as exc:
                if is_interrupt(exc):
                    raise


class _ReplayCursor:
    """Where a replay is (for ``ctx.is_patched``): kept only while it runs."""

    __slots__ = ("history", "pos")

    def __init__(self, history: list[ev.Event]) -> None:
        self.history = history
        self.pos = 0

    def marker_ahead(self, patch_id: str) -> bool:
        """Whether the recorded step being replayed holds the marker of ``patch_id``: the events
        after the replay position, up to the next step's OrchestratorStarted."""
        for event in self.history[self.pos + 1 :]:
            kind = event.get("k")
            if kind == ev.ORCHESTRATOR_STARTED:
                return False
            if kind == ev.PATCH_MARKER and event.get("patch") == patch_id:
                return True
        return False


_Env = tuple[Callable[[str], OrchestratorFn | None], VersionResolver | None, bool]
_last_env: list[_Env] = []


def _shared_env(
    resolve: Callable[[str], OrchestratorFn | None], resolve_version: VersionResolver | None, strict: bool
) -> _Env:
    """The executor's lookups as one tuple, the same tuple as the previous executor's when they
    are the same (a worker's are): a cached executor holds one reference, not three."""
    if _last_env:
        last = _last_env[0]
        if last[0] is resolve and last[1] is resolve_version and last[2] == strict:
            return last
    env: _Env = (resolve, resolve_version, strict)
    _last_env[:] = [env]
    return env


def _describe(event: ev.Event) -> str:
    kind = event.get("k")
    name = event.get("name")
    return f"{kind}({name!r})" if name else str(kind)
