"""Durable entities: ids, the public entity API and the persisted entity record.

Pure: no Redis, no event loop. An entity is a keyed actor whose state lives in a small Redis hash
of its partition (see :class:`EntityRecord`). The partition step hands the executor the entity's
persisted record and the messages that arrived for it; the executor (``entity_batch.py``)
applies them in order and returns the new record and the messages to send (call responses,
forwarded lock requests, signals, orchestration starts). Each operation runs against a fresh
copy of the state, so an operation that raises leaves no trace: its state change and the
messages it produced are discarded. Messages that carry a request id (client and wire
signals) are applied once: the entity remembers recent ids and drops repeats.

Critical sections (``ctx.lock_entities``) follow the Durable Task algorithm: the lock request
visits the entities in sorted order, each one locking itself before it forwards the request, and
the last one answers the orchestration. A locked entity serves only messages tagged with the
holder's request id; everything else waits, in order, in the entity's queue.
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import struct
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from . import events as ev
from .convert import rebuild
from .model import datetime_to_ms, ms_to_datetime
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


class EntitySignal(NamedTuple):
    """One signal for ``signal_entities`` (a plain ``(entity_id, operation, input)`` tuple works
    too): an operation, its input, and optionally the signal id (for retries) and a delay."""

    entity_id: EntityId | str
    operation: str
    input: Any = None
    #: the entity applies a signal id once (None: a new random id)
    signal_id: str | None = None
    #: deliver the operation at this time (Redis clock; None: now)
    signal_at: _dt.datetime | None = None


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
        self._state_what = f"state of entity {entity_id}"  # names the state in encoding errors
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
            return encode(self._value, what=self._state_what), False
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


#: bytes per remembered request id (unix seconds, fingerprint)
RECENT_SIZE = _RECENT.size


def recent_since(ids: bytes, oldest: int) -> bytes:
    """The records of ``ids`` (oldest first) after the leading ones older than unix second
    ``oldest`` (a record that is out of order is kept until the ones before it go)."""
    at, end = 0, len(ids) - RECENT_SIZE
    while at <= end and _RECENT.unpack_from(ids, at)[0] < oldest:
        at += RECENT_SIZE
    return ids[at:] if at else ids


def has_recent(ids: bytes, fp: bytes) -> bool:
    """Whether fingerprint ``fp`` is among the records of ``ids``."""
    i = ids.find(fp, 4)
    while i >= 0:
        if i % RECENT_SIZE == 4:  # a fingerprint, not bytes straddling two records
            return True
        i = ids.find(fp, i + 1)
    return False


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
    #: the recent request ids as stored (the ``r`` field; see :attr:`recent`)
    recent_ids: bytes = b""
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
            rec.recent_ids = control.get(b"r", b"")
            raw = control.get(b"x")
            rec.remote = list(unpack_record(raw)) if raw else []
            rec.control_version = int(control.get(b"v", b"0"))
            rec.work = control.get(b"w", b"").decode()
            raw = control.get(b"p")
            rec.parked = list(unpack_record(raw)) if raw else []
        return rec

    @property
    def recent(self) -> list[tuple[int, bytes]]:
        """The recent request ids as (unix seconds, fingerprint), oldest first (a copy)."""
        return list(_RECENT.iter_unpack(self.recent_ids))

    @recent.setter
    def recent(self, value: Iterable[tuple[int, bytes]]) -> None:
        self.recent_ids = b"".join(_RECENT.pack(ts, fp) for ts, fp in value)

    def main_fields(self) -> dict[str, bytes]:
        """The entity hash's fields (an empty value means 'none')."""
        return {"s": self.state or b""}

    def control_fields(self) -> dict[str, bytes]:
        """The control hash's fields; all empty when the control hash should not exist."""
        fields = {
            "l": pack_record(self.lock) if self.lock else b"",
            "q": pack_record(self.queue) if self.queue else b"",
            "r": self.recent_ids,
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
