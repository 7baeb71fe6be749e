"""Steps this worker runs for partition owners that lack the code, and work nobody can run.

The runner reads the work streams of this worker's capabilities (every orchestrator version it
registered, "any version" of each orchestrator name, every entity). For an orchestration item it
loads the instance's history, replays it and runs the item's events through the replay executor;
for an entity item it loads the entity's record and runs the batch executor on the item's
messages. Either way exactly the code the owner would have run, and nothing is written: the
outcome goes back to the owner's inbox (``step_result``), which commits it with its fencing.
An item whose instance moved on (``wi`` no longer names it) is dropped. Items of a worker that died
are taken over after the activity visibility timeout; running one twice is harmless (the owner
applies the first outcome and drops the second).

The same loop sweeps work that no live worker can run: items of capabilities no worker has had for
longer than the grace period (``WorkerConfig.missing_code_grace_ms``). An activity task fails with
a clear error; an entity or an unpinned start comes back to its owner (``missing``), which applies
its usual "not registered" outcome. Steps of a pinned orchestration version never fail for it:
they wait.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio
from redis.exceptions import RedisError

from .._core import events as ev
from .._core.context import OrchestrationContext
from .._core.delegation import entity_outcome_record, step_result_record
from .._core.entities import EntityId, EntityRecord
from .._core.entity_batch import EntityBatch
from .._core.executor import OrchestrationExecutor
from .._core.model import FailureDetails
from .._core.registry import name_of, split_capability
from .._core.serialization import pack_record, unpack_record
from .._store.keys import ACTIVITY_GROUP
from .instances import check_history_size, load_histories

if TYPE_CHECKING:
    from .._config import WorkerConfig
    from .._core.registry import Registry
    from .._store.store import Fields, Store
    from .capabilities import CapabilityView

log = logging.getLogger("durable.work")

#: items read at once (each runs to completion before the next)
_BATCH = 16
#: items looked at per stale capability in one sweep
_SWEEP_BATCH = 100


class WorkRunner:
    """Runs orchestration and entity steps for other partitions' owners; sweeps stranded work."""

    def __init__(
        self,
        *,
        store: Store,
        registry: Registry,
        config: WorkerConfig,
        caps: CapabilityView,
        consumer: str,
        dedup: tuple[int, int],
    ) -> None:
        self.store = store
        self.registry = registry
        self.config = config
        self.caps = caps
        self.consumer = consumer
        self.dedup_window, self.dedup_seconds = dedup
        self.streams = sorted(c for c in caps.own if not c.startswith("a|"))
        self._reading = True
        self._read_scope: anyio.CancelScope | None = None
        self._done = anyio.Event()
        self.executed = 0

    def stop_reading(self) -> None:
        self._reading = False
        if self._read_scope is not None:
            self._read_scope.cancel()
        self._done.set()

    async def run(self, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        await self.store.ensure_work_groups(self.streams)
        task_status.started()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._read_loop)
            tg.start_soon(self._maintenance_loop)
            await self._done.wait()
            tg.cancel_scope.cancel()

    async def _read_loop(self) -> None:
        failures = 0
        while self._reading and self.streams:
            items: list[tuple[str, str, Fields]] = []
            with anyio.CancelScope() as scope:
                self._read_scope = scope
                try:
                    items = await self.store.read_work(
                        self.consumer, self.streams, _BATCH, self.config.poll_ms
                    )
                    failures = 0
                except (RedisError, OSError) as exc:
                    failures += 1
                    log.warning("reading work items failed: %s", exc)
                    if "NOGROUP" in str(exc):
                        await self.store.ensure_work_groups(self.streams)
                    await anyio.sleep(min(0.05 * 2**failures, 2.0))
            self._read_scope = None
            for n, (cap, eid, fields) in enumerate(items):
                if not self._reading:  # stopping: what was not run goes back at once
                    with anyio.CancelScope(shield=True):
                        await self._hand_back(items[n:])
                    break
                with anyio.CancelScope(shield=True):
                    await self.handle(cap, eid, fields)

    async def _hand_back(self, items: list[tuple[str, str, Fields]]) -> None:
        by_cap: dict[str, list[str]] = {}
        for cap, eid, _ in items:
            by_cap.setdefault(cap, []).append(eid)
        try:
            for cap, eids in by_cap.items():
                await self.store.hand_back_work(cap, eids, self.config.activity_visibility_ms)
        except (RedisError, OSError) as exc:
            log.warning("handing back work items failed (they are taken over later): %s", exc)

    async def handle(self, cap: str, eid: str, fields: Fields) -> None:
        """Run one item and send its outcome; a Redis failure leaves it for a later attempt."""
        try:
            item = unpack_record(fields[b"m"])
            target = str(item["target"])
        except Exception as exc:
            log.error("dropping a malformed work item %s of %s: %s", eid, cap, exc)
            await self.store.ack_work(cap, [eid])
            return
        try:
            reply = await (self._entity(item) if item.get("kind") == "e" else self._orchestration(item))
            if reply is not None:
                await self.store.send_message(target, pack_record(reply))
                self.executed += 1
            await self.store.ack_work(cap, [eid])
        except (RedisError, OSError) as exc:
            log.warning("work item %s of %s failed (%s); it will be taken over again", eid, cap, exc)

    async def _orchestration(self, item: dict[str, Any]) -> dict[str, Any] | None:
        iid, wid = str(item["target"]), str(item["wid"])
        [(fields, history)] = await load_histories(self.store, int(item["part"]), [iid])
        if fields.get(b"wi", b"").decode() != wid:
            return None  # the owner moved on (terminated, or a newer item): nothing to run
        executor = OrchestrationExecutor(
            iid,
            self.registry.orchestrators.get,
            name_of,
            OrchestrationContext,
            resolve_version=self.registry.resolve_orchestrator,
        )
        executor.replay(history)
        events = [{"k": ev.ORCHESTRATOR_STARTED, "ts": int(item["ts"])}, *item.get("events", [])]
        result = executor.execute(events)
        result = check_history_size(iid, executor, result, self.config)
        return {
            "kind": ev.MSG_STEP_RESULT,
            "target": iid,
            "wid": wid,
            "ver": executor.version,
            "result": step_result_record(result),
        }

    async def _entity(self, item: dict[str, Any]) -> dict[str, Any] | None:
        target, wid = str(item["target"]), str(item["wid"])
        keys = self.store.partition_keys(int(item["part"]))
        main, control = await self.store.load_records(
            int(item["part"]), [keys.entity(target), keys.entity_control(target)]
        )
        record = EntityRecord.from_fields(main, control)
        if record.work != wid:
            return None
        entity_id = EntityId.parse(target)
        impl = self.registry.entities.get(entity_id.name)
        batch = EntityBatch(entity_id, impl, record, int(item["ts"]), self.dedup_window, self.dedup_seconds)
        result = batch.run(list(item.get("msgs") or []))
        state, outcome = entity_outcome_record(record, result)
        return {"kind": ev.MSG_STEP_RESULT, "target": target, "wid": wid, "record": state, "batch": outcome}

    # -- maintenance ---------------------------------------------------------------------------
    async def _maintenance_loop(self) -> None:
        vis = self.config.activity_visibility_ms
        while self._reading:
            await anyio.sleep(max(vis / 3000, 0.05))
            try:
                for cap in self.streams:
                    for eid, fields in await self.store.claim_stale_work(self.consumer, cap, vis, _BATCH):
                        if not self._reading:
                            break
                        with anyio.CancelScope(shield=True):
                            await self.handle(cap, eid, fields)
                await self.sweep()
            except (RedisError, OSError) as exc:
                log.warning("work maintenance failed: %s", exc)

    async def sweep(self) -> int:
        """Fail (or return to their owners) items of capabilities no worker has had for longer
        than the grace period; returns how many."""
        swept = 0
        for cap in self.caps.stale():
            kind, name, version = split_capability(cap)
            if kind == "o" and version is not None:
                continue  # a pinned version: its instances wait, visibly, for a worker with it
            entries = await self.store.work_entries(cap, _SWEEP_BATCH)
            for eid, fields in entries:
                await self._give_up(cap, kind, name, eid, fields)
                swept += 1
        return swept

    async def _give_up(self, cap: str, kind: str, name: str, eid: str, fields: Fields) -> None:
        grace = self.config.missing_code_grace_ms / 1000
        try:
            item = unpack_record(fields[b"m"])
            target = str(item["target"])
        except Exception:
            await self.store.ack_work(cap, [eid], ACTIVITY_GROUP if kind == "a" else "executors")
            return
        if kind == "a":
            failure = FailureDetails(
                f"no live worker of hub {self.store.hub!r} has registered activity {name!r} "
                f"(none for longer than the grace period of {grace:g}s)",
                "ActivityNotRegisteredError",
            )
            reply: dict[str, Any] = {
                "kind": ev.MSG_TASK_FAILED,
                "target": target,
                "exec": item.get("exec"),
                "tid": item.get("tid"),
                "failure": failure.to_record(),
            }
            log.warning("activity task for %s failed: %s", target, failure.message)
            await self.store.send_message(target, pack_record(reply))
            await self.store.ack_work(cap, [eid], ACTIVITY_GROUP)
            return
        what = f"entity {name!r}" if kind == "e" else f"orchestrator {name!r}"
        log.warning("no live worker has had %s for %gs: its work goes back to %s", what, grace, target)
        back = {"kind": ev.MSG_STEP_RESULT, "target": target, "wid": item.get("wid"), "missing": True}
        back["item"] = item
        await self.store.send_message(target, pack_record(back))
        await self.store.ack_work(cap, [eid])
