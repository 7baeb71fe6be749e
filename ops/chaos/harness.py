"""The chaos run: a seeded workload, worker processes, a nemesis, and oracles (``ops/chaos/run``).

Timeline of a run of T = ``--minutes`` minutes: top-level instances start over the first 60% of T
(``--rate`` per second); faults are injected from 5 s until 80% of T at seeded random intervals;
then everything is healed (paused workers continued, Redis up, the worker count restored), a probe
orchestration measures recovery, and the harness waits (until T plus a grace period) for every
instance, checks every oracle and prints one table. Its last line is ``safety violations: N``; the
exit status is non-zero when N > 0 or when anything did not finish as predicted.

The seed fixes the workload and the fault schedule (kinds, victims, intervals); how they
interleave with the operating system's scheduling is not reproducible, so reruns of a seed are
similar, not identical.

Durability modes (``--fsync``). ``always``: Redis fsyncs before it replies, so nothing any
client saw can be lost by kill -9; the oracles require both consistency and completeness
(no lost acknowledged start, no cursor regression, no rewritten history). ``everysec``: kill -9 may
lose the last second of writes, which rolls the whole server back to an earlier consistent point;
the oracles then require consistency only: histories valid and as predicted in the end, regressions
seen across a Redis restart reported as rollbacks, and acknowledged-but-unsynced client work
(starts, raised events) re-submitted by the harness, like a client that verifies its writes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import sys
import tempfile
import time
import traceback
import urllib.parse
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path[:0] = [str(HERE), str(ROOT)]  # the engine of this checkout, as the workers use it

import workload  # noqa: E402
from oracles import TERMINAL, Auditor, Finding, Keys  # noqa: E402
from procs import RedisProc, WorkerPool, worker_env  # noqa: E402
from verdict import FAULT_KINDS, Verdict  # noqa: E402

from durable import (  # noqa: E402
    AsyncClient,
    OrchestrationAlreadyExistsError,
    OrchestrationNotFoundError,
)
from durable._store.store import Store  # noqa: E402

LEASE_TTL_S = 2.0  # the app's lease TTL
FAULT_WEIGHTS = dict(zip(FAULT_KINDS, (30, 20, 20, 8, 8, 8), strict=True))
RAISE_AGAIN_WINDOW_S = 5.0  # everysec: events acknowledged this long before a Redis kill are re-raised


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="ops/chaos/run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=2.0, help="length of the run (default 2)")
    ap.add_argument("--seed", type=int, default=1, help="workload and fault schedule seed (default 1)")
    ap.add_argument("--redis-url", help="use this Redis (no Redis kills); default: start our own")
    ap.add_argument("--workers", type=int, default=3, help="worker processes (default 3)")
    ap.add_argument("--partitions", type=int, default=16, help="partitions of the hub (default 16)")
    ap.add_argument("--rate", type=float, default=3.0, help="top-level instances started per second")
    ap.add_argument("--fsync", choices=("always", "everysec"), default="always", help="Redis appendfsync")
    ap.add_argument("--entities", action="store_true", help="add bank transfers over entity accounts")
    ap.add_argument("--mean-fault-gap", type=float, default=4.0, help="mean seconds between faults")
    ap.add_argument("--workdir", help="where logs and Redis data go (default: a new temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder even when the run passes")
    return ap.parse_args(argv)


def _ledger_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    db = int(parts.path.strip("/") or 0)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{db + 1 if db < 15 else db - 1}"))


@dataclass
class Stats:
    faults: Counter[str] = field(default_factory=Counter)
    last_fault_end: float = 0.0
    lost_starts: list[str] = field(default_factory=list)
    resubmitted_starts: int = 0
    reraised_events: int = 0
    violations: list[Finding] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # not safety, but the run did not pass
    notes: list[str] = field(default_factory=list)


class ChaosRun:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.owned = args.redis_url is None
        self.strict = args.fsync == "always" or not self.owned
        self.workdir = Path(args.workdir or tempfile.mkdtemp(prefix="durable-chaos-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        self.total_s = args.minutes * 60
        self.load_s = 0.6 * self.total_s
        self.fault_end_s = 0.8 * self.total_s
        self.grace_s = max(60.0, 0.25 * self.total_s)
        self.hub = f"chaos-{args.seed}-{uuid.uuid4().hex[:6]}"
        self.stats = Stats()
        self.redis: RedisProc | None = None
        self.ledger_proc: RedisProc | None = None
        self.redis_up = asyncio.Event()
        self.acked: dict[str, float] = {}
        self.acked_events: list[tuple[str, str, int, float]] = []
        self.tasks: set[asyncio.Task[Any]] = set()
        self.target_workers = args.workers
        self.respawn_after = 0.0
        self.terminating: dict[int, float] = {}
        self.t0 = 0.0

    # -- setup -----------------------------------------------------------------------------------
    def _setup_redis(self) -> tuple[str, str]:
        if not self.owned:
            return self.args.redis_url, _ledger_url(self.args.redis_url)
        self.redis = RedisProc(self.workdir / "redis", appendonly=True, appendfsync=self.args.fsync)
        self.redis.start()
        # the ledger lives on a Redis that is never faulted, so it keeps every execution it saw
        self.ledger_proc = RedisProc(self.workdir / "ledger", appendonly=False)
        self.ledger_proc.start()
        return self.redis.url, self.ledger_proc.url

    def _plan(self) -> None:
        count = max(1, round(self.args.rate * self.load_s))
        entities = self.args.entities
        if entities and not _entities_available():
            self.stats.notes.append("--entities ignored: this engine build has no durable.Entity")
            entities = False
        self.entities = entities
        self.plan = workload.generate(self.args.seed, count, self.load_s, entities=entities)
        self.predictions: dict[str, workload.Prediction] = {}
        self.parent: dict[str, str] = {}
        for p in self.plan:
            self._predict_tree(p.instance_id, p.spec)

    def _predict_tree(self, iid: str, spec: dict[str, Any]) -> None:
        pred = workload.predict(iid, spec)
        self.predictions[iid] = pred
        for cid, cspec in pred.children:
            self.parent[cid] = iid
            self._predict_tree(cid, cspec)

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def now(self) -> float:
        return time.monotonic() - self.t0

    # -- main ------------------------------------------------------------------------------------
    async def main(self) -> int:
        url, ledger_url = await asyncio.to_thread(self._setup_redis)
        self.url, self.ledger_url = url, ledger_url
        self.redis_up.set()
        store = Store.from_url(url, self.hub)
        partitions = await store.ensure_hub(self.args.partitions)
        await store.close()
        self.keys = Keys(self.hub, partitions)
        self._plan()
        env = worker_env(url, self.hub, ledger_url, partitions, self.entities)
        self.pool = WorkerPool(env, self.workdir / "logs")
        self.client = AsyncClient(url, self.hub)
        self.auditor = Auditor(url, self.keys, strict=self.strict)
        self.sync = redis.Redis.from_url(url, socket_timeout=30)
        stop_audit = asyncio.Event()
        try:
            for _ in range(self.args.workers):
                self.pool.spawn()
            await self._wait_leases(60)
            self.t0 = time.monotonic()
            _log(
                f"hub {self.hub}: {len(self.plan)} top-level instances, {len(self.predictions)} with children"
            )
            audit = asyncio.create_task(self.auditor.run(stop_audit, lambda: list(self.acked)))
            monitor = asyncio.create_task(self._monitor())
            self.spawn(self._drive())
            nemesis = asyncio.create_task(self._nemesis())
            progress = asyncio.create_task(self._progress())
            await nemesis
            await self._heal()
            probe_s = await self._probe()
            remaining = await self._wait_all(self.total_s + self.grace_s)
            all_done_s = self.now() - self.stats.last_fault_end
            stop_audit.set()
            await audit
            progress.cancel()
            quiet = await self._quiescence(30)
            monitor.cancel()
            result = await asyncio.to_thread(self._final_checks, remaining, probe_s, all_done_s, quiet)
        finally:
            stop_audit.set()
            for task in list(self.tasks):
                task.cancel()
            if hasattr(self, "pool"):
                self.pool.close()
            with contextlib.suppress(Exception):  # also when setup failed before the client existed
                await self.client.close()
            if self.redis is not None:
                self.redis.kill()
            if self.ledger_proc is not None:
                self.ledger_proc.kill()
        return result

    async def _wait_leases(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            held = await asyncio.to_thread(
                lambda: sum(bool(self.sync.exists(self.keys.lease(p))) for p in range(self.keys.partitions))
            )
            if held == self.keys.partitions:
                return
            await asyncio.sleep(0.1)
        raise RuntimeError("the workers did not take the partitions; see the logs in " + str(self.workdir))

    # -- the client side: starts and events ------------------------------------------------------
    async def _drive(self) -> None:
        for planned in self.plan:
            delay = planned.start_at - self.now()
            if delay > 0:
                await asyncio.sleep(delay)
            self.spawn(self._start(planned.instance_id, planned.spec, planned.event_delays))

    async def _start(self, iid: str, spec: dict[str, Any], event_delays: dict[str, float]) -> None:
        backoff = 0.05
        while True:
            await self.redis_up.wait()
            try:
                await self.client.schedule_new_orchestration(
                    workload.ORCHESTRATOR, input=spec, instance_id=iid
                )
                break
            except OrchestrationAlreadyExistsError:
                break  # an earlier attempt whose reply was lost went through
            except (redis.RedisError, OSError):
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                try:
                    # the reply may have been lost after the start happened: never start twice
                    if await asyncio.to_thread(self.sync.hexists, self.keys.instance(iid), "status"):
                        break
                except (redis.RedisError, OSError):
                    continue
        self.acked[iid] = time.monotonic()
        for name, data in self.predictions[iid].events:
            self.spawn(self._raise(iid, name, data, self.acked[iid] + event_delays.get(name, 0.0)))

    async def _raise(self, iid: str, name: str, data: int, due: float) -> None:
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        backoff = 0.05
        while True:
            await self.redis_up.wait()
            try:
                await self.client.raise_orchestration_event(iid, name, data=data)
                self.acked_events.append((iid, name, data, time.monotonic()))
                return
            except (redis.RedisError, OSError, OrchestrationNotFoundError):
                # not found: its start was lost with the last second (everysec) and is re-sent
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

    # -- the nemesis -----------------------------------------------------------------------------
    async def _nemesis(self) -> None:
        """Faults at seeded random intervals until 80% of the run: first every kind once (in a
        seeded order, so short runs cover them all), then weighted random kinds. Returns right
        after the last fault, so recovery is measured from its end."""
        rng = random.Random(self.args.seed * 7919 + 17)
        last_redis_kill = -1e9
        first_round = [k for k in FAULT_WEIGHTS if self.owned or k != "redis kill -9"]
        rng.shuffle(first_round)
        await asyncio.sleep(max(0.0, 5.0 - self.now()))
        while True:
            kinds = dict(FAULT_WEIGHTS)
            if not self.owned or self.now() - last_redis_kill < 25:
                kinds.pop("redis kill -9")
            if self.target_workers >= self.args.workers + 2:
                kinds.pop("scale up")
            if self.target_workers <= max(1, self.args.workers - 1):
                kinds.pop("graceful SIGTERM")
            kind = first_round.pop() if first_round else rng.choices(list(kinds), list(kinds.values()))[0]
            if await self._inject(kind, rng):
                self.stats.faults[kind] += 1
                self.stats.last_fault_end = self.now()
                if kind == "redis kill -9":
                    last_redis_kill = self.now()
            gap = min(rng.expovariate(1 / self.args.mean_fault_gap), 15.0)
            if self.now() + gap >= self.fault_end_s:
                return
            await asyncio.sleep(gap)

    async def _inject(self, kind: str, rng: random.Random) -> bool:
        up = self.pool.up()
        if kind == "worker SIGKILL":
            if not up:
                return False
            self.pool.kill(rng.choice(up))
            self.respawn_after = time.monotonic() + rng.uniform(0.2, 3.0)  # "the orchestrator restarts it"
        elif kind == "worker SIGSTOP/SIGCONT":
            if not up:
                return False
            victim = rng.choice(up)
            self.pool.pause(victim)
            await asyncio.sleep(rng.uniform(1.0, 2.5) * LEASE_TTL_S)
            self.pool.resume(victim)
        elif kind == "split-brain (lease DEL)":
            p = rng.randrange(self.keys.partitions)
            try:
                deleted = await asyncio.to_thread(self.sync.delete, self.keys.lease(p))
            except (redis.RedisError, OSError):
                return False
            return bool(deleted)
        elif kind == "redis kill -9":
            await self._kill_redis(rng)
        elif kind == "scale up":
            if self.target_workers >= self.args.workers + 2:
                return False
            self.target_workers += 1
            self.pool.spawn()
        elif kind == "graceful SIGTERM":
            if len(up) < 2 or self.target_workers <= 1:
                return False
            victim = rng.choice(up)
            self.target_workers -= 1
            self.pool.terminate(victim)
            self.terminating[victim.number] = time.monotonic()
        return True

    async def _kill_redis(self, rng: random.Random) -> None:
        assert self.redis is not None
        killed_at = time.monotonic()
        self.redis_up.clear()
        self.redis.kill()
        await asyncio.sleep(rng.uniform(0.2, 2.0))
        await asyncio.to_thread(self.redis.start)
        self.auditor.generation += 1
        self.redis_up.set()
        await self._after_redis_restart(killed_at)

    async def _after_redis_restart(self, killed_at: float) -> None:
        """Every acknowledged start must have survived (strict); otherwise re-send what was lost."""
        acked = [iid for iid, t in self.acked.items() if t < killed_at]

        def missing() -> list[str]:
            pipe = self.sync.pipeline(transaction=False)
            for iid in acked:
                pipe.hexists(self.keys.instance(iid), "status")
            return [iid for iid, ok in zip(acked, pipe.execute(), strict=True) if not ok]

        lost = await asyncio.to_thread(missing)
        for iid in lost:
            if self.strict:
                self.stats.violations.append(Finding("lost acknowledged start", iid))
            self.stats.lost_starts.append(iid)
            self.acked.pop(iid, None)
            planned = next((p for p in self.plan if p.instance_id == iid), None)
            if planned is not None:
                self.stats.resubmitted_starts += 1
                self.spawn(self._start(iid, planned.spec, planned.event_delays))
        if not self.strict:
            recent = [e for e in self.acked_events if killed_at - RAISE_AGAIN_WINDOW_S <= e[3] <= killed_at]
            for iid, name, data, _ in recent:
                if iid not in lost:
                    self.stats.reraised_events += 1
                    self.spawn(self._raise(iid, name, data, time.monotonic()))

    async def _monitor(self) -> None:
        """Reap workers, restart killed ones (after their delay) and crashed ones."""
        while True:
            self.pool.reap()
            for w in self.pool.workers:
                started = self.terminating.get(w.number)
                if started is not None and w.state == "terminating" and time.monotonic() - started > 30:
                    self.stats.failures.append(f"worker {w.number} did not stop within 30 s of SIGTERM")
                    self.pool.kill(w)
            alive = [w for w in self.pool.workers if w.state in ("up", "paused")]
            if len(alive) < self.target_workers and time.monotonic() >= self.respawn_after:
                self.pool.spawn()
            await asyncio.sleep(0.1)

    async def _heal(self) -> None:
        for w in self.pool.workers:
            if w.state == "paused":
                self.pool.resume(w)
        self.target_workers = max(self.target_workers, self.args.workers)
        self.respawn_after = 0.0
        await self.redis_up.wait()
        if self.stats.last_fault_end == 0.0:
            self.stats.last_fault_end = self.now()

    async def _probe(self) -> float | None:
        """Seconds from the end of the last fault until a new orchestration completed."""
        iid = f"probe-{self.args.seed}"
        spec = {"steps": [["chain", 3, 1], ["fan", 5, 2]]}
        self.predictions[iid] = workload.predict(iid, spec)
        await self._start(iid, spec, {})
        deadline = self.total_s + self.grace_s
        while self.now() < deadline:
            status = await asyncio.to_thread(self.sync.hget, self.keys.instance(iid), "status")
            if status is not None and status.decode() in TERMINAL:
                return self.now() - self.stats.last_fault_end
            await asyncio.sleep(0.05)
        return None

    async def _progress(self) -> None:
        while True:
            await asyncio.sleep(30)
            faults = sum(self.stats.faults.values())
            _log(
                f"t={self.now():.0f}s started={len(self.acked)} faults={faults} "
                f"workers={len(self.pool.up())} violations so far={len(self.auditor.violations)}"
            )

    async def _wait_all(self, deadline: float) -> set[str]:
        pending = set(self.predictions)
        while pending and self.now() < deadline:
            ids = sorted(pending)

            def statuses(ids: list[str] = ids) -> list[Any]:
                pipe = self.sync.pipeline(transaction=False)
                for iid in ids:
                    pipe.hget(self.keys.instance(iid), "status")
                return list(pipe.execute())

            try:
                for iid, status in zip(ids, await asyncio.to_thread(statuses), strict=True):
                    if status is not None and status.decode() in TERMINAL:
                        pending.discard(iid)
            except (redis.RedisError, OSError):
                pass
            if pending:
                await asyncio.sleep(1.0)
        return pending

    async def _quiescence(self, timeout: float) -> list[str]:
        """After the work is done every partition must drain: outbox forwarded, inbox consumed,
        no activity task left. Returns what is still not drained after ``timeout``."""
        deadline = time.monotonic() + timeout
        problems: list[str] = []
        while time.monotonic() < deadline:
            problems = await asyncio.to_thread(self._drain_problems)
            if not problems:
                return []
            await asyncio.sleep(0.5)
        return problems

    def _drain_problems(self) -> list[str]:
        problems = []
        for p in range(self.keys.partitions):
            if self.sync.xlen(self.keys.outbox(p)):
                problems.append(f"partition {p}: outbox not empty")
            if self.sync.exists(self.keys.inbox(p)):
                last = self.sync.xinfo_stream(self.keys.inbox(p))["last-generated-id"]
                cursor = self.sync.hget(self.keys.state(p), "cursor")
                if last != cursor and self.sync.xlen(self.keys.inbox(p)):
                    problems.append(f"partition {p}: inbox not consumed (cursor {cursor!r}, last {last!r})")
        if self.sync.exists(self.keys.tasks) and self.sync.xlen(self.keys.tasks):
            problems.append(f"{self.sync.xlen(self.keys.tasks)} activity tasks left in the task stream")
        return problems

    # -- the verdict -----------------------------------------------------------------------------
    def _final_checks(
        self, remaining: set[str], probe_s: float | None, all_done_s: float, quiet: list[str]
    ) -> int:
        return Verdict(self).run(remaining, probe_s, all_done_s, quiet)


def _entities_available() -> bool:
    import durable

    return hasattr(durable, "Entity")


def _log(message: str) -> None:
    print(f"[chaos] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = ChaosRun(args)
    _log(f"work folder {run.workdir}")
    code = 2
    try:
        code = asyncio.run(run.main())
    except KeyboardInterrupt:
        _log("interrupted")
    except Exception:
        traceback.print_exc()
        print("chaos harness error (not a verdict on the engine); see the traceback on stderr", flush=True)
    finally:
        if code == 0 and not args.keep and not args.workdir:
            shutil.rmtree(run.workdir, ignore_errors=True)
        else:
            _log(f"kept {run.workdir} (worker logs, redis data, report.json)")
    return code


if __name__ == "__main__":
    sys.exit(main())
