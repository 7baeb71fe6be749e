"""arq worker settings for the benchmark (``arq arq_app.WorkerSettings``).

Each job appends ``<job id> <finish time>`` to a Redis list so the driver learns about
completions at once (arq's own ``Job.result`` polls).
"""

from __future__ import annotations

import os
import time
from typing import Any

from arq.connections import RedisSettings


async def noop(ctx: dict[str, Any], x: Any) -> Any:
    await ctx["redis"].rpush("bench:done", f"{ctx['job_id']} {time.time()}")
    return x


class WorkerSettings:
    functions = [noop]
    redis_settings = RedisSettings.from_dsn(os.environ["BENCH_REDIS_URL"])
    # arq's default poll_delay is 0.5 s, which caps it near 200 jobs/s here; 5 ms is its best case
    poll_delay = float(os.environ.get("BENCH_ARQ_POLL_DELAY", "0.005"))
    max_jobs = 10  # arq's default
    keep_result = 60
