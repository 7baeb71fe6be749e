"""The durable side of the benchmark: workloads W1-W7 against redis-servers started here.

Each workload gets a fresh redis-server (``durable._embedded.EmbeddedRedis``, its own data folder
and port) configured for the durability profile, and worker subprocesses running
``durable_app.py``. The load comes from this process through the public ``AsyncClient``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import redis
from benchlib import Results, cpu_seconds, latency_stats, log, rss_bytes, spawn, stop
from costs import ClusterRedis, measure_burst
from sync_client import w1_sync

from durable import AsyncClient, Client, OrchestrationStatus, WorkerConfig
from durable._embedded import EmbeddedRedis
from durable._store.keys import HubKeys, partition_of

HERE = Path(__file__).resolve().parent
APP = HERE / "durable_app.py"
HAS_ENTITIES = hasattr(Client, "signal_entity")
HAS_BATCH = hasattr(Client, "signal_entities")
#: whether the engine has durability profiles of its own (WorkerConfig.durability)
HAS_DURABILITY = "durability" in getattr(WorkerConfig, "__dataclass_fields__", {})
T = TypeVar("T")

PROFILES = {
    # fast: the engine's default for development; up to ~1 s of acknowledged writes can be lost
    "fast": {"appendonly": True, "appendfsync": "everysec"},
    # strict: every write is fsynced before Redis replies (WAIT/WAITAOF is not built yet)
    "strict": {"appendonly": True, "appendfsync": "always"},
}


@dataclass
class Sizes:
    w1_orchestrations: int
    w1_steps: int
    w2_fanout: int
    w3_runs: int
    w4_signals: int
    w4_entities: int
    w4_clients: int
    w5_steps: tuple[int, ...]
    w6_instances: int
    w6_completed: int
    w7_workers: tuple[int, ...]
    w7_orchestrations: int
    #: W7 also runs W1 on a 3-node Redis Cluster (one worker) against standalone
    w7_cluster: bool = True

    @classmethod
    def full(cls) -> Sizes:
        return cls(500, 5, 1000, 200, 20_000, 1000, 4, (1000, 5000, 20_000), 100_000, 1000, (1, 2, 4, 8), 500)

    @classmethod
    def quick(cls) -> Sizes:
        return cls(100, 5, 200, 50, 2000, 100, 2, (50, 200, 1000), 5000, 200, (1, 2), 100)


def _run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(coro_fn())  # type: ignore[arg-type]


class Cluster:
    """One redis-server (or, with ``nodes``, a Redis Cluster of that many primaries) plus N worker
    processes of one hub."""

    def __init__(
        self, workdir: Path, profile: str, name: str, *, cache_size: int | None = None, nodes: int = 0
    ) -> None:
        self.dir = workdir / f"{name}-{profile}-{uuid.uuid4().hex[:6]}"
        self.profile = profile
        self.hub = "bench"
        self.cache_size = cache_size
        self.redis: EmbeddedRedis | ClusterRedis = (
            ClusterRedis(self.dir / "redis", nodes, **PROFILES[profile])  # type: ignore[arg-type]
            if nodes
            else EmbeddedRedis(self.dir / "redis", **PROFILES[profile])  # type: ignore[arg-type]
        )
        self.workers: list[tuple[subprocess.Popen[Any], Path]] = []

    @property
    def redis_pids(self) -> list[int]:
        return self.redis.pids if isinstance(self.redis, ClusterRedis) else [self.redis.pid]

    @property
    def redis_urls(self) -> list[str]:
        return self.redis.urls if isinstance(self.redis, ClusterRedis) else [self.redis.url]

    @property
    def url(self) -> str:
        return self.redis.url

    @property
    def client_url(self) -> str:
        # many concurrent waits each hold a pub/sub connection; the default pool stops at 100
        return self.url + "?max_connections=5000"

    def __enter__(self) -> Cluster:
        self.redis.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_workers()
        try:
            self.redis.stop()
        except Exception:
            self.redis.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def start_workers(self, n: int, *, wait: bool = True) -> None:
        for _ in range(n):
            i = len(self.workers)
            status = self.dir / f"worker{i}.json"
            env = dict(os.environ)
            env.update(DURABLE_REDIS_URL=self.url, DURABLE_HUB=self.hub, BENCH_STATUS_FILE=str(status))
            if self.cache_size:
                env["BENCH_CACHE_SIZE"] = str(self.cache_size)
            if HAS_DURABILITY:
                env["DURABLE_DURABILITY"] = self.profile
            proc = spawn([sys.executable, str(APP), "worker"], self.dir / f"worker{i}.log", env=env)
            self.workers.append((proc, status))
        if wait:
            self.wait_balanced()

    def stop_workers(self) -> None:
        for proc, _ in self.workers:
            stop(proc, timeout=40)
        self.workers.clear()

    def status(self) -> list[dict[str, Any]]:
        out = []
        for proc, path in self.workers:
            if proc.poll() is not None:
                raise RuntimeError(f"worker {proc.pid} exited with code {proc.returncode}; see {path.parent}")
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                out.append({})
        return out

    def wait_balanced(self, timeout: float = 60) -> None:
        """Until the workers hold all partitions between them, each some, for 1 s unchanged."""
        deadline = time.monotonic() + timeout
        stable_since: float | None = None
        last: list[float] | None = None
        while time.monotonic() < deadline:
            owned = [s.get("partitions_owned", 0.0) for s in self.status()]
            ok = sum(owned) == 32 and all(o > 0 for o in owned)
            if ok and owned == last:
                stable_since = stable_since or time.monotonic()
                if time.monotonic() - stable_since >= 1.0:
                    return
            else:
                stable_since = None
            last = owned
            time.sleep(0.1)
        raise TimeoutError(f"workers did not balance the partitions: {self.status()}")

    def worker_pids(self) -> list[int]:
        return [p.pid for p, _ in self.workers]


# -- the workloads ------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def connect(url: str, hub: str) -> AsyncIterator[AsyncClient]:
    """An AsyncClient that has made its first call before the load starts.

    Concurrent first calls on a fresh AsyncClient each create their own store and connection
    pool (a race in ``_get_store``); one call up front keeps the measurement to steady state.
    """
    async with AsyncClient(url, hub=hub) as client:
        await client.get_orchestration_state("bench-warm-up")
        yield client


async def _start_and_wait(client: AsyncClient, name: str, inp: Any, timeout: float) -> tuple[float, float]:
    """(latency s, completion perf_counter) of one orchestration, observed by the client."""
    began = time.perf_counter()
    iid = await client.schedule_new_orchestration(name, input=inp)
    state = await client.wait_for_orchestration_completion(iid, timeout=timeout)
    done = time.perf_counter()
    if state.runtime_status != OrchestrationStatus.COMPLETED:
        raise RuntimeError(f"{name} {iid} ended {state.runtime_status}: {state.failure_details}")
    return done - began, done


async def _burst(url: str, hub: str, count: int, steps: int) -> tuple[float, float, float]:
    """W1 once: ``count`` chains of ``steps`` started at once; (steps/s, p50 ms, p99 ms)."""
    async with connect(url, hub) as client:
        t0 = time.perf_counter()
        res = await asyncio.gather(*(_start_and_wait(client, "chain", steps, 600) for _ in range(count)))
        wall = max(done for _, done in res) - t0
        p50, p99 = latency_stats([lat for lat, _ in res])
        return count * steps / wall, p50, p99


def _warm(cluster: Cluster) -> None:
    _burst_sync(cluster, 20, 2)


def _burst_sync(cluster: Cluster, count: int, steps: int) -> tuple[float, float, float]:
    return _run(lambda: _burst(cluster.client_url, cluster.hub, count, steps))


def w1(cluster: Cluster, res: Results, sizes: Sizes, reps: int, key: str = "W1") -> None:
    for _ in range(reps):
        m = measure_burst(
            cluster.worker_pids(),
            cluster.redis_pids,
            cluster.redis_urls,
            lambda: _burst_sync(cluster, sizes.w1_orchestrations, sizes.w1_steps),
            sizes.w1_orchestrations * sizes.w1_steps,
        )
        for metric, value in m.items():
            if metric != "redis_max_node_cpu_ms_per_step":
                res.add(key, metric, value)
        log(
            f"  {key}: {m['steps_s']:.0f} steps/s, p50 {m['p50_ms']:.0f} ms, p99 {m['p99_ms']:.0f} ms; "
            f"CPU ms/step worker {m['worker_cpu_ms_per_step']:.3f}, Redis {m['redis_cpu_ms_per_step']:.3f}; "
            f"{m['commands_per_step']:.1f} Redis commands, "
            f"{m['net_in_bytes_per_step'] + m['net_out_bytes_per_step']:.0f} bytes per step"
        )


def w2(cluster: Cluster, res: Results, sizes: Sizes, reps: int) -> None:
    async def once() -> float:
        async with connect(cluster.client_url, cluster.hub) as client:
            lat, _ = await _start_and_wait(client, "fan", sizes.w2_fanout, 600)
            return lat

    for _ in range(reps):
        seconds = _run(once)
        res.add("W2", "seconds", seconds)
        log(f"  W2: fan-out/in of {sizes.w2_fanout}: {seconds:.3f} s")


def w3(cluster: Cluster, res: Results, sizes: Sizes, reps: int) -> None:
    async def once() -> tuple[float, float]:
        async with connect(cluster.client_url, cluster.hub) as client:
            lats = []
            for _ in range(sizes.w3_runs):
                lat, _ = await _start_and_wait(client, "chain", 1, 60)
                lats.append(lat)
            return latency_stats(lats)

    for _ in range(reps):
        p50, p99 = _run(once)
        res.add("W3", "p50_ms", p50)
        res.add("W3", "p99_ms", p99)
        log(f"  W3: p50 {p50:.2f} ms, p99 {p99:.2f} ms")


def w5(cluster: Cluster, res: Results, sizes: Sizes, reps: int) -> None:
    async def once(n: int) -> float:
        async with connect(cluster.client_url, cluster.hub) as client:
            lat, _ = await _start_and_wait(client, "chain", n, 3600)
            return lat

    for _ in range(reps):
        per_step: dict[int, float] = {}
        for n in sizes.w5_steps:
            per_step[n] = _run(lambda n=n: once(n)) / n * 1000  # type: ignore[misc]
            res.add("W5", f"ms_per_step_{n}", per_step[n])
        lo, hi = sizes.w5_steps[0], sizes.w5_steps[-1]
        res.add("W5", "ratio", per_step[hi] / per_step[lo])
        log("  W5: " + ", ".join(f"{n}: {v:.3f} ms/step" for n, v in per_step.items()))


def _count_entity_signals(sizes: Sizes) -> dict[int, int]:
    expected: dict[int, int] = {}
    for i in range(sizes.w4_signals):
        expected[i % sizes.w4_entities] = expected.get(i % sizes.w4_entities, 0) + 1
    return expected


async def _wait_counts(
    url: str, hub: str, expected: dict[int, int], timeout: float, probes: list[int] | None = None
) -> float:
    """Poll the counters until each reads its expected value; returns the perf_counter then.

    The poll shares the 2 cores with the system it measures, so it is kept cheap: while the
    ``probes`` (counters that the last signals sent went to) are short of their counts it reads
    only them; then it reads every counter still short, until none is."""
    from durable_app import entity_id, entity_value

    pending = set(expected)
    sem = asyncio.Semaphore(50)  # a bounded poll: 1,000 connects at once overwhelm accept()

    async def read(k: int) -> Any:
        async with sem:
            return await client.get_entity(entity_id(k))

    async def poll(keys: list[int]) -> None:
        metas = await asyncio.gather(*(read(k) for k in keys))
        for k, meta in zip(keys, metas, strict=True):
            if (entity_value(meta) or 0) >= expected[k]:
                pending.discard(k)

    async with connect(url, hub) as client:
        deadline = time.monotonic() + timeout
        first = sorted(set(probes or ()) & pending)
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} entities did not reach their counts")
            first = [k for k in first if k in pending]
            await poll(first or sorted(pending))
            if pending:
                await asyncio.sleep(0.02 if first else 0.1)
    return time.perf_counter()


def _signal_procs(cluster: Cluster, sizes: Sizes, base: int, batch: int = 1) -> list[subprocess.Popen[Any]]:
    """Start the W4 client processes and wait until each is connected and ready."""
    per_client = sizes.w4_signals // sizes.w4_clients
    procs = []
    for c in range(sizes.w4_clients):
        args = [sys.executable, str(APP), "signal", "--url", cluster.url, "--hub", cluster.hub]
        args += ["--first", str(base + c * per_client), "--count", str(per_client)]
        args += ["--entities", str(sizes.w4_entities), "--batch", str(batch)]
        procs.append(
            spawn(args, cluster.dir / f"signal{c}.log", stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        )
    for p in procs:
        line = p.stdout.readline().decode().strip()  # type: ignore[union-attr]
        if line != "ready":
            for q in procs:
                stop(q)
            raise RuntimeError(f"signal client failed to start (said {line!r}); see {cluster.dir}")
    return procs


def _probes(sizes: Sizes, base: int) -> list[int]:
    """The counters the last 16 signals of each client process go to."""
    per_client = sizes.w4_signals // sizes.w4_clients
    last = [base + (c + 1) * per_client - 1 - j for c in range(sizes.w4_clients) for j in range(16)]
    return sorted({i % sizes.w4_entities for i in last})


def _go(procs: list[subprocess.Popen[Any]]) -> None:
    for p in procs:
        p.stdin.write(b"go\n")  # type: ignore[union-attr]
        p.stdin.flush()  # type: ignore[union-attr]


def _sent(procs: list[subprocess.Popen[Any]]) -> tuple[float, float]:
    """Wait for the client processes; (the longest time one took to send its signals, the CPU
    seconds they used between them to send)."""
    sent, cpu = [], 0.0
    try:
        for p in procs:
            out = p.stdout.readline().decode().split()  # type: ignore[union-attr]
            ok = out[:1] == ["done"]
            sent.append(float(out[1]) if ok else float("nan"))
            cpu += float(out[2]) if ok and len(out) > 2 else float("nan")
            p.wait(60)
    finally:
        for p in procs:
            stop(p)
    return max(sent), cpu


#: signals per ``signal_entities`` call in the batch variant of W4
W4_BATCH = 64


def w4(cluster: Cluster, res: Results, sizes: Sizes, reps: int) -> None:
    """W4: the 4 client processes signal (``signal_entity``, 64 calls in flight each; then
    ``signal_entities``, 64 signals a call) while one worker applies; then a queued backlog is
    drained by one worker alone. Records rates, and CPU per signal of each side."""
    timeout = max(60.0, sizes.w4_signals / 100)
    per_entity = _count_entity_signals(sizes)
    pids = [*cluster.worker_pids(), cluster.redis.pid]
    variants = [("", 1)] + ([("_batch", W4_BATCH)] if HAS_BATCH else [])
    rounds = 0
    for suffix, batch in variants:
        for _ in range(reps):
            base = rounds * sizes.w4_signals  # counters keep counting across repetitions
            rounds += 1
            expected = {k: v * rounds for k, v in per_entity.items()}
            procs = _signal_procs(cluster, sizes, base, batch)
            cpu0 = [cpu_seconds(p) for p in pids]
            try:
                t0 = time.perf_counter()
                _go(procs)
                t_end = asyncio.run(
                    _wait_counts(cluster.client_url, cluster.hub, expected, timeout, _probes(sizes, base))
                )
            finally:
                sent, client_cpu = _sent(procs)
            worker_cpu, redis_cpu = (cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True))
            ops = sizes.w4_signals / (t_end - t0)
            us = 1e6 / sizes.w4_signals
            res.add("W4", f"ops_s{suffix}", ops)
            res.add("W4", f"send_s{suffix}", sizes.w4_signals / sent)
            res.add("W4", f"client_us{suffix}", client_cpu * us)
            res.add("W4", f"worker_us{suffix}", worker_cpu * us)
            res.add("W4", f"redis_us{suffix}", redis_cpu * us)
            log(
                f"  W4{suffix}: {ops:.0f} ops/s "
                f"(the clients sent theirs at {sizes.w4_signals / sent:.0f}/s); "
                f"CPU per signal: clients {client_cpu * us:.1f} us, worker {worker_cpu * us:.1f} us, "
                f"Redis {redis_cpu * us:.1f} us"
            )
    # The engine's side alone: the same signals queued while no worker runs, then one worker
    # started and timed from the moment it holds all partitions until every counter is right.
    cluster.stop_workers()
    base = rounds * sizes.w4_signals
    expected = {k: v * (rounds + 1) for k, v in per_entity.items()}
    procs = _signal_procs(cluster, sizes, base)
    _go(procs)
    _sent(procs)
    cluster.start_workers(1, wait=False)
    deadline = time.monotonic() + 120
    while sum(st.get("partitions_owned", 0.0) for st in cluster.status()) < 32:
        if time.monotonic() > deadline:
            raise TimeoutError("the worker did not take its partitions")
        time.sleep(0.02)
    pids = [*cluster.worker_pids(), cluster.redis.pid]
    cpu0 = [cpu_seconds(p) for p in pids]
    t0 = time.perf_counter()
    t_end = asyncio.run(
        _wait_counts(cluster.client_url, cluster.hub, expected, timeout, _probes(sizes, base))
    )
    worker_us, redis_us = (
        (cpu_seconds(p) - c) * 1e6 / sizes.w4_signals for p, c in zip(pids, cpu0, strict=True)
    )
    drain = sizes.w4_signals / (t_end - t0)
    res.add("W4", "drain_ops_s", drain)
    res.add("W4", "drain_worker_us", worker_us)
    res.add("W4", "drain_redis_us", redis_us)
    log(
        f"  W4: a worker applied {sizes.w4_signals} queued signals at {drain:.0f} ops/s; "
        f"CPU per signal: worker {worker_us:.1f} us, Redis {redis_us:.1f} us"
    )


def _key_bytes(r: redis.Redis, keys: list[str]) -> int:
    pipe = r.pipeline(transaction=False)
    for k in keys:
        pipe.memory_usage(k, samples=0)
    return sum(int(v or 0) for v in pipe.execute())


def _dataset_bytes(r: redis.Redis) -> int:
    """Redis memory used by keys and values (used_memory less client, AOF and other overhead)."""
    stats = r.memory_stats()
    return int(stats.get("dataset.bytes", stats.get(b"dataset.bytes", 0)))


def _instance_keys(hub: str, partitions: int, iid: str) -> list[str]:
    pk = HubKeys(hub).partition(partition_of(iid, partitions))
    return [pk.instance(iid), pk.history(iid)]


def w6(workdir: Path, res: Results, sizes: Sizes, profile: str) -> None:
    """Footprint: Redis bytes per idle instance and entity; worker RSS with many cached instances."""
    with Cluster(workdir, profile, "w6", cache_size=sizes.w6_instances + 10_000) as cluster:
        cluster.start_workers(1)
        _warm(cluster)
        r = redis.Redis.from_url(cluster.url)
        partitions = int(r.hget(HubKeys(cluster.hub).meta, "partitions") or 32)

        async def start_many(name: str, n: int, inp: Any) -> list[str]:
            async with connect(cluster.client_url, cluster.hub) as client:
                sem = asyncio.Semaphore(200)

                async def one() -> str:
                    async with sem:
                        return await client.schedule_new_orchestration(name, input=inp)

                return list(await asyncio.gather(*(one() for _ in range(n))))

        async def wait_done(ids: list[str]) -> None:
            async with connect(cluster.client_url, cluster.hub) as client:
                sem = asyncio.Semaphore(200)

                async def one(iid: str) -> None:
                    async with sem:
                        await client.wait_for_orchestration_completion(iid, timeout=600)

                await asyncio.gather(*(one(i) for i in ids))

        # completed instances: one activity each (like W3)
        done_ids = _run(lambda: start_many("chain", sizes.w6_completed, 1))
        _run(lambda: wait_done(done_ids))
        completed = [_key_bytes(r, _instance_keys(cluster.hub, partitions, i)) for i in done_ids]
        res.add("W6", "bytes_completed", sum(completed) / len(completed))

        # waiting instances: each waits for an external event, all held in the worker's cache
        cluster_status = cluster.status()[0]
        rss_before = cluster_status.get("rss") or rss_bytes(cluster.worker_pids()[0])
        cache_before = cluster_status.get("cache_size", 0)
        started_before = cluster_status.get("started", 0)
        time.sleep(1.0)  # let the completed runs' stream entries be trimmed first
        mem_before = _dataset_bytes(r)
        t0 = time.perf_counter()
        wait_ids = _run(lambda: start_many("waiter", sizes.w6_instances, None))
        deadline = time.monotonic() + 1800
        while True:
            st = cluster.status()[0]
            if st.get("started", 0) - started_before >= sizes.w6_instances:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {st.get('started')} waiting orchestrations started")
            time.sleep(0.5)
        started_s = time.perf_counter() - t0
        time.sleep(2.0)  # let the last commits and the status report settle
        st = cluster.status()[0]
        rss_after = rss_bytes(cluster.worker_pids()[0])
        mem_after = _dataset_bytes(r)
        sample = wait_ids[:: max(1, len(wait_ids) // 1000)]
        waiting = [_key_bytes(r, _instance_keys(cluster.hub, partitions, i)) for i in sample]
        res.add("W6", "bytes_waiting", sum(waiting) / len(waiting))
        res.add("W6", "used_memory_per_waiting", (mem_after - mem_before) / sizes.w6_instances)
        res.add("W6", "worker_rss_mb", rss_after / 2**20)
        res.add(
            "W6",
            "rss_per_cached",
            (rss_after - rss_before) / max(1.0, st.get("cache_size", 0) - cache_before),
        )
        res.add("W6", "cached", st.get("cache_size", 0))
        log(
            f"  W6: completed {sum(completed) / len(completed):.0f} B, waiting "
            f"{sum(waiting) / len(waiting):.0f} B (dataset "
            f"{(mem_after - mem_before) / sizes.w6_instances:.0f} B), worker RSS {rss_after / 2**20:.0f} MiB "
            f"with {st.get('cache_size', 0):.0f} cached "
            f"(started {sizes.w6_instances} in {started_s:.1f} s)"
        )

        if HAS_ENTITIES:
            from durable_app import entity_id, entity_value

            async def touch_entities(n: int) -> None:
                async with connect(cluster.client_url, cluster.hub) as client:
                    sem = asyncio.Semaphore(50)

                    async def signal(k: int) -> None:
                        async with sem:
                            await client.signal_entity(entity_id(f"idle{k}"), "add", input=1)

                    await asyncio.gather(*(signal(k) for k in range(n)))
                    deadline = time.monotonic() + 60
                    for k in range(n):
                        while True:
                            if (entity_value(await client.get_entity(entity_id(f"idle{k}"))) or 0) >= 1:
                                break
                            if time.monotonic() > deadline:
                                raise TimeoutError("entities were not created")
                            await asyncio.sleep(0.05)

            n = 1000
            _run(lambda: touch_entities(n))
            state_keys, control_keys = [], []
            for k in range(n):
                eid = str(entity_id(f"idle{k}"))
                pk = HubKeys(cluster.hub).partition(partition_of(eid, partitions))
                state_keys.append(pk.entity(eid))
                control_keys.append(pk.entity_control(eid) if hasattr(pk, "entity_control") else None)
            state = _key_bytes(r, state_keys)
            control = _key_bytes(r, [k for k in control_keys if k])
            if state == 0:
                res.note("W6", "entity keys not found under the documented key layout; entity bytes n/a")
            else:
                res.add("W6", "bytes_entity", state / n)
                res.add("W6", "bytes_entity_control", (state + control) / n)
                log(
                    f"  W6: idle counter entity {state / n:.0f} B (state hash), "
                    f"{(state + control) / n:.0f} B with its de-duplication hash"
                )
        r.close()


# -- the plan -----------------------------------------------------------------------------------
def run_profile(
    workdir: Path, profile: str, sizes: Sizes, reps: int, workloads: set[str], res: Results
) -> None:
    """W1, W2, W3 and W5 share one cluster (one worker); W4 gets its own."""
    previous = os.environ.get("DURABLE_DURABILITY")
    if HAS_DURABILITY:
        os.environ["DURABLE_DURABILITY"] = profile  # read by the clients of this process
    try:
        _run_profile(workdir, profile, sizes, reps, workloads, res)
    finally:
        if previous is None:
            os.environ.pop("DURABLE_DURABILITY", None)
        else:
            os.environ["DURABLE_DURABILITY"] = previous


def _run_profile(
    workdir: Path, profile: str, sizes: Sizes, reps: int, workloads: set[str], res: Results
) -> None:
    if workloads & {"W1", "W2", "W3", "W5"}:
        with Cluster(workdir, profile, "main") as cluster:
            cluster.start_workers(1)
            _warm(cluster)
            if "W1" in workloads:
                log(f"durable/{profile}: W1 chain {sizes.w1_orchestrations} x {sizes.w1_steps}")
                w1(cluster, res, sizes, reps)
                w1_sync(cluster, res, sizes, reps)
            if "W2" in workloads:
                log(f"durable/{profile}: W2 fan-out {sizes.w2_fanout}")
                w2(cluster, res, sizes, reps)
            if "W3" in workloads:
                log(f"durable/{profile}: W3 latency x{sizes.w3_runs}")
                w3(cluster, res, sizes, reps)
            if "W5" in workloads:
                log(f"durable/{profile}: W5 long histories {sizes.w5_steps}")
                w5(cluster, res, sizes, reps)
    if "W4" in workloads:
        if not HAS_ENTITIES:
            res.note("W4", "entities are not in the engine yet (Client has no signal_entity)")
            log(f"durable/{profile}: W4 skipped: entities are not in the engine yet")
        else:
            with Cluster(workdir, profile, "w4") as cluster:
                cluster.start_workers(1)
                _warm(cluster)
                log(
                    f"durable/{profile}: W4 {sizes.w4_signals} signals over {sizes.w4_entities} entities "
                    f"from {sizes.w4_clients} processes"
                )
                try:
                    w4(cluster, res, sizes, reps)
                except Exception as exc:  # the entity API is new: report, don't abort the run
                    res.note("W4", f"failed: {type(exc).__name__}: {exc}")
                    log(f"  W4 failed: {type(exc).__name__}: {exc}")
                    traceback.print_exc()


def run_w6(workdir: Path, profile: str, sizes: Sizes, res: Results) -> None:
    log(f"durable/{profile}: W6 footprint ({sizes.w6_instances} waiting instances)")
    w6(workdir, res, sizes, profile)
