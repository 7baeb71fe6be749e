"""Telemetry: an IoT aggregator fed by devices that do not run Python.

One ``telemetry`` entity per site (the key: ``greenhouse-1``, ``plant-7/line-2``, ...) aggregates
the readings its devices send: how many, minimum, maximum and mean, and each device's latest value.
Devices (or a gateway, a shell script, a Node.js or Go service) feed it with the wire format of
docs/wire-format.md: one ``XADD`` of flat string fields onto the inbox stream of the entity's
partition, no durable library needed::

    XADD durable:{<hub>:NN}:inbox * v 1 kind signal target @telemetry@greenhouse-1 op reading \\
        id <unique id> data '{"device": "t-17", "value": 21.5}'

``NN`` is ``crc32(target) % partitions`` (``HGET durable:{<hub>}:meta partitions``), two digits.
The ``id`` makes a retried ``XADD`` harmless: the entity applies each id once.
:func:`wire_entry` builds such an entry (with ``zlib`` and ``json``, no durable client): it is what
``durable demo`` and the tests send with a bare Redis client.
"""

from __future__ import annotations

import json
import uuid
import zlib
from typing import Any

from durable import EntityContext, EntityId

#: The registered name of :func:`telemetry` (entity ids ``@telemetry@<site>``).
TELEMETRY = "telemetry"

_EMPTY: dict[str, Any] = {"readings": 0, "min": None, "max": None, "sum": 0.0, "devices": {}}


def telemetry(ctx: EntityContext, reading: Any = None) -> Any:
    """The aggregator of one site.

    ``reading``: ``{"device": id, "value": number}``; ``get``: the summary (see :func:`summary`);
    ``reset`` and ``delete``.
    """
    operation = ctx.operation
    if operation == "reading":
        if not isinstance(reading, dict) or "device" not in reading:
            raise ValueError(f"a reading is {{'device': id, 'value': number}}, got {reading!r}")
        value = reading.get("value")
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(f"the value of a reading must be a number, got {value!r}")
        state = ctx.get_state(None) or {**_EMPTY, "devices": {}}
        state["readings"] += 1
        state["sum"] += value
        state["min"] = value if state["min"] is None else min(state["min"], value)
        state["max"] = value if state["max"] is None else max(state["max"], value)
        state["devices"][str(reading["device"])] = value
        ctx.set_state(state)
        return None
    if operation == "get":
        return summary(ctx.get_state(None))
    if operation == "reset":
        ctx.set_state({**_EMPTY, "devices": {}})
        return None
    if operation == "delete":
        ctx.delete_state()
        return None
    raise ValueError(f"telemetry has no operation {operation!r} (reading, get, reset, delete)")


def summary(state: Any) -> dict[str, Any]:
    """``{"readings", "devices", "min", "max", "mean"}`` of a telemetry state (None: no readings)."""
    state = state or _EMPTY
    count = int(state["readings"])
    return {
        "readings": count,
        "devices": len(state["devices"]),
        "min": state["min"],
        "max": state["max"],
        "mean": round(state["sum"] / count, 3) if count else None,
    }


def site(key: str) -> EntityId:
    """The id of the telemetry entity of site ``key``."""
    return EntityId(TELEMETRY, key)


def wire_entry(
    hub: str,
    partitions: int,
    target: EntityId | str,
    operation: str,
    data: Any = None,
    message_id: str | None = None,
) -> tuple[str, dict[str, str]]:
    """The stream and the fields of a wire-format signal (docs/wire-format.md), for ``XADD``.

    ``partitions`` is the hub's partition count (``HGET durable:{<hub>}:meta partitions``).
    """
    entity = str(EntityId.of(target))
    partition = zlib.crc32(entity.encode()) % partitions
    fields = {
        "v": "1",
        "kind": "signal",
        "target": entity,
        "op": operation,
        "id": message_id or str(uuid.uuid4()),
        "enc": "json",
        "data": json.dumps(data),
    }
    return f"durable:{{{hub}:{partition:02d}}}:inbox", fields
