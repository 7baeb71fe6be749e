"""A Temporal worker process (SDK defaults): ``python temporal_worker.py HOST:PORT``."""

from __future__ import annotations

import asyncio
import sys

from temporal_app import TASK_QUEUE, Chain, Fan, noop
from temporalio.client import Client
from temporalio.worker import Worker


async def main() -> None:
    client = await Client.connect(sys.argv[1])
    worker = Worker(client, task_queue=TASK_QUEUE, workflows=[Chain, Fan], activities=[noop])
    await worker.run()


if __name__ == "__main__":
    asyncio.run(main())
