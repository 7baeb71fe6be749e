"""Store-level behaviour against a real Redis."""

from __future__ import annotations

import anyio

from durable._store.keys import ACTIVITY_GROUP
from durable._store.store import Store


def test_stale_task_behind_many_fresh_ones_is_reclaimed(redis_url: str, hub: str) -> None:
    """XAUTOCLAIM looks at ~10 pending entries per requested one; the scan must go on past a busy
    worker's fresh tasks to the stale one behind them."""

    async def scenario() -> None:
        store = Store.from_url(redis_url, hub)
        try:
            await store.ensure_hub(4)
            await store.ensure_task_group()
            r = store.redis
            for i in range(60):
                await r.xadd(store.keys.tasks, {"m": f"fresh-{i}"})
            await r.xreadgroup(ACTIVITY_GROUP, "busy", {store.keys.tasks: ">"}, count=60)
            stale = (await r.xadd(store.keys.tasks, {"m": "stale"})).decode()
            await r.xreadgroup(ACTIVITY_GROUP, "dead", {store.keys.tasks: ">"}, count=1)
            await r.xclaim(store.keys.tasks, ACTIVITY_GROUP, "dead", 0, [stale], idle=120_000, justid=True)
            claimed = await store.claim_stale_tasks("me", 60_000, 1)
            assert [(eid, fields[b"m"]) for eid, fields, _ in claimed] == [(stale, b"stale")]
            assert claimed[0][2] == 2  # delivered to "dead", then to "me"
            assert await store.claim_stale_tasks("me", 60_000, 1) == []
        finally:
            await store.close()

    anyio.run(scenario)
