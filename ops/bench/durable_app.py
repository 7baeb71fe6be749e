"""The durable worker app of the benchmark, run as a subprocess by ``durable_bench.py``.

``python ops/bench/durable_app.py worker`` runs a worker until SIGTERM; configured from the
environment: ``DURABLE_REDIS_URL``, ``DURABLE_HUB``, ``BENCH_CACHE_SIZE`` (instance cache size,
default: the engine's) and ``BENCH_STATUS_FILE`` (where a thread writes the worker's RSS and a few
of its Prometheus gauges every 0.2 s, so the driver knows when the worker is ready or idle).

``python ops/bench/durable_app.py signal ...`` is one W4 client process: it connects, prints
``ready``, waits for a line on stdin, sends its share of entity signals (``--concurrency`` in
flight: single ``signal_entity`` calls, or ``signal_entities`` calls of ``--batch`` signals) and
prints ``done <seconds> <CPU seconds>``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio

import durable
from durable import AsyncClient, Client, Worker, WorkerConfig, when_all

HAS_ENTITIES = hasattr(Client, "signal_entity")


# -- the code under test -----------------------------------------------------------------------
def noop(ctx: Any, x: Any) -> Any:
    return x


async def anoop(ctx: Any, x: Any) -> Any:
    return x


if os.environ.get("BENCH_ASYNC_ACTIVITY"):  # for experiments; the benchmark uses the plain def
    noop = anoop  # type: ignore[assignment]
    noop.__name__ = "noop"


def chain(ctx: Any, n: int) -> Any:
    for i in range(n):
        yield ctx.call_activity(noop, input=i)
    return n


def fan(ctx: Any, n: int) -> Any:
    results = yield when_all([ctx.call_activity(noop, input=i) for i in range(n)])
    return len(results)


def waiter(ctx: Any, _: Any) -> Any:
    value = yield ctx.wait_for_external_event("go")
    return value


def counter(ctx: Any, amount: Any = None) -> Any:
    """A counter entity (function form): ``add`` adds its input, ``get`` returns the value."""
    if ctx.operation == "add":
        ctx.set_state(ctx.get_state(0) + int(amount if amount is not None else 1))
        return None
    return ctx.get_state(0)


def entity_id(key: int | str) -> Any:
    """The id of counter ``key``."""
    return durable.EntityId("counter", str(key))


def entity_value(state: Any) -> int | None:
    """The counter value in what ``get_entity`` returned (None: no such entity yet)."""
    return None if state is None else int(state.state or 0)


def build_worker() -> Worker:
    config = WorkerConfig()
    if os.environ.get("BENCH_CACHE_SIZE"):
        config.cache_size = int(os.environ["BENCH_CACHE_SIZE"])
    if os.environ.get("BENCH_CONCURRENCY"):  # for experiments; the benchmark uses the default
        config.concurrency = int(os.environ["BENCH_CONCURRENCY"])
    w = Worker(os.environ["DURABLE_REDIS_URL"], hub=os.environ["DURABLE_HUB"], config=config)
    w.add_activity(noop)
    w.add_orchestrator(chain)
    w.add_orchestrator(fan)
    w.add_orchestrator(waiter)
    if HAS_ENTITIES:
        w.add_entity(counter, name="counter")
    return w


# -- status reporting ----------------------------------------------------------------------------
def _sum(metric: Any, name: str) -> float:
    """The sum of one metric's samples called ``name`` (over its label values).

    Collected from the metric object alone: walking the whole registry five times a second
    costs the worker more CPU than its idle loops, which would show in W7's CPU per step.
    """
    return float(sum(s.value for m in metric.collect() for s in m.samples if s.name == name))


def _rss() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _report_loop(path: Path, stop: threading.Event) -> None:
    from durable._runtime import metrics as m  # the engine's own metrics

    while not stop.wait(0.2):
        try:
            data = {
                "pid": os.getpid(),
                "time": time.time(),
                "rss": _rss(),
                "partitions_owned": _sum(m.PARTITIONS_OWNED, "durable_partitions_owned"),
                "cache_size": _sum(m.REPLAY_CACHE_SIZE, "durable_replay_cache_size"),
                "started": _sum(m.ORCHESTRATIONS_STARTED, "durable_orchestrations_started_total"),
                "finished": _sum(m.ORCHESTRATIONS_FINISHED, "durable_orchestrations_finished_total"),
            }
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            os.replace(tmp, path)
        except Exception as exc:  # the reporter must never kill the worker
            print(f"status report failed: {exc}", file=sys.stderr)


def run_worker() -> None:
    worker = build_worker()
    stop = threading.Event()
    status = os.environ.get("BENCH_STATUS_FILE")
    if status:
        threading.Thread(target=_report_loop, args=(Path(status), stop), daemon=True).start()

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    runtime = worker._runtime  # the documented way to stop is request_stop on it
                    if runtime is not None:
                        runtime.request_stop()
                    break

    profile_to = os.environ.get("BENCH_PROFILE")  # for experiments: see _profile_on_signals
    if profile_to:
        _profile_on_signals(profile_to)
    try:
        anyio.run(main)
    finally:
        stop.set()


def _profile_on_signals(path: str) -> None:
    """cProfile the event loop's thread between SIGUSR1 and SIGUSR2 (written to ``path.<pid>``)."""
    import cProfile

    profiler = cProfile.Profile()

    def start(*_: Any) -> None:
        profiler.enable()

    def dump(*_: Any) -> None:
        profiler.disable()
        profiler.dump_stats(f"{path}.{os.getpid()}")

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, dump)


# -- W4 client process ---------------------------------------------------------------------------
#: whether the client has the batch call (``--batch`` falls back to single calls without it)
HAS_BATCH = hasattr(AsyncClient, "signal_entities")


async def _signal(
    url: str, hub: str, first: int, count: int, entities: int, concurrency: int, batch: int
) -> None:
    client = AsyncClient(url, hub=hub)
    # connect and touch the hub before the start line, so the timing covers signalling only
    await client.get_orchestration_state("warm-up")
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    started = time.perf_counter()
    cpu0 = time.process_time()
    todo = iter(range(first, first + count))

    async def sender() -> None:  # one of ``concurrency`` senders, each with one call in flight
        for i in todo:
            await client.signal_entity(entity_id(i % entities), "add", input=1)

    async def batch_sender() -> None:  # the same with signal_entities, ``batch`` signals a call
        while chunk := [(entity_id(i % entities), "add", 1) for i in itertools.islice(todo, batch)]:
            await client.signal_entities(chunk)

    if batch > 1 and HAS_BATCH:
        await asyncio.gather(*(batch_sender() for _ in range(max(1, concurrency // batch))))
    else:
        await asyncio.gather(*(sender() for _ in range(concurrency)))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu0
    print(f"done {elapsed:.6f} {cpu:.6f}", flush=True)
    await client.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("worker")
    sig = sub.add_parser("signal")
    sig.add_argument("--url", required=True)
    sig.add_argument("--hub", required=True)
    sig.add_argument("--first", type=int, required=True)
    sig.add_argument("--count", type=int, required=True)
    sig.add_argument("--entities", type=int, required=True)
    sig.add_argument("--concurrency", type=int, default=64, help="signals in flight")
    sig.add_argument("--batch", type=int, default=1, help="signals a signal_entities call (1: signal_entity)")
    args = parser.parse_args()
    if args.cmd == "worker":
        run_worker()
    else:
        asyncio.run(
            _signal(args.url, args.hub, args.first, args.count, args.entities, args.concurrency, args.batch)
        )


if __name__ == "__main__":
    main()
