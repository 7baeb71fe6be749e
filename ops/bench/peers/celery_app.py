"""The Celery app of the benchmark (Redis as broker and result backend, Celery's defaults)."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

app = Celery("bench", broker=os.environ["BENCH_REDIS_URL"], backend=os.environ["BENCH_REDIS_URL"])
app.conf.update(worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)


@app.task
def noop(x: Any) -> Any:
    return x
