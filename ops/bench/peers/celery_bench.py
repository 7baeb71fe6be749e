"""Celery: a plain task queue; W1 as canvas chains of 5 tasks, W1 raw as plain tasks, W2 as a group."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from _peer import Results, latency_stats, load_config, log, spawn, stop

HERE = Path(__file__).resolve().parent


def main() -> None:
    cfg = load_config()
    os.environ["BENCH_REDIS_URL"] = cfg["redis_url"]
    from celery import chain, group
    from celery_app import noop

    sizes, reps, workloads = cfg["sizes"], cfg["reps"], cfg["workloads"]
    res = Results()
    from benchlib import versions_of

    res.versions = versions_of("celery", "kombu", "redis")
    res.setup = (
        "1 worker (`celery -A celery_app worker`, prefork pool, concurrency = cores = "
        f"{os.cpu_count()}, Celery's defaults otherwise) with Redis as broker and result backend on its "
        "own redis-server (appendonly, everysec); results read with AsyncResult.get in start order"
    )
    worker = spawn(
        [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "--loglevel=WARNING"],
        Path(cfg["workdir"]) / "celery.log",
        env=dict(os.environ),
        cwd=str(HERE),
    )
    try:
        for r in [noop.delay(i) for i in range(20)]:  # warm-up (also waits for the worker)
            r.get(timeout=120)

        def collect(results: list, t0: float) -> tuple[float, list[float]]:
            lats, last = [], t0
            for r in results:
                r.get(timeout=600)
                last = time.perf_counter()
                lats.append(last - t0)
            return last - t0, lats

        if "W1" in workloads:
            n, k = sizes["w1_orchestrations"], sizes["w1_steps"]
            for _ in range(reps):
                t0 = time.perf_counter()
                results = [
                    chain(noop.s(0), *[noop.s() for _ in range(k - 1)]).apply_async() for _ in range(n)
                ]
                wall, lats = collect(results, t0)
                p50, p99 = latency_stats(lats)
                res.add("W1", "steps_s", n * k / wall)
                res.add("W1", "p50_ms", p50)
                res.add("W1", "p99_ms", p99)
                log(f"  celery W1 chains: {n * k / wall:.0f} steps/s")
                t0 = time.perf_counter()
                results = [noop.delay(i) for i in range(n * k)]
                wall, lats = collect(results, t0)
                p50, p99 = latency_stats(lats)
                res.add("W1raw", "jobs_s", n * k / wall)
                res.add("W1raw", "p50_ms", p50)
                res.add("W1raw", "p99_ms", p99)
                log(f"  celery W1 raw: {n * k / wall:.0f} jobs/s")
            res.note(
                "W1",
                "canvas chain of 5 tasks per 'orchestration' (in-broker messaging, no durable "
                "workflow state); latency = start → result seen by get() in start order",
            )
        if "W2" in workloads:
            for _ in range(reps):
                t0 = time.perf_counter()
                group(noop.s(i) for i in range(sizes["w2_fanout"]))().get(timeout=600)
                wall = time.perf_counter() - t0
                res.add("W2", "seconds", wall)
                log(f"  celery W2: {wall:.3f} s")
            res.note("W2", "canvas group of no-op tasks + GroupResult.get()")
        if "W3" in workloads:
            for _ in range(reps):
                lats = []
                for _ in range(sizes["w3_runs"]):
                    s = time.perf_counter()
                    noop.delay(1).get(timeout=60)
                    lats.append(time.perf_counter() - s)
                p50, p99 = latency_stats(lats)
                res.add("W3", "p50_ms", p50)
                res.add("W3", "p99_ms", p99)
                log(f"  celery W3: p50 {p50:.2f} ms p99 {p99:.2f} ms")
            res.note("W3", "one plain task, delay() → get()")
    finally:
        stop(worker)
    res.emit()


if __name__ == "__main__":
    main()
