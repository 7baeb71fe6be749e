"""Restate: restate-server (from the npm package) + the Python SDK endpoint served by hypercorn."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import httpx
from _peer import Results, latency_stats, load_config, log, spawn, stop
from benchlib import free_port, versions_of, wait_port

HERE = Path(__file__).resolve().parent


async def call(http: httpx.AsyncClient, base: str, handler: str, arg: int) -> tuple[float, float]:
    s = time.perf_counter()
    r = await http.post(f"{base}/Bench/{handler}", json=arg)
    r.raise_for_status()
    done = time.perf_counter()
    return done - s, done


async def main() -> None:
    cfg = load_config()
    sizes, reps, workloads = cfg["sizes"], cfg["reps"], cfg["workloads"]
    workdir = Path(cfg["workdir"])
    res = Results()
    res.versions = versions_of("restate-sdk", "hypercorn", "httpx")
    ingress, admin, fabric, endpoint = free_port(), free_port(), free_port(), free_port()
    conf = workdir / "restate.toml"
    conf.write_text(
        f'base-dir = "{workdir / "restate-data"}"\n'
        f'bind-address = "127.0.0.1:{fabric}"\n'
        "disable-telemetry = true\n"
        f'[ingress]\nbind-address = "127.0.0.1:{ingress}"\n'
        f'[admin]\nbind-address = "127.0.0.1:{admin}"\n'
    )
    server_version = subprocess.run(
        [cfg["restate_server"], "--version"], capture_output=True, text=True, timeout=30
    ).stdout.strip()
    res.versions["restate-server"] = server_version
    res.setup = (
        f"{server_version} (single node, its defaults: durable log with fsync) + the Python SDK endpoint "
        "on hypercorn (1 process, HTTP/2); invocations through the HTTP ingress with httpx "
        "(HTTP/1.1, up to 1,000 connections); steps are `ctx.run_typed`, W2 uses `ctx.service_call` + "
        "`restate.gather`"
    )
    server = spawn([cfg["restate_server"], "--config-file", str(conf), "--no-logo"], workdir / "restate.log")
    app = spawn(
        [
            sys.executable,
            "-m",
            "hypercorn",
            "restate_app:app",
            "--bind",
            f"127.0.0.1:{endpoint}",
            "--log-level",
            "warning",
        ],
        workdir / "hypercorn.log",
        cwd=str(HERE),
    )
    try:
        wait_port(admin, 120, proc=server)
        wait_port(ingress, 120, proc=server)
        wait_port(endpoint, 60, proc=app)
        async with httpx.AsyncClient(
            timeout=600, limits=httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
        ) as http:
            for _ in range(60):
                r = await http.post(
                    f"http://127.0.0.1:{admin}/deployments", json={"uri": f"http://127.0.0.1:{endpoint}"}
                )
                if r.status_code < 300:
                    break
                await asyncio.sleep(1)
            else:
                raise RuntimeError(f"registering the deployment failed: {r.status_code} {r.text}")
            base = f"http://127.0.0.1:{ingress}"
            for _ in range(100):  # the ingress may lag the registration briefly
                try:
                    await call(http, base, "chain", 1)
                    break
                except httpx.HTTPError:
                    await asyncio.sleep(0.2)
            await asyncio.gather(*(call(http, base, "chain", 1) for _ in range(10)))  # warm-up
            if "W1" in workloads:
                n, k = sizes["w1_orchestrations"], sizes["w1_steps"]
                for _ in range(reps):
                    t0 = time.perf_counter()
                    out = await asyncio.gather(*(call(http, base, "chain", k) for _ in range(n)))
                    wall = max(d for _, d in out) - t0
                    p50, p99 = latency_stats([lat for lat, _ in out])
                    res.add("W1", "steps_s", n * k / wall)
                    res.add("W1", "p50_ms", p50)
                    res.add("W1", "p99_ms", p99)
                    log(f"  restate W1: {n * k / wall:.0f} steps/s, p50 {p50:.0f} ms")
            if "W2" in workloads:
                for _ in range(reps):
                    lat, _ = await call(http, base, "fan", sizes["w2_fanout"])
                    res.add("W2", "seconds", lat)
                    log(f"  restate W2: {lat:.3f} s")
            if "W3" in workloads:
                for _ in range(reps):
                    lats = [(await call(http, base, "chain", 1))[0] for _ in range(sizes["w3_runs"])]
                    p50, p99 = latency_stats(lats)
                    res.add("W3", "p50_ms", p50)
                    res.add("W3", "p99_ms", p99)
                    log(f"  restate W3: p50 {p50:.2f} ms p99 {p99:.2f} ms")
    finally:
        stop(app)
        stop(server, timeout=60)
    res.emit()


if __name__ == "__main__":
    asyncio.run(main())
