"""A worker app for process-level fault tests (run as ``python -m apps.engine_app`` from tests/).

Configured from the environment: DURABLE_REDIS_URL, DURABLE_HUB, LEDGER_URL (a separate Redis
database where every activity execution is recorded by its idempotency key, independently of the
engine), ACTIVITY_DELAY (seconds each activity sleeps).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import anyio
import redis
from _redis import connect

from durable import ActivityContext, TaskFailedError, Worker, WorkerConfig, when_all

worker = Worker(
    config=WorkerConfig(
        lease_ttl_ms=2000,
        renew_interval_ms=400,
        balance_interval_ms=100,
        poll_ms=200,
        heartbeat_ttl_ms=1500,
        activity_visibility_ms=1500,
        drain_timeout=5,
        direct_delivery=os.environ.get("DURABLE_DIRECT_DELIVERY", "1") != "0",
        max_deliveries=int(os.environ.get("MAX_DELIVERIES", "5")),
    )
)
_ledger: redis.Redis | None = None


_ledger_lock = threading.Lock()


def ledger() -> redis.Redis:
    global _ledger
    with _ledger_lock:  # activities run on several threads: create the client exactly once
        if _ledger is None:
            _ledger = connect(os.environ["LEDGER_URL"])
        return _ledger


@worker.activity
def record(ctx: ActivityContext, value: int) -> int:
    delay = float(os.environ.get("ACTIVITY_DELAY", "0"))
    if delay:
        time.sleep(delay)
    hub = os.environ["DURABLE_HUB"]
    pipe = ledger().pipeline()
    pipe.hincrby(f"ledger:{hub}", ctx.idempotency_key, 1)
    pipe.sadd(f"pids:{hub}", os.getpid())
    pipe.execute()
    return value + 1


@worker.activity
def poison(ctx: ActivityContext, value: str) -> str:
    if value == "die":
        os._exit(17)  # takes the whole worker process down, on every delivery
    return value


@worker.orchestrator
def survives_poison(ctx: Any, _: Any) -> Any:
    try:
        yield ctx.call_activity(poison, input="die")
    except TaskFailedError as exc:
        return exc.details.error_type
    return "not reached"


@worker.orchestrator
def chain_and_fan(ctx: Any, n: int) -> Any:
    value = 0
    for _ in range(n):
        value = yield ctx.call_activity(record, input=value)
    fanned = yield when_all([ctx.call_activity(record, input=i) for i in range(n)])
    return {"chain": value, "fan": sum(fanned)}


def main() -> None:
    async def run() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    rt = worker._runtime
                    if rt is not None:
                        rt.request_stop()
                    break

    anyio.run(run)


if __name__ == "__main__":
    main()
