"""Entity benchmark: bytes per idle counter entity and signals applied per second.

    .venv/bin/python ops/bench/entities.py [--redis-url URL] [--entities 2000] [--signals 50000]

Without ``--redis-url`` a throwaway redis-server is started (the embedded launcher, in a temporary
directory). Memory is ``MEMORY USAGE`` of each entity's keys (its hash, and its control hash while
it remembers recent signal ids: 5 minutes by default, shortened here to 30 seconds so that
the run can show both) plus its share of the partition's entity index. Throughput: the signals
are queued first, then one in-process worker is started and timed until every signal is applied;
each step applies a batch of signals to an entity with one read and one write of its hashes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

import anyio
import redis

from durable import AsyncClient, Worker, WorkerConfig
from durable._core.serialization import decode
from durable._embedded import EmbeddedRedis
from durable._runtime.entity_step import EntityHalf
from durable._store.keys import HubKeys, partition_of

# the counter is the sample one (entities/counter.py); the repository root goes first on the
# import path, or this file, which has the same name, would be imported instead of the package
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from entities.counter import counter


def _send(url: str, hub: str, signals: list[tuple[str, int]], concurrency: int = 32) -> float:
    """Queue signals with the public client; returns the seconds it took."""

    async def main() -> None:
        async with AsyncClient(url, hub=hub) as client:

            async def worker(part: list[tuple[str, int]]) -> None:
                for target, value in part:
                    await client.signal_entity(target, "add", input=value)

            async with anyio.create_task_group() as tg:
                for i in range(concurrency):
                    tg.start_soon(worker, signals[i::concurrency])

    started = time.perf_counter()
    anyio.run(main)
    return time.perf_counter() - started


def _applied(r: redis.Redis, hub: str, targets: list[str]) -> int:
    keys = HubKeys(hub)
    pipe = r.pipeline(transaction=False)
    for t in targets:
        pipe.hget(keys.partition(partition_of(t, 32)).entity(t), "s")
    return sum(decode(raw) for raw in pipe.execute() if raw)


def _worker(url: str, hub: str) -> Worker:
    w = Worker(url, hub=hub, config=WorkerConfig(balance_interval_ms=100, poll_ms=100, batch_size=500))
    w.add_entity(counter)
    return w


def _wait(r: redis.Redis, hub: str, targets: list[str], expected: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _applied(r, hub, targets) < expected:
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {_applied(r, hub, targets)} of {expected} signals applied")
        time.sleep(0.02)


def _bytes(r: redis.Redis, hub: str, targets: list[str]) -> tuple[float, float]:
    """Mean MEMORY USAGE per entity: (its hash + control hash, its share of the entity index)."""
    keys = HubKeys(hub)
    pipe = r.pipeline(transaction=False)
    for t in targets:
        pk = keys.partition(partition_of(t, 32))
        pipe.memory_usage(pk.entity(t), samples=0)
        pipe.memory_usage(pk.entity_control(t), samples=0)
    own = sum(v or 0 for v in pipe.execute()) / len(targets)
    pipe = r.pipeline(transaction=False)
    for i in range(32):
        pipe.memory_usage(keys.partition(i).entity_index, samples=0)
    return own, sum(v or 0 for v in pipe.execute()) / len(targets)


def memory(url: str, n: int, signals_each: int) -> dict[str, float]:
    """Bytes per counter that received ``signals_each`` signals (each with a signal id): right
    after (while it remembers the ids) and once idle (after the ids expired)."""
    hub = f"bench-mem-{uuid.uuid4().hex[:6]}"
    targets = [f"@counter@user-{i:06d}" for i in range(n)]
    r = redis.Redis.from_url(url)
    saved, EntityHalf.dedup_seconds = EntityHalf.dedup_seconds, 30
    try:
        with _worker(url, hub):
            _send(url, hub, [(t, 1) for t in targets for _ in range(signals_each)])
            _wait(r, hub, targets, n * signals_each, 300)
            active, _ = _bytes(r, hub, targets)
            deadline = time.monotonic() + 120
            while any(r.scan_iter(f"durable:{{{hub}:*}}:ec:*", count=1000)):
                if time.monotonic() > deadline:
                    raise SystemExit("the recent signal ids were not swept")
                time.sleep(0.2)
    finally:
        EntityHalf.dedup_seconds = saved
    idle, index = _bytes(r, hub, targets)
    return {"active": active, "idle": idle, "index": index}


def throughput(url: str, total: int, n_targets: int) -> dict[str, float]:
    hub = f"bench-tp-{uuid.uuid4().hex[:6]}"
    targets = [f"@counter@hot-{i:04d}" for i in range(n_targets)]
    r = redis.Redis.from_url(url)
    send_s = _send(url, hub, [(targets[i % n_targets], 1) for i in range(total)])
    w = _worker(url, hub)
    started = time.perf_counter()
    with w:
        _wait(r, hub, targets, total, 600)
        elapsed = time.perf_counter() - started
    return {
        "signals": total,
        "entities": n_targets,
        "seconds": elapsed,
        "per_second": total / elapsed,
        "send_per_second": total / send_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", help="an existing Redis (default: start a throwaway one)")
    parser.add_argument("--entities", type=int, default=2000, help="idle counters for the memory figure")
    parser.add_argument("--signals", type=int, default=50_000, help="signals for the throughput figure")
    parser.add_argument("--targets", type=int, default=100, help="counters the signals are spread over")
    args = parser.parse_args()

    def run(url: str) -> None:
        r = redis.Redis.from_url(url)
        info = r.info("server")
        print(f"redis {info['redis_version']}, hash-max-listpack-value {r.config_get('hash-max-*-value')}")
        for each in (1, 10):
            m = memory(url, args.entities, each)
            print(
                f"{args.entities} counters, {each} signal(s) each: idle {m['idle']:.0f} bytes per counter "
                f"(+ {m['index']:.0f} bytes of entity index = {m['idle'] + m['index']:.0f}); "
                f"{m['active']:.0f} bytes while it remembers the signal ids"
            )
        t = throughput(url, args.signals, args.targets)
        print(
            f"throughput: {t['signals']} signals over {t['entities']} counters applied in "
            f"{t['seconds']:.2f} s = {t['per_second']:,.0f} signals/s (one worker; queueing them took "
            f"{t['send_per_second']:,.0f} signals/s)"
        )

    if args.redis_url:
        run(args.redis_url)
        return
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(tmp) as server:
        run(server.url)


if __name__ == "__main__":
    main()
