"""A worker app with entities for process-kill tests (run as ``python -m apps.entity_app`` from tests/).

Configured from the environment: DURABLE_REDIS_URL, DURABLE_HUB. Short lease timings, so a
SIGKILLed worker's partitions move to the next worker within a few seconds.
"""

from __future__ import annotations

import signal
from typing import Any

import anyio

from durable import EntityContext, Worker, WorkerConfig

worker = Worker(
    config=WorkerConfig(
        lease_ttl_ms=2000,
        renew_interval_ms=400,
        balance_interval_ms=100,
        poll_ms=200,
        heartbeat_ttl_ms=1500,
        drain_timeout=5,
    )
)


@worker.entity
def sequence(ctx: EntityContext, value: Any) -> Any:
    """Counts operations and checks that each sender's numbers arrive once and in order."""
    state = ctx.get_state({"n": 0, "bad": 0, "last": {}})
    if ctx.operation == "next":
        sender, number = value
        if number != state["last"].get(sender, 0) + 1:
            state["bad"] += 1
        state["last"][sender] = number
        state["n"] += 1
        ctx.set_state(state)
    return state


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
