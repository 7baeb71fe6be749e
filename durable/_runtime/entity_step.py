"""Entity processing inside a partition step.

The entity half of a partition step (the same shape as the orchestration half): load each target
entity's hash once (:meth:`EntityHalf.load`), apply its messages with the pure batch executor
(:meth:`EntityHalf.process`), and add one record write per changed entity, and the dead letters of
rejected messages, to the step's commit (:meth:`EntityHalf.flush`). Messages produced along the
way (call responses, lock requests forwarded along the chain, signals, orchestration starts) leave
through the same commit,
so an operation's effects and its consumption of the inbox happen together or not at all.
"""

from __future__ import annotations

import logging
import uuid
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._core import events as ev
from .._core.delegation import apply_entity_outcome
from .._core.entities import (
    DEFAULT_DEDUP_SECONDS,
    DEFAULT_DEDUP_WINDOW,
    MSG_SWEEP,
    RECENT_SIZE,
    EntityId,
    EntityRecord,
    held_locks,
)
from .._core.entity_batch import BatchResult, EntityBatch
from .._core.registry import capability
from .._core.remote_entities import RemoteEntityBatch
from .._core.serialization import pack_record
from .._store.keys import partition_of
from .._store.store import RecordWrite
from . import tracing
from .inbox import dlq_fields
from .step import Message, StepState

if TYPE_CHECKING:
    from .._core.registry import Registry
    from .._store.store import Store
    from .capabilities import CapabilityView
    from .instances import Instance
    from .remote import RemoteRoutes
    from .telemetry import Telemetry

log = logging.getLogger("durable.entities")

_ACTIONS = {ev.ENTITY_SIGNALED: ev.MSG_SIGNAL, ev.ENTITY_CALLED: ev.MSG_CALL}


@dataclass
class _Loaded:
    record: EntityRecord
    raw: dict[bytes, bytes]
    raw_control: dict[bytes, bytes]
    dirty: bool = False
    deleted: bool = False
    #: a sweep timer message was applied in this step (see _record_writes)
    swept: bool = False


@dataclass
class _StepEntities:
    """The entities of one partition step."""

    entities: dict[str, _Loaded] = field(default_factory=dict)
    #: (message, reason, metric kind)
    dead: list[tuple[dict[str, Any], str, str]] = field(default_factory=list)
    #: releases of orchestrations that ended in this step, sent after all of the step's actions
    releases: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


class EntityHalf:
    """Applies entity operations for the partitions of one worker."""

    #: each entity remembers up to this many request ids to recognise repeated deliveries ...
    dedup_window = DEFAULT_DEDUP_WINDOW
    #: ... for this long
    dedup_seconds = DEFAULT_DEDUP_SECONDS

    def __init__(self, *, store: Store, registry: Registry, metrics: Telemetry, caps: CapabilityView) -> None:
        self.store = store
        self.registry = registry
        self.metrics = metrics
        self.caps = caps
        self._steps: weakref.WeakKeyDictionary[StepState, _StepEntities] = weakref.WeakKeyDictionary()
        #: which entities remote executors run (set by the runtime; None: no remote execution)
        self.routes: RemoteRoutes | None = None

    def _remote(self, name: str) -> bool:
        """Whether the entity ``name`` runs in a remote executor (not registered here)."""
        if name in self.registry.entities or self.routes is None:
            return False
        return self.routes.can_run_entity(name)

    def _step(self, step: StepState) -> _StepEntities:
        st = self._steps.get(step)
        if st is None:
            st = self._steps[step] = _StepEntities()
        return st

    def owns(self, target: str) -> bool:
        return target.startswith("@")

    async def load(self, step: StepState, entity_ids: list[str]) -> None:
        """Start a step: read the hashes of the entities it addresses (one round trip)."""
        st = self._step(step)
        if not entity_ids:
            return
        missing = {t[1:].partition("@")[0].lower() for t in entity_ids}
        missing = {name for name in missing if name not in self.registry.entities}
        if any(not self.caps.recent(capability("e", name)) for name in missing):
            await self.caps.refresh()  # a worker that has it may have started since the last heartbeat
        if self.routes is not None and any(not self._remote(n) for n in missing):
            await self.routes.refresh()  # an SDK executor may have just connected: re-read the table
        keys: list[str] = []
        for target in entity_ids:
            keys.append(step.keys.entity(target))
            keys.append(step.keys.entity_control(target))
        rows = await self.store.load_records(step.index, keys)
        for i, target in enumerate(entity_ids):
            raw, raw_control = rows[2 * i], rows[2 * i + 1]
            st.entities[target] = _Loaded(EntityRecord.from_fields(raw, raw_control), raw, raw_control)

    def process(self, step: StepState, target: str, msgs: list[Message]) -> None:
        """Apply the step's messages for one entity, in inbox order."""
        st = self._step(step)
        try:
            entity_id = EntityId.parse(target)
        except ValueError as exc:
            st.dead.extend((m, str(exc), "bad_target") for m in msgs)
            return
        if str(entity_id) != target:
            reason = f"entity id {target!r} is not normalised: names are lower-case ({entity_id})"
            st.dead.extend((m, reason, "bad_target") for m in msgs)
            return
        owner = partition_of(target, step.partitions)
        if owner != step.index:
            reason = f"{target} belongs to partition {owner}, not {step.index}"
            st.dead.extend((m, reason, "wrong_partition") for m in msgs)
            return
        loaded = st.entities.get(target)
        if loaded is None:  # not announced to ensure_loaded: treat as new (the version check guards it)
            loaded = st.entities[target] = _Loaded(EntityRecord(), {}, {})
        if loaded.record.work:  # a batch runs on another worker: its messages wait for its outcome
            msgs = self._settle(step, entity_id, loaded, msgs)
            if not msgs:
                return
        impl = self.registry.entities.get(entity_id.name)
        if impl is None and self.caps.recent(capability("e", entity_id.name)):
            self._delegate(step, entity_id, loaded, msgs)  # a live worker has the code: it runs there
            return
        remote = impl is None and self._remote(entity_id.name)  # a Durable Task SDK runs it
        kind = RemoteEntityBatch if remote else EntityBatch
        spans = tracing.entity_spans()
        batch = kind(entity_id, impl, loaded.record, step.now, self.dedup_window, self.dedup_seconds, spans)
        result = batch.run(msgs)
        if spans is not None and spans.spans:
            step.after_commit.append(spans.emit)
        if isinstance(batch, RemoteEntityBatch) and batch.dispatched and self.routes is not None:
            body = {"eid": target, "token": batch.dispatched, "name": entity_id.name}
            dst = self.routes.workitems.keys.entities
            step.plan.outbox.append({"dst": dst, "m": pack_record(body)})
        self._absorb(step, entity_id, impl is not None or remote, loaded, result)

    def _delegate(self, step: StepState, entity_id: EntityId, loaded: _Loaded, msgs: list[Message]) -> None:
        """Send the batch to the work stream of the entity: a worker that has its code runs it."""
        wid = uuid.uuid4().hex
        item = {
            "wid": wid,
            "kind": "e",
            "part": step.index,
            "target": str(entity_id),
            "ts": step.now,
            "msgs": [_persistable(m) for m in msgs],
        }
        cap = capability("e", entity_id.name)
        step.plan.outbox.append({"dst": self.store.keys.work(cap), "m": pack_record(item)})
        loaded.record.work = wid
        loaded.dirty = True

    def _settle(
        self, step: StepState, entity_id: EntityId, loaded: _Loaded, msgs: list[Message]
    ) -> list[Message]:
        """Park messages until the outcome of the batch away arrives, then apply it; returns the
        messages to handle now (the parked ones first)."""
        rec = loaded.record
        loaded.dirty = True
        for i, msg in enumerate(msgs):
            if msg.get("kind") != ev.MSG_STEP_RESULT:
                rec.parked.append(_persistable(msg))
                continue
            if msg.get("wid") != rec.work:
                continue  # a late duplicate of an outcome already applied
            rec.work = ""
            waiting, rec.parked = rec.parked, []
            impl = self.registry.entities.get(entity_id.name)
            known = True
            if msg.get("missing"):  # nobody had the code for the grace period: the usual outcome here
                batch = EntityBatch(entity_id, impl, rec, step.now, self.dedup_window, self.dedup_seconds)
                result = batch.run(list(msg["item"].get("msgs") or []))
                known = impl is not None
            else:
                result = apply_entity_outcome(rec, msg.get("record") or {}, msg.get("batch") or {})
            self._absorb(step, entity_id, known, loaded, result)
            return [*waiting, *msgs[i + 1 :]]
        return []

    def _absorb(
        self, step: StepState, entity_id: EntityId, known: bool, loaded: _Loaded, result: BatchResult
    ) -> None:
        """Plan what a batch did (wherever it ran): the record, its messages, timers, dead letters."""
        st = self._step(step)
        target = str(entity_id)
        loaded.dirty = True
        loaded.deleted = result.deleted
        loaded.swept = loaded.swept or result.swept
        for msg in result.out:
            step.route(str(msg["target"]), msg)
        for at, member, msg in result.timers:
            step.plan.timers.append((at, member, pack_record(msg)))
        st.dead.extend(result.dead)
        step.notes.extend(result.notes)
        if result.duplicates:
            self.metrics.duplicate_dropped(result.duplicates)
        if known:
            if result.completed:
                self.metrics.entity_operation(entity_id.name, "completed", result.completed)
            if result.failed:
                self.metrics.entity_operation(entity_id.name, "failed", result.failed)
        for op, details in result.signal_failures:
            log.warning(
                "%s: signalled operation %r failed: %s: %s", target, op, details.error_type, details.message
            )

    def flush(self, step: StepState) -> None:
        """Add the step's entity writes to its commit, and dead letters for what was rejected."""
        st = self._steps.pop(step, None)
        if st is None:
            return
        for target, loaded in st.entities.items():
            if loaded.dirty:
                for write in self._record_writes(step, target, loaded):
                    step.plan.records.append(write)
        for target, msg in st.releases:
            step.route(target, msg)
        for msg, reason, kind in st.dead:
            fields = msg.get("_wire") or {
                b"m": pack_record({k: v for k, v in msg.items() if not k.startswith("_")})
            }
            step.plan.dead_letters.append(dlq_fields(str(msg.get("_eid", "")), fields, reason))
            step.dead_lettered.append(kind)
            log.warning(
                "partition %d: dead-lettered a message for %s: %s", step.index, msg.get("target"), reason
            )

    def _record_writes(self, step: StepState, target: str, loaded: _Loaded) -> list[RecordWrite]:
        rec = loaded.record
        writes: list[RecordWrite] = []
        key = step.keys.entity(target)
        control_key = step.keys.entity_control(target)
        control = rec.control_fields()
        for name in ("w", "p"):  # a batch that ran elsewhere came back: clear its marks
            if name not in control and loaded.raw_control.get(name.encode()):
                control[name] = b""
        raw_control = loaded.raw_control
        if any(control.values()):
            write = RecordWrite(control_key, control_key, rec.control_version)
            write.fields.update(_changed(control, raw_control))
            if write.fields:
                writes.append(write)
                # the control index: entities with a control hash, scored 1 while locked (an
                # existing hash has its entry: written again only when the lock comes or goes)
                locked = 1 if rec.lock else 0
                if not raw_control or locked != (1 if raw_control.get(b"l") else 0):
                    write.index, write.index_member, write.index_score = "c", target, locked
            ids = control["r"]
            # forget the ids once they expire: a sweep timer set for when the oldest one does,
            # set again only when the oldest one changes (or a sweep found nothing to drop yet)
            if ids and (loaded.swept or ids[:RECENT_SIZE] != raw_control.get(b"r", b"")[:RECENT_SIZE]):
                oldest = int.from_bytes(ids[:4], "big")
                due = (oldest + self.dedup_seconds) * 1000 + max(1000, self.dedup_seconds * 100)
                sweep = pack_record({"kind": MSG_SWEEP, "target": target})
                step.plan.timers.append((max(due, step.now + 1000), f"d|{target}", sweep))
        elif loaded.raw_control:
            write = RecordWrite(control_key, control_key, rec.control_version, mode="d")
            write.index, write.index_member = "c", target
            writes.append(write)
        if loaded.deleted and rec.state is None:
            if loaded.raw:
                write = RecordWrite(key, key, rec.version, mode="d")
                write.index, write.index_member = "e", target
                writes.append(write)
            return writes
        write = RecordWrite(key, key, rec.version)
        write.fields.update(_changed(rec.main_fields(), loaded.raw))
        if write.fields:
            write.fields["t"] = step.now
            if rec.state is not None:
                write.index, write.index_member, write.index_score = "e", target, step.now
            writes.append(write)
        return writes

    # -- orchestrations ----------------------------------------------------------------------------
    def route_action(self, step: StepState, inst: Instance, action: dict[str, Any]) -> None:
        """Turn an orchestration's entity action into the message(s) it sends."""
        kind = action["k"]
        if kind in _ACTIONS:
            target = str(action["entity"])
            msg: dict[str, Any] = {
                "kind": _ACTIONS[kind],
                "target": target,
                "op": action.get("name"),
                "input": action.get("input"),
            }
            if kind == ev.ENTITY_CALLED:
                msg["rid"], msg["orch"] = action["rid"], inst.iid
            elif action.get("at") is not None:  # a delayed signal (Durable Task SDK orchestrations)
                msg["at"] = int(action["at"])
                msg["id"] = str(action.get("rid") or f"{inst.iid}:{action['tid']}")
            if action.get("cs"):
                msg["cs"] = action["cs"]
            if action.get("at") is not None:  # a scheduled signal: parked by the entity until then
                msg["at"] = action["at"]
                msg["id"] = f"{inst.iid}:{inst.exec}:{action['tid']}"
            traceparent = tracing.orchestration_traceparent(inst.iid, inst.exec, inst.traceparent)
            if traceparent is not None:
                msg["traceparent"] = traceparent
            step.route(target, msg)
        elif kind == ev.ENTITY_LOCK_REQUESTED:
            locks = list(action["entities"])
            step.route(locks[0], _lock_message(ev.MSG_LOCK, inst.iid, str(action["rid"]), locks))
        elif kind == ev.ENTITY_UNLOCKED:
            for target in action["entities"]:
                step.route(target, _unlock_message(target, str(action["rid"]), inst.iid))
        else:
            # every action kind the executor can produce is routed above or by the partition
            raise ValueError(f"no route for orchestration action {kind!r}")

    def on_orchestration_end(
        self, step: StepState, inst: Instance, history: list[ev.Event] | None = None
    ) -> None:
        """Release the locks an ending execution still holds or waits for (sent at flush, after the
        step's other messages, so a release never overtakes its own lock request). ``history``:
        the execution's history when it has no local executor (remote execution); by default the
        history this worker knows (its executor's, or the one of a step run elsewhere)."""
        if history is None:
            history = inst.history
        if not history:
            return
        st = self._step(step)
        for rid, locks, granted in held_locks(history):
            if not locks:
                continue
            if granted:  # every entity holds the lock: release them all at once
                st.releases.extend((target, _unlock_message(target, rid, inst.iid)) for target in locks)
            else:  # the request may still travel the chain: the release follows it
                msg = _lock_message(ev.MSG_UNLOCK, inst.iid, rid, locks)
                msg["chain"] = True
                st.releases.append((locks[0], msg))


def _persistable(msg: Message) -> Message:
    return {k: v for k, v in msg.items() if not k.startswith("_")}


def _changed(fields: dict[str, bytes], raw: dict[bytes, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in fields.items() if raw.get(k.encode(), b"") != v}


def _unlock_message(target: str, rid: str, orch: str) -> dict[str, Any]:
    return {"kind": ev.MSG_UNLOCK, "target": target, "rid": rid, "orch": orch}


def _lock_message(kind: str, orch: str, rid: str, locks: list[str]) -> dict[str, Any]:
    return {"kind": kind, "target": locks[0], "rid": rid, "orch": orch, "locks": locks, "pos": 0}
