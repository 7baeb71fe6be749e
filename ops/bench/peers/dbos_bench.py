"""DBOS: an in-process library checkpointing workflows and steps to PostgreSQL.

Workflows are ``@DBOS.workflow`` functions whose no-op activities are ``@DBOS.step`` functions;
they run in this process (DBOS has no separate worker), on a fresh database per run. W2 uses
the documented fan-out: a parent workflow enqueues one child workflow per unit on a DBOS queue
and waits for their handles.
"""

from __future__ import annotations

import time
from typing import Any

from _peer import Results, latency_stats, load_config, log
from dbos import DBOS

cfg = load_config()
DBOS(config={"name": "bench", "system_database_url": cfg["database_url"], "log_level": "WARNING"})
_queue: Any = None


@DBOS.step()
def noop(x: Any) -> Any:
    return x


@DBOS.workflow()
def chain_wf(n: int) -> int:
    for i in range(n):
        noop(i)
    return n


@DBOS.workflow()
def unit_wf(i: int) -> Any:
    return noop(i)


@DBOS.workflow()
def fan_wf(n: int) -> int:
    handles = [_queue.enqueue(unit_wf, i) for i in range(n)]
    return len([h.get_result() for h in handles])


def main() -> None:
    global _queue
    sizes, reps, workloads = cfg["sizes"], cfg["reps"], cfg["workloads"]
    res = Results()
    from benchlib import versions_of

    res.versions = versions_of("dbos", "psycopg")
    res.setup = (
        "in-process (`DBOS.launch()`; workflows run in the benchmark process, DBOS's architecture), "
        "system database on the local PostgreSQL (a fresh database per run, PostgreSQL's durable "
        "defaults); W1/W3 via `DBOS.start_workflow` + `handle.get_result()`, W2 via a DBOS queue "
        "(`DBOS.register_queue`, defaults)"
    )
    DBOS.launch()
    _queue = DBOS.register_queue("fan")
    try:
        for h in [DBOS.start_workflow(chain_wf, 1) for _ in range(20)]:  # warm-up
            h.get_result()
        if "W1" in workloads:
            n, k = sizes["w1_orchestrations"], sizes["w1_steps"]
            for _ in range(reps):
                t0 = time.perf_counter()
                started = []
                for _ in range(n):
                    s = time.perf_counter()
                    started.append((s, DBOS.start_workflow(chain_wf, k)))
                lats, last = [], t0
                for s, h in started:
                    h.get_result()
                    last = time.perf_counter()
                    lats.append(last - s)
                p50, p99 = latency_stats(lats)
                res.add("W1", "steps_s", n * k / (last - t0))
                res.add("W1", "p50_ms", p50)
                res.add("W1", "p99_ms", p99)
                log(f"  dbos W1: {n * k / (last - t0):.0f} steps/s, p50 {p50:.0f} ms")
            res.note(
                "W1",
                "DBOS.start_workflow blocks until the workflow is recorded, so the starts are spread "
                "over the run; latency = start call → get_result() in start order",
            )
        if "W2" in workloads:
            for _ in range(reps):
                t0 = time.perf_counter()
                DBOS.start_workflow(fan_wf, sizes["w2_fanout"]).get_result()
                wall = time.perf_counter() - t0
                res.add("W2", "seconds", wall)
                log(f"  dbos W2: {wall:.3f} s")
        if "W3" in workloads:
            for _ in range(reps):
                lats = []
                for _ in range(sizes["w3_runs"]):
                    s = time.perf_counter()
                    DBOS.start_workflow(chain_wf, 1).get_result()
                    lats.append(time.perf_counter() - s)
                p50, p99 = latency_stats(lats)
                res.add("W3", "p50_ms", p50)
                res.add("W3", "p99_ms", p99)
                log(f"  dbos W3: p50 {p50:.2f} ms p99 {p99:.2f} ms")
    finally:
        DBOS.destroy()
    res.emit()


if __name__ == "__main__":
    main()
