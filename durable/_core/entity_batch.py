"""The entity batch executor: applies the messages that arrived for one entity to its record.

Pure: no Redis, no event loop. The partition step (or a worker that runs a delegated batch) hands
:class:`EntityBatch` the entity's persisted :class:`~durable._core.entities.EntityRecord` and its
messages; the batch applies them in order -- lock requests and releases, de-duplication of request
ids, delayed signals parked as timers -- and runs each operation against a fresh copy of the state,
so an operation that raises leaves no trace. It returns a :class:`BatchResult`: the messages to
send, the timers to set, the dead letters and the counts for the metrics.
"""

from __future__ import annotations

import functools
import inspect
import typing
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import events as ev
from .convert import input_type, rebuild
from .entities import (
    _BASE_MEMBERS,
    DEFAULT_DEDUP_SECONDS,
    DEFAULT_DEDUP_WINDOW,
    MSG_SWEEP,
    RECENT_SIZE,
    Entity,
    EntityContext,
    EntityId,
    EntityRecord,
    fingerprint,
    has_recent,
    recent_since,
)
from .model import FailureDetails, is_interrupt
from .serialization import decode, encode

_OPERATIONS: dict[type, dict[str, str]] = {}


def _operations(cls: type) -> dict[str, str]:
    """Operation name (case-folded) -> method name, for an Entity subclass."""
    ops = _OPERATIONS.get(cls)
    if ops is not None:
        return ops
    ops = _OPERATIONS[cls] = {}
    for klass in reversed(cls.__mro__):
        for name, member in vars(klass).items():
            if name.startswith("_") or name in _BASE_MEMBERS or not callable(member):
                continue
            if isinstance(member, (staticmethod, classmethod, property)):
                continue
            ops[name.casefold()] = name
    return ops


@functools.cache
def _takes_input(fn: Callable[..., Any], skip: int) -> bool:
    """Whether ``fn`` accepts an input argument after ``skip`` leading positional parameters."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return True
    positional = 0
    for p in params:
        if p.kind == p.VAR_POSITIONAL:
            return True
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            positional += 1
    return positional > skip


def _run_operation(impl: Any, ctx: EntityContext, operation: str, value: Any) -> Any:
    """Invoke one operation of a function or class entity; returns its return value."""
    if isinstance(impl, type) and issubclass(impl, Entity):
        method_name = _operations(impl).get(operation.casefold())
        if method_name is None:
            raise AttributeError(f"entity {ctx.entity_id.name!r} has no operation {operation!r}")
        obj = impl()
        obj.__dict__["_durable_ctx"] = ctx
        had_state = ctx.has_state
        initial: bytes | None = None
        if had_state:
            state_type = _STATE_TYPES.get(impl, _NO_TYPE)
            if state_type is _NO_TYPE:
                state_type = _STATE_TYPES[impl] = _state_type(impl)
            obj.state = rebuild(ctx.get_state(), state_type, f"state of entity {ctx.entity_id}")
        else:
            obj.state = obj.initial_state()
            initial = encode(obj.state, what=f"initial state of entity {ctx.entity_id}")
        method = getattr(type(obj), method_name)
        if _takes_input(method, 1):
            value = rebuild(
                value, input_type(method, 1), f"input of operation {operation!r} on {ctx.entity_id}"
            )
            out = method(obj, value)
        else:
            out = method(obj)
        if not ctx._deleted and not ctx._dirty:
            new = encode(obj.state, what=f"state of entity {ctx.entity_id}")
            if had_state or new != initial:
                ctx.set_state(obj.state)
        return out
    if not _takes_input(impl, 1):
        return impl(ctx)
    tp = input_type(impl, 1)
    if tp is None or value is None:  # nothing to rebuild (and no error text to format)
        return impl(ctx, value)
    return impl(ctx, rebuild(value, tp, f"input of operation {operation!r} on {ctx.entity_id}"))


_STATE_TYPES: dict[type, Any] = {}
_NO_TYPE = object()


def _state_type(cls: type) -> Any:
    """The annotated type of a class entity's ``state`` (None: kept as decoded)."""
    for klass in cls.__mro__:
        if klass is Entity:
            break
        if "state" in getattr(klass, "__annotations__", {}):
            try:
                hint = typing.get_type_hints(klass).get("state")
            except Exception:
                return None
            return None if hint is Any else hint
    return None


@dataclass
class BatchResult:
    """What one batch of messages did to an entity."""

    #: messages to route, in order (each has a ``target``)
    out: list[dict[str, Any]] = field(default_factory=list)
    #: scheduled signals to park: (due ms, timer member, message)
    timers: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    #: messages rejected: (message, reason, metric kind)
    dead: list[tuple[dict[str, Any], str, str]] = field(default_factory=list)
    completed: int = 0
    failed: int = 0
    duplicates: int = 0
    deleted: bool = False
    #: failures of signals (nobody waits for them): (operation, details)
    signal_failures: list[tuple[str, FailureDetails]] = field(default_factory=list)
    #: observations of the operations that succeeded, for the metrics (see EntityContext._note)
    notes: list[tuple[str, Any]] = field(default_factory=list)
    #: a sweep message (the timer that forgets expired request ids) was among the batch's
    swept: bool = False


def _persistable(msg: dict[str, Any]) -> dict[str, Any]:
    """A message without the transient annotations (``_eid``, ``_wire``) the partition adds."""
    return {k: v for k, v in msg.items() if not k.startswith("_")}


class OperationObserver(Protocol):
    """Told when each operation starts and ends (the worker's tracing); ``begin`` returns the trace
    context to put on the messages the operation sends."""

    def begin(self, entity_id: str, operation: str, msg: dict[str, Any]) -> str | None: ...

    def end(self, failure: FailureDetails | None) -> None: ...

    def ran(
        self,
        entity_id: str,
        operation: str,
        msg: dict[str, Any],
        item: tuple[str, int],
        started_ms: int,
        failure: FailureDetails | None,
    ) -> None:
        """An operation a remote executor ran, whose reply is being applied: ``item`` is its work
        item's token and its place there, ``started_ms`` when the item was handed out (0: not
        known)."""


class EntityBatch:
    """Applies a batch of messages to one entity (the entity batch executor)."""

    def __init__(
        self,
        entity_id: EntityId,
        impl: Any | None,
        record: EntityRecord,
        now_ms: int,
        window: int = DEFAULT_DEDUP_WINDOW,
        dedup_seconds: int = DEFAULT_DEDUP_SECONDS,
        observer: OperationObserver | None = None,
    ) -> None:
        self.observer = observer
        self.entity_id = entity_id
        self.target = str(entity_id)
        self.impl = impl
        self.record = record
        self.now_ms = now_ms
        self.window = window
        self._now_s = now_ms // 1000
        # the request ids the entity remembers: the stored ones still within ``dedup_seconds``
        # (searched in place), and the ones this batch adds (``_added``, in order)
        self._ids = recent_since(record.recent_ids, self._now_s - dedup_seconds + 1)
        self._added: dict[bytes, None] = {}
        self._ctx = EntityContext(entity_id, now_ms)
        self.result = BatchResult()

    def run(self, msgs: Iterable[dict[str, Any]]) -> BatchResult:
        rec = self.record
        work: deque[dict[str, Any]] = deque()
        if rec.lock is None and rec.queue:
            work.extend(rec.queue)
            rec.queue = []
        work.extend(msgs)
        while work:
            msg = work.popleft()
            kind = msg.get("kind")
            if kind == ev.MSG_UNLOCK:
                self._unlock(msg, work)
                continue
            if kind == MSG_SWEEP:
                self.result.swept = True
                continue  # expired request ids were dropped when the batch started
            if kind not in (ev.MSG_SIGNAL, ev.MSG_CALL, ev.MSG_LOCK):
                self._dead(msg, f"unexpected message kind {kind!r} for entity {self.target}", "bad_message")
                continue
            at = msg.get("at")
            if kind == ev.MSG_SIGNAL and isinstance(at, int) and at > self.now_ms:
                self._park(msg, at)
                continue
            if rec.lock is not None and msg.get("cs") != rec.lock[0]:
                if kind == ev.MSG_LOCK and msg.get("rid") == rec.lock[0]:
                    continue  # a duplicate of the request that holds the lock
                rec.queue.append(_persistable(msg))
                continue
            if kind == ev.MSG_LOCK:
                self._lock(msg)
            else:
                self._apply(msg)
        ids = self._ids
        if self._added:
            stamp = self._now_s.to_bytes(4, "big")
            ids += b"".join(stamp + fp for fp in self._added)
        rec.recent_ids = ids[-self.window * RECENT_SIZE :] if self.window > 0 else b""
        return self.result

    # -- locks -----------------------------------------------------------------------------------
    def _lock(self, msg: dict[str, Any]) -> None:
        rid, orch = str(msg.get("rid")), str(msg.get("orch"))
        locks = list(msg.get("locks") or [])
        pos = int(msg.get("pos") or 0)
        self.record.lock = [rid, orch]
        if pos + 1 < len(locks):
            forward = _persistable(msg)
            forward.update(target=locks[pos + 1], pos=pos + 1)
            self.result.out.append(forward)
        else:
            self.result.out.append({"kind": ev.MSG_ENTITY_RESPONSE, "target": orch, "rid": rid})

    def _unlock(self, msg: dict[str, Any], work: deque[dict[str, Any]]) -> None:
        rec = self.record
        rid = msg.get("rid")
        if rec.lock is not None and rec.lock[0] == rid:
            rec.lock = None
            locks = list(msg.get("locks") or [])
            pos = int(msg.get("pos") or 0)
            if msg.get("chain") and pos + 1 < len(locks):
                forward = _persistable(msg)
                forward.update(target=locks[pos + 1], pos=pos + 1)
                self.result.out.append(forward)
            if rec.queue:
                work.extendleft(reversed(rec.queue))
                rec.queue = []
            return
        for i, queued in enumerate(rec.queue):
            if queued.get("kind") == ev.MSG_LOCK and queued.get("rid") == rid:
                del rec.queue[i]  # the request never got here, so its chain ends here too
                return
        # else: a release for a section this entity never joined (stale); nothing to do

    # -- operations ------------------------------------------------------------------------------
    def _park(self, msg: dict[str, Any], at: int) -> None:
        parked = _persistable(msg)
        parked.pop("at", None)
        member = f"s|{self.target}|{msg.get('id') or uuid.uuid4().hex}"
        self.result.timers.append((at, member, parked))

    def _dead(self, msg: dict[str, Any], reason: str, kind: str) -> None:
        self.result.dead.append((msg, reason, kind))

    def _apply(self, msg: dict[str, Any]) -> None:
        result = self.result
        kind = msg["kind"]
        op = str(msg.get("op", ""))
        if self._missing():
            reason = f"no entity named {self.entity_id.name!r} is registered (target {self.target})"
            if kind == ev.MSG_CALL:
                self._respond(msg, None, FailureDetails(reason, "EntityNotFoundError"))
            else:
                self._dead(msg, reason, "unknown_entity")
            return
        request_id = msg.get("id")
        if request_id and isinstance(request_id, str):
            fp = fingerprint(request_id)
            if fp in self._added or has_recent(self._ids, fp):
                result.duplicates += 1
                return
            self._added[fp] = None
        self._execute(msg, kind, op)

    def _missing(self) -> bool:
        """Whether no code runs this entity (its operations fail, or are dead-lettered)."""
        return self.impl is None

    def _execute(self, msg: dict[str, Any], kind: str, op: str) -> None:
        """Run one operation that passed the lock and de-duplication checks."""
        rec, result = self.record, self.result
        ctx = self._ctx
        ctx._begin(op, rec.state)
        observer = self.observer
        # without an observer (no tracing), the messages sent carry the caller's trace context on
        traceparent = observer.begin(self.target, op, msg) if observer is not None else msg.get("traceparent")
        try:
            value = decode(msg.get("input"))
            out = _run_operation(self.impl, ctx, op, value)
            if out is not None and inspect.isawaitable(out):
                if inspect.iscoroutine(out):
                    out.close()
                raise TypeError(
                    f"entity operation {op!r} returned an awaitable; operations must be synchronous"
                )
            data = (
                encode(out, what=f"result of operation {op!r} on {self.target}")
                if kind == ev.MSG_CALL
                else None
            )
            state, deleted = ctx._finish()
        except BaseException as exc:  # the operation failed: its changes are discarded
            if is_interrupt(exc):
                raise
            details = FailureDetails.from_exception(exc)
            if observer is not None:
                observer.end(details)
            result.failed += 1
            if kind == ev.MSG_CALL:
                self._respond(msg, None, details)
            else:
                result.signal_failures.append((op, details))
            return
        if observer is not None:
            observer.end(None)
        result.completed += 1
        rec.state = state
        if deleted:
            result.deleted = True
        if state is not None:
            result.deleted = False
        if traceparent is not None:
            for action in ctx._actions:
                action["traceparent"] = traceparent
        result.out.extend(ctx._actions)
        result.notes.extend(ctx._notes)
        if kind == ev.MSG_CALL:
            self._respond(msg, data, None)

    def _respond(self, msg: dict[str, Any], data: bytes | None, failure: FailureDetails | None) -> None:
        response: dict[str, Any] = {
            "kind": ev.MSG_ENTITY_RESPONSE,
            "target": str(msg.get("orch")),
            "rid": msg.get("rid"),
        }
        if failure is None:
            response["result"] = data
        else:
            response["failure"] = failure.to_record()
        self.result.out.append(response)
