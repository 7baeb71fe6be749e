"""The client operations of the store: start an instance, send it messages, read and purge it.

:class:`ClientOps` is the part of :class:`~durable._store.store.Store` that clients (and the ops
API) call outside any partition: the start script, inbox messages, instance and history reads,
large payloads, and the per-partition creation-time index. Concurrent calls share round trips
through the store's automatic pipelines.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from .._core.serialization import BLOB_REF_PREFIX, is_blob_ref, pack_record, unpack_record
from .autopipe import AutoPipeline
from .keys import PartitionKeys
from .resp import pack_command
from .tasks import Fields

__all__ = ["ClientOps", "StartOutcome"]


class StartOutcome(NamedTuple):
    """What a client start found: ``code`` 1 started, 0 an instance exists that may not be
    replaced, 2 an unfinished instance may be replaced once terminated; the existing instance's
    ``status`` and (code 2) ``execution`` id."""

    code: int
    status: str | None = None
    execution: str | None = None


class ClientOps:
    """The client-operation part of :class:`~durable._store.store.Store` (a mixin)."""

    redis: Any
    partitions: int
    _auto: AutoPipeline
    _auto_read: AutoPipeline
    _start: Any
    _send: Any
    _purge: Any

    if TYPE_CHECKING:

        def keys_for(self, instance_id: str) -> PartitionKeys: ...

        def partition_keys(self, index: int) -> PartitionKeys: ...

        async def _client_script(self, script: Any, keys: list[str], args: list[Any]) -> Any: ...

        async def _call_script(
            self, script: Any, keys: list[str], args: list[Any], publish: Sequence[tuple[str, str]] = ()
        ) -> Any: ...

        async def _send_batch(self, commands: list[bytes]) -> list[Any]: ...

    async def start_instance(
        self,
        instance_id: str,
        name: str,
        message: bytes,
        input_data: bytes,
        created_ms: int,
        scheduled_ms: int | None,
        execution_id: str,
        tags: str = "",
        version: str | None = None,
        replaceable: Sequence[str] | None = None,
        replaces: str = "",
    ) -> StartOutcome:
        """Create the instance (or replace a finished one) and queue its start, in one script.

        ``replaceable``: the statuses of an existing instance this start may replace (None: the
        finished ones); ``replaces``: an execution that, once finished, is replaced regardless.
        An unfinished instance that may be replaced is left alone: the outcome says so, and the
        caller terminates it and calls again with ``replaces``."""
        pk = self.keys_for(instance_id)
        res = await self._client_script(
            self._start,
            [pk.instance(instance_id), pk.inbox, pk.timers, pk.timer_data, pk.instances],
            [
                message,
                created_ms,
                name,
                input_data,
                "" if scheduled_ms is None else scheduled_ms,
                f"start|{instance_id}|{execution_id}",
                instance_id,
                execution_id,
                pack_record({"kind": "wake", "target": "", "due": scheduled_ms or 0}),
                tags,
                "0" if version is None else "1",
                version or "",
                "" if replaceable is None else "|" + "".join(f"{st}|" for st in replaceable),
                replaces,
            ],
        )
        code, status, execution = (*res, None, None)[:3]
        return StartOutcome(
            int(code),
            status.decode() if status is not None else None,
            execution.decode() if execution is not None else None,
        )

    async def send_to_instance(self, instance_id: str, message: bytes) -> bool:
        pk = self.keys_for(instance_id)
        return bool(await self._client_script(self._send, [pk.instance(instance_id), pk.inbox], [message]))

    async def send_message(self, target_id: str, message: bytes) -> str:
        """XADD an internal message to the inbox of the partition that owns ``target_id``."""
        eid = await self._auto.call(
            pack_command(b"XADD", self.keys_for(target_id).inbox, b"*", b"m", message)
        )
        return eid.decode()  # type: ignore[no-any-return]

    async def send_messages(self, messages: Sequence[tuple[str, bytes]]) -> list[str]:
        """XADD many internal messages ``(target id, message)``, in order, in one round trip per
        thousand; returns their stream ids (raises the first error reply)."""
        ids: list[str] = []
        for lo in range(0, len(messages), 1000):
            commands = [
                pack_command(b"XADD", self.keys_for(target).inbox, b"*", b"m", message)
                for target, message in messages[lo : lo + 1000]
            ]
            replies = await self._send_batch(commands)
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
                ids.append(reply.decode())
        return ids

    async def xadd_raw(self, index: int, fields: dict[str, str | bytes]) -> str:
        eid = await self.redis.xadd(self.partition_keys(index).inbox, fields)
        return eid.decode()  # type: ignore[no-any-return]

    async def get_instance(self, instance_id: str) -> Fields | None:
        key = self.keys_for(instance_id).instance(instance_id)
        reply = await self._auto_read.call(pack_command(b"HGETALL", key))
        if isinstance(reply, list):  # RESP2 on our own connection (redis-py's cluster path: a dict)
            it = iter(reply)
            reply = dict(zip(it, it, strict=True))
        return reply or None

    async def get_instances(self, instance_ids: Sequence[str]) -> list[Fields]:
        pipe = self.redis.pipeline(transaction=False)
        for iid in instance_ids:
            pipe.hgetall(self.keys_for(iid).instance(iid))
        return list(await pipe.execute())

    async def get_history(self, instance_id: str) -> list[dict[str, Any]]:
        raw = await self.redis.lrange(self.keys_for(instance_id).history(instance_id), 0, -1)
        return [unpack_record(x) for x in raw]

    async def purge_instance(self, instance_id: str) -> int:
        pk = self.keys_for(instance_id)
        blob_set = pk.blobs(instance_id)
        while True:
            blobs = sorted(b.decode() for b in await self.redis.smembers(blob_set))
            keys = [
                pk.instance(instance_id),
                pk.history(instance_id),
                pk.instances,
                blob_set,
                pk.finished,
                *blobs,
            ]
            res = int(await self._call_script(self._purge, keys, [instance_id, len(blobs)]))
            if res != -2:
                return res

    async def get_blobs(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Large payloads by key (missing ones are absent from the result)."""
        if not keys:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
        return {k: v for k, v in zip(keys, await pipe.execute(), strict=True) if v is not None}

    async def resolve(self, data: bytes | None) -> bytes | None:
        """The payload behind a blob reference (or ``data`` itself)."""
        if not is_blob_ref(data):
            return data
        assert data is not None
        key = data[len(BLOB_REF_PREFIX) :].decode()
        value = await self.redis.get(key)
        if value is None:
            raise LookupError(f"large payload {key} is missing (purged?)")
        return value  # type: ignore[no-any-return]

    async def index_range(
        self, created_from_ms: int | None, created_to_ms: int | None, limit: int
    ) -> list[tuple[str, int]]:
        """Instance ids from every partition's index, newest first, at most ``limit`` per partition."""
        lo = "-inf" if created_from_ms is None else created_from_ms
        hi = "+inf" if created_to_ms is None else created_to_ms
        pipe = self.redis.pipeline(transaction=False)
        for i in range(self.partitions):
            pipe.zrevrangebyscore(
                self.partition_keys(i).instances, hi, lo, start=0, num=limit, withscores=True
            )
        out: list[tuple[str, int]] = []
        for rows in await pipe.execute():
            out.extend((m.decode(), int(s)) for m, s in rows)
        out.sort(key=lambda r: r[1], reverse=True)
        return out
