"""What one cached waiting instance costs in a worker: N `waiter` orchestrations started against a
real redis-server by an in-process worker; tracemalloc diff of dropping the cache, RSS growth, and a
per-object breakdown of what each instance keeps alive alone.

usage: .venv/bin/python ops/bench/cache_footprint.py [N]   (from the repository root)
"""

from __future__ import annotations

import asyncio
import enum
import gc
import os
import sys
import tempfile
import tracemalloc
import types
from collections import Counter
from typing import Any

sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
sys.path.insert(0, os.getcwd())

from _redis import RedisServer

from durable import AsyncClient, Worker, WorkerConfig


def waiter(ctx: Any, _: Any) -> Any:
    value = yield ctx.wait_for_external_event("go")
    return value


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


PRUNE = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.CodeType,
    types.MethodWrapperType,
)


def reach(root: Any) -> dict[int, Any]:
    seen: dict[int, Any] = {}
    stack = [root]
    while stack:
        o = stack.pop()
        if id(o) in seen or isinstance(o, PRUNE):
            continue
        if isinstance(o, enum.Enum):
            continue
        seen[id(o)] = o
        stack.extend(gc.get_referents(o))
    return seen


def breakdown(instances: list[Any]) -> None:
    counts: Counter[int] = Counter()
    graphs = []
    for inst in instances:
        g = reach(inst)
        graphs.append(g)
        counts.update(g.keys())
    by_type: Counter[str] = Counter()
    n_by_type: Counter[str] = Counter()
    for g in graphs:
        for oid, o in g.items():
            if counts[oid] == 1:
                name = type(o).__qualname__
                if isinstance(o, dict):
                    # name a dict by a telling key
                    keys = list(o)[:3]
                    name = f"dict{keys}"[:60]
                by_type[name] += sys.getsizeof(o)
                n_by_type[name] += 1
    n = len(instances)
    total = sum(by_type.values()) / n
    print(f"  per-instance graph (objects reached by one instance only): {total:.0f} B")
    for name, size in by_type.most_common(40):
        print(f"    {size / n:7.0f} B  {n_by_type[name] / n:5.2f} x  {name}")


async def main(n: int) -> None:
    tmp = tempfile.mkdtemp()
    server = RedisServer(tmp, appendonly=False)
    server.start()
    try:
        config = WorkerConfig()
        config.cache_size = n + 1000
        worker = Worker(server.url, hub="mem", config=config)
        worker.add_orchestrator(waiter)
        async with worker, AsyncClient(server.url, hub="mem") as client:
            # warm up (imports, first-step allocations)
            ids = [await client.schedule_new_orchestration("waiter") for _ in range(50)]
            rt: Any = worker._runtime
            while len(rt.cache._lru) < 50:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            gc.collect()
            rss0 = rss()
            tracemalloc.start(1)
            sem = asyncio.Semaphore(200)

            async def one() -> str:
                async with sem:
                    return await client.schedule_new_orchestration("waiter")

            ids = await asyncio.gather(*(one() for _ in range(n)))
            while len(rt.cache._lru) < n + 50:
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)
            gc.collect()
            rss1 = rss()
            insts = [i for p in rt.cache._partitions.values() for i in p.values()]
            running = sum(1 for i in insts if i.executor is not None and not i.executor.is_done)
            print(f"N={n} cached={len(rt.cache._lru)} running={running}")
            print(f"  RSS growth per cached instance: {(rss1 - rss0) / n:.0f} B")
            s1 = tracemalloc.take_snapshot()
            breakdown(insts[:: max(1, len(insts) // 500)])
            del insts
            # drop the cache: what it frees is what the cached instances cost
            for p in list(rt.cache._partitions):
                rt.cache.clear_partition(p)
            gc.collect()
            s2 = tracemalloc.take_snapshot()
            diff = s1.compare_to(s2, "lineno")
            total = sum(d.size_diff for d in diff)
            print(f"  tracemalloc: cache holds {total / n:.0f} B per instance")
            for d in sorted(diff, key=lambda d: -d.size_diff)[:25]:
                if d.size_diff / n < 4:
                    break
                fr = d.traceback[0]
                fn = fr.filename.split("/durable/", 1)[-1].split("/lib/python3.11/")[-1]
                print(f"    {d.size_diff / n:7.0f} B  {d.count_diff / n:5.2f} blk  {fn}:{fr.lineno}")
            del ids
    finally:
        server.kill()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000))
