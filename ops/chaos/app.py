"""The chaos worker app: one worker process of the hub under test (started by ``ops/chaos/run``).

Configured from the environment: ``DURABLE_REDIS_URL``, ``DURABLE_HUB``, ``CHAOS_PARTITIONS``,
``LEDGER_URL`` (a Redis the harness never kills) and ``CHAOS_ENTITIES`` ("1" registers the bank
accounts). Lease and visibility timings are short so faults heal within seconds.

Run by the harness as ``python -m durable worker ops.chaos.app:worker``.

Every activity execution appends one line to the side-effect ledger *before* it returns:
``idempotency_key <TAB> logical id <TAB> delivery <TAB> pid`` (``delivery``: how often this attempt
was delivered, more than 1 after a worker died running it). The harness reads the ledger to count
real executions without trusting anything the engine records.
"""

from __future__ import annotations

import os
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workload

from durable import ActivityContext, Worker, WorkerConfig

worker = Worker(
    config=WorkerConfig(
        partitions=int(os.environ.get("CHAOS_PARTITIONS", "16")),
        lease_ttl_ms=2000,
        renew_interval_ms=400,
        balance_interval_ms=100,
        poll_ms=200,
        heartbeat_ttl_ms=1500,
        activity_visibility_ms=1500,
        drain_timeout=5,
        concurrency=32,
    )
)
_ledger: redis.Redis | None = None
_LEDGER_KEY = f"ledger:{os.environ.get('DURABLE_HUB', '')}"


def _record(ctx: ActivityContext, logical_id: str) -> None:
    global _ledger
    if _ledger is None:
        _ledger = redis.Redis.from_url(os.environ["LEDGER_URL"])
    line = f"{ctx.idempotency_key}\t{logical_id}\t{ctx.delivery}\t{os.getpid()}"
    for attempt in range(50):  # the ledger server is never faulted; retry only transient errors
        try:
            _ledger.rpush(_LEDGER_KEY, line)
            return
        except redis.RedisError:
            time.sleep(0.05 * (attempt + 1))
    raise RuntimeError("ledger unreachable")


@worker.activity(name=workload.ACTIVITY)
def work(ctx: ActivityContext, data: dict[str, Any]) -> int:
    # a few ms of "work", so that kills land while activities are in flight
    time.sleep((zlib.crc32(data["id"].encode()) % 150) / 1000)
    _record(ctx, data["id"])
    return workload.activity_value(data["id"], data["v"])


@worker.activity(name=workload.BIG_IN)
def big_in(ctx: ActivityContext, data: dict[str, Any]) -> dict[str, Any]:
    _record(ctx, data["id"])
    return workload.big_in_result(data)


@worker.activity(name=workload.BIG_OUT)
def big_out(ctx: ActivityContext, data: dict[str, Any]) -> bytes:
    _record(ctx, data["id"])
    return workload.blob(data["n"], data["seed"])


worker.add_orchestrator(workload.program, name=workload.ORCHESTRATOR)

if os.environ.get("CHAOS_ENTITIES") == "1":

    def account(ctx: Any, value: Any) -> Any:
        """A bank account: ``add`` applies a delta; no de-duplication here, so a doubly applied
        operation shows in the final balance and operation count.

        Deliberately not the sample ``entities.bank.Account``: the oracle needs the count of
        applications next to the balance, and signed deltas that are never refused (the workload
        model predicts every balance without modelling refusals)."""
        state = ctx.get_state({"balance": workload.ACCOUNT_START, "ops": 0})
        if ctx.operation == "add":
            state["balance"] += value["delta"]
            state["ops"] += 1
            ctx.set_state(state)
        return state

    worker.add_entity(account, name=workload.ACCOUNT)
