"""Work items for connected SDK workers: read from the hub's remote streams, streamed over
``GetWorkItems``, answered by ``Complete*Task``.

This sidecar reads the hub's three remote streams (orchestration steps, activity tasks, entity
batches) as one
consumer of the group ``remote-executors``, only while some SDK worker is connected. Each entry
becomes a protocol ``WorkItem`` offered to a connected worker whose work-item filters accept it
(the least busy one). A completion token names everything needed to answer the item without
state (stream, entry id, instance, and the owner's step token or the activity's execution and
task id), so a completion that reaches another sidecar, or arrives twice, is still answered
correctly: the owner drops what does not match. A worker that disconnects or abandons an item
hands it back at once to another connected worker (or to the next one that connects); a sidecar
that dies leaves its entries pending, and another sidecar reclaims them after the visibility
timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from durabletask.internal import orchestrator_service_pb2 as pb
from redis.exceptions import RedisError

from .._core import events as ev
from .._core.model import FailureDetails
from .._core.serialization import is_blob_ref, pack_record, unpack_record
from .._runtime import tracing
from .._runtime.remote import MSG_REMOTE_RESULT
from .._runtime.telemetry import Telemetry
from .._store.store import Store
from .._store.workitems import ANY_ENTITY, ANY_NAME, ENTITY_PREFIX, WorkItemStore
from . import convert, entity_items

log = logging.getLogger("durable.sidecar")

_PAYLOAD_FIELDS = ("input", "result", "output")
_SEP = "\x1f"
#: a worker's connection is kept busy with at most this many work items at once
_PER_CONNECTION = 64


@dataclass(eq=False)
class Connection:
    """One ``GetWorkItems`` stream of one SDK worker."""

    orchestrations: frozenset[str] | None
    activities: frozenset[str] | None
    entities: frozenset[str] | None
    queue: asyncio.Queue[pb.WorkItem] = field(default_factory=asyncio.Queue)
    in_flight: dict[str, Item] = field(default_factory=dict)

    def accepts(self, item: Item) -> bool:
        names = {"o": self.orchestrations, "a": self.activities}.get(item.kind, self.entities)
        return names is None or item.name in names


@dataclass(eq=False)
class Item:
    """A work item this sidecar holds (waiting for a worker, or with one)."""

    kind: str  # 'o' orchestration step, 'a' activity task, 'e' entity batch
    stream: str
    entry_id: str
    name: str
    work: pb.WorkItem

    @property
    def token(self) -> str:
        return self.work.completionToken


def _token(*parts: str) -> str:
    return _SEP.join(parts)


class _ActivityToken(NamedTuple):
    """An activity work item's completion token: where its result goes, and what counting and
    tracing it needs (any sidecar may take the completion)."""

    kind: str
    stream: str
    entry_id: str
    iid: str
    exec_id: str
    tid: str
    name: str
    handed_out: str  # ms since the epoch
    traceparent: str  # the orchestration's call ('' untraced)
    attempt: str
    delivery: str


def _span_key(token: _ActivityToken) -> tuple[str, ...]:
    return "activity", token.entry_id, token.delivery, token.handed_out


def _activity_attributes(token: _ActivityToken) -> dict[str, Any]:
    return {
        "durable.instance_id": token.iid,
        "durable.activity.name": token.name,
        "durable.task_id": int(token.tid),
        "durable.activity.attempt": int(token.attempt),
        "durable.activity.delivery": int(token.delivery),
    }


def parse_token(token: str) -> list[str]:
    return token.split(_SEP)


class Dispatcher:
    """Hands this hub's remote work items to the SDK workers connected to this sidecar."""

    def __init__(
        self, store: Store, workitems: WorkItemStore, consumer: str, visibility_ms: int = 30_000
    ) -> None:
        self.store = store
        self.workitems = workitems
        self.consumer = consumer
        self.visibility_ms = visibility_ms
        self.connections: list[Connection] = []
        self.waiting: deque[Item] = deque()
        self.held: dict[str, Item] = {}  # by completion token
        self._changed = asyncio.Event()
        self.stopping = False
        self.advertised: set[str] = set()
        self.metrics = Telemetry()

    # -- connections -------------------------------------------------------------------------------
    async def connect(self, request: pb.GetWorkItemsRequest) -> Connection:
        orchestrations: frozenset[str] | None = None
        activities: frozenset[str] | None = None
        entities: frozenset[str] | None = None
        if request.HasField("workItemFilters"):
            filters = request.workItemFilters
            orchestrations = frozenset(f.name for f in filters.orchestrations)
            activities = frozenset(f.name for f in filters.activities)
            entities = frozenset(f.name.lower() for f in filters.entities)
        names = set(orchestrations) if orchestrations is not None else {ANY_NAME}
        names |= {ENTITY_PREFIX + n for n in entities} if entities is not None else {ANY_ENTITY}
        if not names <= self.advertised:
            await self.workitems.advertise(names)  # owners now hand these names out
            self.advertised |= names
        conn = Connection(orchestrations, activities, entities)
        self.connections.append(conn)
        for item in list(self.waiting):
            if conn.accepts(item):
                self.waiting.remove(item)
                self._give(conn, item)
        self._wake()
        return conn

    def disconnect(self, conn: Connection) -> None:
        """A worker went away: what it had goes to another worker (or waits for one)."""
        if conn in self.connections:
            self.connections.remove(conn)
        items, conn.in_flight = list(conn.in_flight.values()), {}
        if items:
            log.info("an SDK worker disconnected with %d work item(s): handing them out again", len(items))
        for item in items:
            self.offer(item)

    def abandon(self, token: str) -> None:
        item = self.held.get(token)
        if item is None:
            return
        for conn in self.connections:
            conn.in_flight.pop(token, None)
        self.offer(item)

    def offer(self, item: Item) -> None:
        self.held[item.token] = item
        capable = [c for c in self.connections if c.accepts(item)]
        if not capable:
            self.waiting.append(item)
            return
        self._give(min(capable, key=lambda c: len(c.in_flight)), item)

    def _give(self, conn: Connection, item: Item) -> None:
        conn.in_flight[item.token] = item
        conn.queue.put_nowait(item.work)

    def _done(self, token: str) -> None:
        self.held.pop(token, None)
        for conn in self.connections:
            conn.in_flight.pop(token, None)
        self._wake()

    def _wake(self) -> None:
        self._changed.set()

    def _capacity(self) -> int:
        return len(self.connections) * _PER_CONNECTION - len(self.held)

    # -- completions ------------------------------------------------------------------------------
    async def complete_orchestration(self, response: pb.OrchestratorResponse) -> None:
        parts = parse_token(response.completionToken)
        if len(parts) != 5 or parts[0] != "o":
            raise ValueError("not an orchestration work item's completion token")
        _, stream, entry_id, iid, step_token = parts
        msg: dict[str, Any] = {"kind": MSG_REMOTE_RESULT, "target": iid, "token": step_token}
        try:
            actions, complete = convert.actions_from_pb(iid, response.actions)
        except Exception as exc:  # an action the engine cannot carry out fails the orchestration
            actions = []
            complete = {
                "status": "FAILED",
                "output": None,
                "failure": FailureDetails(str(exc), type(exc).__name__).to_record(),
            }
        msg["actions"] = actions
        if complete is not None:
            msg["complete"] = complete
        if response.HasField("orchestrationTraceContext"):  # the SDK's span of the execution
            msg["trace"] = response.orchestrationTraceContext.SerializeToString()
        if response.HasField("customStatus"):
            msg["custom_set"] = True
            msg["custom"] = convert.packed_from_json(response.customStatus.value, "custom status")
        await self.workitems.reply(iid, pack_record(msg), stream, entry_id)
        self._done(response.completionToken)

    async def complete_activity(self, response: pb.ActivityResponse) -> None:
        """Store an activity's result; then (the first completion of the work item only) count it
        and emit its span, from what its token carries: the sidecar that takes the completion
        need not be the one that handed the item out."""
        parts = parse_token(response.completionToken)
        if len(parts) not in (6, len(_ActivityToken._fields)) or parts[0] != "a":
            raise ValueError("not an activity work item's completion token")
        token = _ActivityToken(*parts) if len(parts) > 6 else None
        _, stream, entry_id, iid, exec_id, tid = parts[:6]
        reply: dict[str, Any] = {"target": iid, "exec": exec_id or None, "tid": int(tid)}
        failure: FailureDetails | None = None
        if response.HasField("failureDetails") and (
            response.failureDetails.errorMessage or response.failureDetails.errorType
        ):
            reply["kind"] = ev.MSG_TASK_FAILED
            reply["failure"] = convert.failure_from_pb(response.failureDetails)
            failure = FailureDetails.from_record(reply["failure"])
        else:
            reply["kind"] = ev.MSG_TASK_COMPLETED
            reply["result"] = convert.packed_from_json(convert.optional_text(response, "result"))
        first = await self.workitems.reply(iid, pack_record(reply), stream, entry_id)
        self._done(response.completionToken)
        if token is not None and first:  # counted and traced as a local activity, once stored
            handed_out = int(token.handed_out)
            elapsed = max(time.time() * 1000 - handed_out, 0.0) / 1000
            self.metrics.activity_done(token.name, "completed" if failure is None else "failed", elapsed)
            span = tracing.activity_span(
                token.name, token.traceparent or None, _activity_attributes(token), handed_out
            )
            if span is not None:
                span.derive_ids(token.traceparent, *_span_key(token))
                span.done(failure)
                tracing.run_after_commit([span.emit])

    async def complete_entity(self, response: pb.EntityBatchResult) -> None:
        parts = parse_token(response.completionToken)
        if len(parts) != 5 or parts[0] != "e":
            raise ValueError("not an entity work item's completion token")
        _, stream, entry_id, target, batch_token = parts
        msg = entity_items.batch_reply(target, batch_token, response, int(time.time() * 1000))
        await self.workitems.reply(target, pack_record(msg), stream, entry_id)
        self._done(response.completionToken)

    # -- reading the streams ---------------------------------------------------------------------
    async def run(self) -> None:
        """Read work items while workers are connected; keep held ones fresh; reclaim stale ones."""
        await self.workitems.ensure_groups()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._maintain())
            await self._read()

    async def _read(self) -> None:
        keys = self.workitems.keys
        failures = 0
        while not self.stopping:
            room = self._capacity()
            if room <= 0:
                self._changed.clear()
                await self._changed.wait()
                continue
            try:
                counts = {keys.orchestrations: room, keys.activities: room, keys.entities: room}
                entries = await self.workitems.read(self.consumer, counts, 500)
                failures = 0
            except (RedisError, OSError) as exc:
                failures += 1
                log.warning("reading remote work items failed: %s", exc)
                await asyncio.sleep(min(0.05 * 2**failures, 2.0))
                if "NOGROUP" in str(exc):
                    with contextlib.suppress(RedisError, OSError):
                        await self.workitems.ensure_groups()
                continue
            for stream, (entry_id, fields) in entries:
                await self._take(stream, entry_id, fields)

    async def _maintain(self) -> None:
        keys = self.workitems.keys
        while not self.stopping:
            await asyncio.sleep(max(self.visibility_ms / 3000, 0.05))
            try:
                by_stream: dict[str, list[str]] = {}
                for item in self.held.values():
                    by_stream.setdefault(item.stream, []).append(item.entry_id)
                for stream, ids in by_stream.items():
                    await self.workitems.touch(stream, self.consumer, ids)
                if self._capacity() <= 0:
                    continue
                for stream in (keys.orchestrations, keys.activities, keys.entities):
                    claimed = await self.workitems.claim_stale(stream, self.consumer, self.visibility_ms, 10)
                    for entry_id, fields, delivered in claimed:
                        if not any(i.entry_id == entry_id for i in self.held.values()):
                            await self._take(stream, entry_id, fields, int(delivered))
            except (RedisError, OSError) as exc:
                log.warning("remote work item maintenance failed: %s", exc)

    async def _take(self, stream: str, entry_id: str, fields: dict[bytes, bytes], delivery: int = 1) -> None:
        try:
            body = unpack_record(fields[b"m"])
            if stream == self.workitems.keys.orchestrations:
                item = await self._orchestration_item(stream, entry_id, body)
            elif stream == self.workitems.keys.entities:
                item = await self._entity_item(stream, entry_id, body)
            else:
                item = await self._activity_item(stream, entry_id, body, delivery)
        except (RedisError, OSError):
            raise
        except Exception as exc:
            log.error("dropping malformed remote work item %s: %r", entry_id, exc)
            item = None
        if item is None:
            await self.workitems.ack(stream, [entry_id])
            return
        self.offer(item)

    async def _orchestration_item(self, stream: str, entry_id: str, body: dict[str, Any]) -> Item | None:
        iid, step_token = str(body["iid"]), str(body["token"])
        fields, raw_history = await self.workitems.snapshot(iid)
        if fields.get(b"rtok", b"").decode() != step_token:
            return None  # answered already, or the instance moved on (terminated, purged)
        history = [await self._resolved(unpack_record(h)) for h in raw_history]
        pending_raw = fields.get(b"rq")
        pending = list(unpack_record(pending_raw)) if pending_raw else []
        sent = int(fields.get(b"rsent", b"0") or 0)
        started = {"k": ev.ORCHESTRATOR_STARTED, "ts": int(fields.get(b"rts", b"0") or 0)}
        new_events = [started] + [await self._resolved(e) for e in pending[:sent]]
        exec_id = fields.get(b"exec", b"").decode()
        request = pb.OrchestratorRequest(
            instanceId=iid,
            pastEvents=[convert.history_event(e, iid) for e in history],
            newEvents=[convert.history_event(e, iid) for e in new_events],
        )
        if exec_id:
            request.executionId.value = exec_id
        trace_context = fields.get(b"rtrace")
        if trace_context:  # what the SDK returned last time: its span of the execution goes on
            request.orchestrationTraceContext.ParseFromString(trace_context)
        token = _token("o", stream, entry_id, iid, step_token)
        work = pb.WorkItem(orchestratorRequest=request, completionToken=token)
        return Item("o", stream, entry_id, str(body.get("name", "")), work)

    async def _entity_item(self, stream: str, entry_id: str, body: dict[str, Any]) -> Item | None:
        target, batch_token = str(body["eid"]), str(body["token"])
        main, control = await self.workitems.entity_snapshot(target)
        request, state = entity_items.batch_request(target, main, control, batch_token)
        if request is None:
            return None
        entity_items.set_state(request, await self.store.resolve(state))
        token = _token("e", stream, entry_id, target, batch_token)
        work = pb.WorkItem(entityRequest=request, completionToken=token)
        return Item("e", stream, entry_id, str(body.get("name", "")), work)

    async def _activity_item(
        self, stream: str, entry_id: str, body: dict[str, Any], delivery: int = 1
    ) -> Item:
        iid, tid, name = str(body["target"]), int(body["tid"]), str(body["name"])
        exec_id = str(body.get("exec") or "")
        data = await self.store.resolve(body.get("input"))
        request = pb.ActivityRequest(name=name, taskId=tid, input=convert.packed_value(data))
        request.orchestrationInstance.instanceId = iid
        if exec_id:
            request.orchestrationInstance.executionId.value = exec_id
        now_ms = int(time.time() * 1000)
        self.metrics.schedule_to_start("activity", entry_id, now_ms)
        traceparent = str(body.get("traceparent") or "")
        token = _ActivityToken(
            "a", stream, entry_id, iid, exec_id, str(tid), name, str(now_ms), traceparent,
            str(int(body.get("attempt") or 1)), str(delivery),
        )  # fmt: skip
        # the SDK's activity span nests in this attempt's span (emitted with the completion)
        parent = (
            tracing.work_traceparent(traceparent, *_span_key(token)) if traceparent else None
        ) or traceparent
        if parent:
            request.parentTraceContext.traceParent = parent
        work = pb.WorkItem(activityRequest=request, completionToken=_token(*token))
        return Item("a", stream, entry_id, name, work)

    async def _resolved(self, event: dict[str, Any]) -> dict[str, Any]:
        for key in _PAYLOAD_FIELDS:
            if is_blob_ref(event.get(key)):
                event[key] = await self.store.resolve(event[key])
        return event

    async def hand_back(self) -> None:
        """Stopping: let other sidecars take what this one holds at once."""
        self.stopping = True
        self._wake()
        by_stream: dict[str, list[str]] = {}
        for item in self.held.values():
            by_stream.setdefault(item.stream, []).append(item.entry_id)
        self.held.clear()
        self.waiting.clear()
        for stream, ids in by_stream.items():
            with contextlib.suppress(RedisError, OSError):
                await self.workitems.hand_back(stream, ids, self.visibility_ms)
