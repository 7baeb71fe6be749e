"""arq: a plain Redis job queue (no durable workflow state): W1 raw jobs, W2 as 1,000 jobs, W3."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from _peer import Results, latency_stats, load_config, log, spawn, stop
from arq import create_pool
from arq.connections import RedisSettings

HERE = Path(__file__).resolve().parent


async def burst(pool, n: int) -> tuple[float, list[float]]:
    """Enqueue n jobs at once; (wall seconds to the last completion, per-job latencies)."""
    await pool.delete("bench:done")
    t0 = time.time()
    jobs = await asyncio.gather(*(pool.enqueue_job("noop", i) for i in range(n)))
    enqueued = {j.job_id: t0 for j in jobs}
    finished: dict[str, float] = {}
    while len(finished) < n:
        item = await pool.blpop("bench:done", timeout=60)
        if item is None:
            raise TimeoutError(f"only {len(finished)} of {n} arq jobs finished")
        jid, at = item[1].decode().split()
        finished[jid] = float(at)
    wall = max(finished.values()) - t0
    return wall, [finished[j] - enqueued[j] for j in finished]


async def main() -> None:
    cfg = load_config()
    sizes, reps, workloads = cfg["sizes"], cfg["reps"], cfg["workloads"]
    res = Results()
    from benchlib import versions_of

    res.versions = versions_of("arq", "redis")
    res.setup = (
        "1 worker process (`arq arq_app.WorkerSettings`, max_jobs=10, poll_delay=5 ms instead of the "
        "default 0.5 s) on its own redis-server (appendonly, everysec); jobs push their finish time to "
        "a list the driver BLPOPs"
    )
    env = dict(os.environ, BENCH_REDIS_URL=cfg["redis_url"])
    worker = spawn(
        [sys.executable, "-m", "arq", "arq_app.WorkerSettings"],
        Path(cfg["workdir"]) / "arq.log",
        env=env,
        cwd=str(HERE),
    )
    try:
        pool = await create_pool(RedisSettings.from_dsn(cfg["redis_url"]))
        await burst(pool, 20)  # warm-up (also waits for the worker)
        if "W1" in workloads:
            n = sizes["w1_orchestrations"] * sizes["w1_steps"]
            for _ in range(reps):
                wall, lats = await burst(pool, n)
                p50, p99 = latency_stats(lats)
                res.add("W1raw", "jobs_s", n / wall)
                res.add("W1raw", "p50_ms", p50)
                res.add("W1raw", "p99_ms", p99)
                log(f"  arq W1 raw: {n / wall:.0f} jobs/s")
            res.note("W1", "arq has no workflows; see the raw-queue row (plain jobs)")
        if "W2" in workloads:
            for _ in range(reps):
                wall, _ = await burst(pool, sizes["w2_fanout"])
                res.add("W2", "seconds", wall)
                log(f"  arq W2: {wall:.3f} s")
            res.note("W2", f"{sizes['w2_fanout']} independent jobs enqueued at once (no parent workflow)")
        if "W3" in workloads:
            for _ in range(reps):
                lats = []
                for _ in range(sizes["w3_runs"]):
                    s = time.perf_counter()
                    await pool.enqueue_job("noop", 1)
                    await pool.blpop("bench:done", timeout=60)
                    lats.append(time.perf_counter() - s)
                p50, p99 = latency_stats(lats)
                res.add("W3", "p50_ms", p50)
                res.add("W3", "p99_ms", p99)
                log(f"  arq W3: p50 {p50:.2f} ms p99 {p99:.2f} ms")
            res.note("W3", "one plain job, enqueue → completion")
        await pool.aclose()
    finally:
        stop(worker)
    res.emit()


if __name__ == "__main__":
    asyncio.run(main())
