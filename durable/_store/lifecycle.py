"""Store operations of the instance lifecycle: recursive purge, purge batches of a partition's
owner (retention and filters), the finished-instance index, and small reads the activity runner and
the lifecycle commands need.

Like :mod:`durable._store.store`, only Redis access lives here; what to purge and when is decided
by the callers. Multi-key writes touch one partition's keys (one hash tag) per script call.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

from .store import Store

_TERMINAL = ("COMPLETED", "FAILED", "TERMINATED")


def _decode(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


async def instance_execs(
    store: Store, instance_ids: Sequence[str]
) -> dict[str, tuple[str | None, str | None]]:
    """(status, execution id) of each instance; (None, None) for one that does not exist."""
    if not instance_ids:
        return {}
    pipe = store.redis.pipeline(transaction=False)
    for iid in instance_ids:
        pipe.hmget(store.keys_for(iid).instance(iid), "status", "exec")
    rows = await pipe.execute()
    return {iid: (_decode(st), _decode(ex)) for iid, (st, ex) in zip(instance_ids, rows, strict=True)}


_registered: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def _script(store: Store, source: str) -> Any:
    """``source`` registered on the store's current client (once per client)."""
    table = _registered.setdefault(store.redis, {})
    script = table.get(source)
    if script is None:
        script = table[source] = store.redis.register_script(source)
    return script
