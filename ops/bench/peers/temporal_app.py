"""Temporal workflows and activity of the benchmark (imported by the worker and the driver)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import activity, workflow

TASK_QUEUE = "bench"
TIMEOUT = timedelta(seconds=120)


@activity.defn
async def noop(x: int) -> int:
    return x


@workflow.defn
class Chain:
    @workflow.run
    async def run(self, n: int) -> int:
        for i in range(n):
            await workflow.execute_activity(noop, i, start_to_close_timeout=TIMEOUT)
        return n


@workflow.defn
class Fan:
    @workflow.run
    async def run(self, n: int) -> int:
        results = await asyncio.gather(
            *(workflow.execute_activity(noop, i, start_to_close_timeout=TIMEOUT) for i in range(n))
        )
        return len(results)
