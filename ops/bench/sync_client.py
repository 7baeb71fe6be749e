"""W1 from the synchronous ``Client``, as a new user writes it: the chains started one after
another, then waited for one after another (most waits find their instance finished, so the run
is bound by the worker and by one round trip per call, not by the client's concurrency)."""

from __future__ import annotations

import math
import time
from typing import Any

from benchlib import Results, log
from costs import measure_burst

from durable import Client, OrchestrationStatus

SIDES = ("client", "worker", "redis")


def _sequential_sync(url: str, hub: str, count: int, steps: int) -> tuple[float, float, float]:
    """W1 from the synchronous Client as a new user writes it: ``count`` starts one after another,
    then ``count`` waits one after another; (activity steps/s, nan, nan: no per-run latency)."""
    with Client(url, hub=hub) as client:
        client.get_orchestration_state("bench-warm-up")
        t0 = time.perf_counter()
        ids = [client.schedule_new_orchestration("chain", input=steps) for _ in range(count)]
        for state in [client.wait_for_orchestration_completion(iid, timeout=600) for iid in ids]:
            if state.runtime_status != OrchestrationStatus.COMPLETED:
                raise RuntimeError(f"chain {state.instance_id} ended {state.runtime_status}")
        return count * steps / (time.perf_counter() - t0), math.nan, math.nan


def w1_sync(cluster: Any, res: Results, sizes: Any, reps: int, key: str = "W1sync") -> None:
    n, steps = sizes.w1_orchestrations, sizes.w1_steps
    for _ in range(reps):
        m = measure_burst(
            cluster.worker_pids(),
            cluster.redis_pids,
            cluster.redis_urls,
            lambda: _sequential_sync(cluster.url, cluster.hub, n, steps),
            n * steps,
        )
        for metric in ("steps_s", "commands_per_step", *(f"{s}_cpu_ms_per_step" for s in SIDES)):
            res.add(key, metric, m[metric])
        log(
            f"  {key}: {m['steps_s']:.0f} steps/s; CPU ms/step client {m['client_cpu_ms_per_step']:.3f}, "
            f"worker {m['worker_cpu_ms_per_step']:.3f}, Redis {m['redis_cpu_ms_per_step']:.3f}; "
            f"{m['commands_per_step']:.1f} Redis commands per step"
        )
