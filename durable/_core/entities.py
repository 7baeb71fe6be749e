"""Durable entities: ids, the public entity API and the entity batch executor.

Pure: no Redis, no event loop. An entity is a keyed actor whose state lives in a small Redis hash
of its partition (see :class:`EntityRecord`). The partition step hands the executor the entity's
persisted record and the messages that arrived for it; the executor applies them in order and
returns the new record and the messages to send (call responses, forwarded lock requests,
signals, orchestration starts). Each operation runs against a fresh copy of the state, so an
operation that raises leaves no trace: its state change and the messages it produced are
discarded. Messages that carry a request id (client and wire signals) are applied once: the
entity remembers recent ids and drops repeats.

Critical sections (``ctx.lock_entities``) follow the Durable Task algorithm: the lock request
visits the entities in sorted order, each one locking itself before it forwards the request, and
the last one answers the orchestration. A locked entity serves only messages tagged with the
holder's request id; everything else waits, in order, in the entity's queue.
"""

from __future__ import annotations

import copy
import datetime as _dt
import functools
import hashlib
import inspect
import struct
import typing
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import events as ev
from .convert import input_type, rebuild
from .model import FailureDetails, datetime_to_ms, is_interrupt, ms_to_datetime
from .registry import name_of
from .serialization import decode, encode, pack_record, unpack_record

#: How many recent request ids an entity remembers (to drop repeated deliveries) ...
DEFAULT_DEDUP_WINDOW = 1000
#: ... and for how long: ids older than this are forgotten (see EntityRecord.recent).
DEFAULT_DEDUP_SECONDS = 300
#: The kind of the timer message that makes an entity forget expired request ids.
MSG_SWEEP = "entity_sweep"
_FINGERPRINT_BYTES = 8
_RECENT = struct.Struct(">I8s")  # (unix seconds, fingerprint)


@dataclass(frozen=True, order=True)
class EntityId:
    """Identifies one entity: its (registered) name and a key. String form ``@name@key``.

    Names are case-insensitive and stored lower-cased; they cannot contain ``@``.
    """

    name: str
    key: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or "@" in self.name:
            raise ValueError(f"invalid entity name {self.name!r}: must be a non-empty string without '@'")
        if not isinstance(self.key, str) or not self.key:
            raise ValueError(f"invalid entity key {self.key!r}: must be a non-empty string")
        object.__setattr__(self, "name", self.name.lower())

    def __str__(self) -> str:
        return f"@{self.name}@{self.key}"

    @classmethod
    def parse(cls, value: str) -> EntityId:
        """Parse the string form ``@name@key`` (the key may itself contain ``@``)."""
        if not isinstance(value, str) or not value.startswith("@"):
            raise ValueError(f"not an entity id: {value!r} (expected '@name@key')")
        name, sep, key = value[1:].partition("@")
        if not sep:
            raise ValueError(f"not an entity id: {value!r} (expected '@name@key')")
        return cls(name, key)

    @classmethod
    def of(cls, value: EntityId | str) -> EntityId:
        """Accept an EntityId or its string form."""
        if isinstance(value, EntityId):
            return value
        return cls.parse(value)


@dataclass(frozen=True)
class EntityState:
    """A snapshot of one entity as seen by a client."""

    entity_id: EntityId
    state: Any
    last_modified_at: _dt.datetime
    locked_by: str | None = None
    backlog: int = 0

    def state_as(self, tp: Any) -> Any:
        """The state rebuilt into type ``tp`` (a dataclass, a pydantic model, ``list[Item]``, ...);
        raises SerializationError naming the field that does not fit."""
        return rebuild(self.state, tp, f"state of entity {self.entity_id}")


class EntityContext:
    """Passed to function entities (and available as ``self.context`` in class entities)."""

    def __init__(self, entity_id: EntityId, now_ms: int) -> None:
        self._entity_id = entity_id
        self._now_ms = now_ms
        self._operation = ""
        self._state: bytes | None = None
        self._value: Any = None
        self._decoded = False
        self._dirty = False
        self._deleted = False
        self._actions: list[dict[str, Any]] = []
        #: observations for the worker's metrics (kind, value); kept only if the operation succeeds
        self._notes: list[tuple[str, Any]] = []

    def _begin(self, operation: str, state: bytes | None) -> None:
        self._operation = operation
        self._state = state
        self._value = None
        self._decoded = False
        self._dirty = False
        self._deleted = False
        self._actions = []
        self._notes = []

    def _emit(self, msg: dict[str, Any]) -> None:
        """Send a prepared message (with ``kind`` and ``target``) if this operation succeeds."""
        self._actions.append(msg)

    def _note(self, kind: str, value: Any) -> None:
        """Leave an observation for the worker's metrics (counted once the step commits)."""
        self._notes.append((kind, value))

    @property
    def entity_id(self) -> EntityId:
        """The id of this entity."""
        return self._entity_id

    @property
    def operation(self) -> str:
        """The name of the operation being applied."""
        return self._operation

    @property
    def has_state(self) -> bool:
        """True when the entity has a state (it exists)."""
        return self._dirty or (self._state is not None and not self._deleted)

    def get_state(self, default: Any = None) -> Any:
        """The current state, or ``default`` when the entity has none yet."""
        if self._dirty:
            return self._value
        if self._state is None:
            return default
        if not self._decoded:
            self._value = decode(self._state)
            self._decoded = True
        return self._value

    def set_state(self, value: Any) -> None:
        """Replace the state (saved when the operation returns without raising)."""
        self._value = value
        self._decoded = True
        self._dirty = True
        self._deleted = False

    def delete_state(self) -> None:
        """Remove the entity: its state is gone and clients see no entity any more."""
        self._state = None
        self._value = None
        self._decoded = False
        self._dirty = False
        self._deleted = True

    def signal_entity(
        self,
        entity_id: EntityId | str,
        operation: str,
        *,
        input: Any = None,
        signal_at: _dt.datetime | None = None,
    ) -> None:
        """Send a one-way operation to an entity (sent only if this operation succeeds)."""
        target = str(EntityId.of(entity_id))
        msg: dict[str, Any] = {
            "kind": ev.MSG_SIGNAL,
            "target": target,
            "op": operation,
            "input": encode(input, what=f"input of operation {operation!r} on {target}"),
        }
        if signal_at is not None:
            msg["at"] = datetime_to_ms(signal_at)
            msg["id"] = uuid.uuid4().hex
        self._actions.append(msg)

    def schedule_new_orchestration(
        self, orchestrator: Callable[..., Any] | str, *, input: Any = None, instance_id: str | None = None
    ) -> str:
        """Start an orchestration (if this operation succeeds); returns its instance id."""
        name = name_of(orchestrator, "orchestrator")
        iid = instance_id or uuid.uuid4().hex
        if iid.startswith("@"):
            raise ValueError(f"invalid instance id {iid!r}: ids starting with '@' are entity ids")
        self._actions.append(
            {
                "kind": ev.MSG_START,
                "target": iid,
                "name": name,
                "input": encode(input, what=f"input of orchestration {name!r}"),
                "exec": uuid.uuid4().hex,
                "created": self._now_ms,
            }
        )
        return iid

    def _finish(self) -> tuple[bytes | None, bool]:
        """The state after the operation (encoded) and whether it was deleted."""
        if self._dirty:
            return encode(self._value, what=f"state of entity {self._entity_id}"), False
        return self._state, self._deleted


class Entity:
    """Base class of class-form entities: every public method is an operation.

    ``state`` (a class attribute, or :meth:`initial_state`) gives the state of a new entity;
    operations read and assign ``self.state``. ``delete`` is a built-in operation.
    """

    state: Any = None

    def initial_state(self) -> Any:
        """The state of an entity that does not exist yet (a copy of the class attribute)."""
        return copy.deepcopy(type(self).state)

    @property
    def context(self) -> EntityContext:
        """The context of the operation being applied."""
        return self.__dict__["_durable_ctx"]  # type: ignore[no-any-return]

    @property
    def entity_id(self) -> EntityId:
        """The id of this entity."""
        return self.context.entity_id

    def delete(self) -> None:
        """Operation: remove the entity."""
        self.context.delete_state()

    def signal_entity(self, entity_id: EntityId | str, operation: str, *, input: Any = None) -> None:
        """Send a one-way operation to another entity."""
        self.context.signal_entity(entity_id, operation, input=input)

    def schedule_new_orchestration(
        self, orchestrator: Callable[..., Any] | str, *, input: Any = None, instance_id: str | None = None
    ) -> str:
        """Start an orchestration; returns its instance id."""
        return self.context.schedule_new_orchestration(orchestrator, input=input, instance_id=instance_id)


_BASE_MEMBERS = frozenset(n for n in vars(Entity) if n != "delete")


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
    return impl(
        ctx, rebuild(value, input_type(impl, 1), f"input of operation {operation!r} on {ctx.entity_id}")
    )


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


def fingerprint(request_id: str) -> bytes:
    """The fixed-size digest under which a request id is remembered for de-duplication."""
    return hashlib.blake2b(request_id.encode(), digest_size=_FINGERPRINT_BYTES).digest()


@dataclass
class EntityRecord:
    """The persisted part of one entity: two Redis hashes.

    The entity hash holds ``s`` (state payload; absent or empty: no state), ``t`` (last
    modification, ms) and ``v`` (the version checked by the commit); for a small state every value
    stays within Redis's compact listpack encoding, so an idle entity costs little.

    The control hash exists only while the entity is locked, has requests waiting for the lock, or
    remembers recent request ids: ``l`` (lock holder: ``[request id, orchestration id]``), ``q``
    (queued messages), ``r`` (recent request ids: 12 bytes each, unix seconds and fingerprint,
    oldest first), ``w``/``p`` (a batch run elsewhere, see ``delegation.py``) and ``v``. A timer
    message (:data:`MSG_SWEEP`) removes it once the ids expire.
    """

    state: bytes | None = None
    lock: list[str] | None = None
    queue: list[dict[str, Any]] = field(default_factory=list)
    recent: list[tuple[int, bytes]] = field(default_factory=list)
    #: operations of a remotely executed entity: waiting, or out in a work item (see remote_entities)
    remote: list[Any] = field(default_factory=list)
    modified: int = 0
    version: int = 0
    control_version: int = 0
    work: str = ""  # a batch running on a worker with the entity's code ("" none) ...
    parked: list[dict[str, Any]] = field(default_factory=list)  # ... and what arrived meanwhile

    @classmethod
    def from_fields(cls, main: dict[bytes, bytes], control: dict[bytes, bytes] | None = None) -> EntityRecord:
        rec = cls()
        if main:
            rec.state = main.get(b"s") or None
            rec.modified = int(main.get(b"t", b"0"))
            rec.version = int(main.get(b"v", b"0"))
        if control:
            raw = control.get(b"l")
            rec.lock = list(unpack_record(raw)) if raw else None
            raw = control.get(b"q")
            rec.queue = list(unpack_record(raw)) if raw else []
            rec.recent = list(_RECENT.iter_unpack(control.get(b"r", b"")))
            raw = control.get(b"x")
            rec.remote = list(unpack_record(raw)) if raw else []
            rec.control_version = int(control.get(b"v", b"0"))
            rec.work = control.get(b"w", b"").decode()
            raw = control.get(b"p")
            rec.parked = list(unpack_record(raw)) if raw else []
        return rec

    def main_fields(self) -> dict[str, bytes]:
        """The entity hash's fields (an empty value means 'none')."""
        return {"s": self.state or b""}

    def control_fields(self) -> dict[str, bytes]:
        """The control hash's fields; all empty when the control hash should not exist."""
        fields = {
            "l": pack_record(self.lock) if self.lock else b"",
            "q": pack_record(self.queue) if self.queue else b"",
            "r": b"".join(_RECENT.pack(ts, fp) for ts, fp in self.recent),
            "x": pack_record(self.remote) if self.remote else b"",
        }
        if self.work or self.parked:  # only while a batch runs elsewhere
            fields.update(w=self.work.encode(), p=pack_record(self.parked))
        return fields

    def to_state(self, entity_id: EntityId) -> EntityState | None:
        """The client's view; None when the entity has no state (it does not exist)."""
        if self.state is None:
            return None
        return EntityState(
            entity_id=entity_id,
            state=decode(self.state),
            last_modified_at=ms_to_datetime(self.modified),
            locked_by=self.lock[1] if self.lock else None,
            backlog=len(self.queue),
        )


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
        expired = self._now_s - dedup_seconds
        if record.recent and record.recent[0][0] <= expired:
            record.recent = [r for r in record.recent if r[0] > expired]
        self._seen = {fp for _, fp in record.recent}
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
        if len(rec.recent) > self.window:
            del rec.recent[: len(rec.recent) - self.window]
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
        rec, result = self.record, self.result
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
        if isinstance(request_id, str) and request_id:
            fp = fingerprint(request_id)
            if fp in self._seen:
                result.duplicates += 1
                return
            self._seen.add(fp)
            rec.recent.append((self._now_s, fp))
            if len(rec.recent) > 2 * self.window:
                for _, old in rec.recent[: -self.window]:
                    self._seen.discard(old)
                del rec.recent[: -self.window]
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
        traceparent = observer.begin(self.target, op, msg) if observer is not None else None
        try:
            value = decode(msg.get("input"))
            out = _run_operation(self.impl, ctx, op, value)
            if inspect.isawaitable(out):
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


def sort_entities(entity_ids: Iterable[EntityId | str]) -> list[str]:
    """Unique entity ids in the global lock order (sorted string forms)."""
    return sorted({str(EntityId.of(e)) for e in entity_ids})


def held_locks(history: Iterable[ev.Event]) -> list[tuple[str, list[str], bool]]:
    """Critical sections an execution still holds or waits for, from its history:
    (request id, sorted entity ids, granted)."""
    sections: dict[str, tuple[list[str], bool]] = {}
    for event in history:
        kind = event.get("k")
        rid = event.get("rid")
        if kind == ev.ENTITY_LOCK_REQUESTED:
            sections[str(rid)] = (list(event.get("entities") or []), False)
        elif kind == ev.ENTITY_RESPONDED and rid in sections:
            sections[str(rid)] = (sections[str(rid)][0], True)
        elif kind == ev.ENTITY_UNLOCKED:
            sections.pop(str(rid), None)
    return [(rid, locks, granted) for rid, (locks, granted) in sections.items()]
