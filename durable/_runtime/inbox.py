"""Decoding of partition inbox entries: the engine's own messages and the public wire format.

An inbox entry is one of two kinds, told apart by its fields:

* **wire** (has ``v``): the documented format other languages use to signal entities, raise events
  and start orchestrations, one ``XADD`` of flat string fields; see ``docs/wire-format.md``.
  Unknown fields are ignored, including the names the engine uses for its own messages.
* **internal** (no ``v``, has ``m``): a msgpack message written by the engine. One forwarded from
  another partition's outbox also carries ``src`` (that partition) and ``seq`` (its outbox entry
  id), which de-duplicate repeated forwarding; both are validated.

Parsing is strict: anything this module rejects is dead-lettered by the partition with the reason
given here (inside the step's commit), and the partition carries on.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .._core import events as ev
from .._core.entities import EntityId
from .._core.serialization import (
    MAX_PAYLOAD_BYTES,
    PayloadTooLargeError,
    SerializationError,
    decode,
    encode,
    unpack_record,
)
from .._store.keys import partition_of

WIRE_VERSION = "1"
#: the largest entry accepted, all field names and values together
MAX_ENTRY_BYTES = MAX_PAYLOAD_BYTES
KINDS = ("signal", "event", "start")
ENCODINGS = ("json", "msgpack")
_MAX_ID = 256
_MAX_TRACEPARENT = 256


class MalformedMessage(ValueError):
    """An inbox entry that cannot be understood; it is dead-lettered with the reason."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is out of range for a number")
    return value


def _text(fields: dict[bytes, bytes], name: str, required: bool) -> str | None:
    raw = fields.get(name.encode())
    if raw is None or raw == b"":
        if required:
            raise MalformedMessage(f"missing required field {name!r}")
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedMessage(f"field {name!r} is not valid UTF-8") from None


def _payload(enc: str, data: bytes | None) -> bytes | None:
    if data is None or data == b"":
        return None
    if enc == "json":
        try:
            value = json.loads(data, parse_constant=_reject_constant, parse_float=_finite_float)
        except RecursionError:
            raise MalformedMessage("field 'data' is not valid JSON (enc=json): nested too deeply") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedMessage(f"field 'data' is not valid JSON (enc=json): {exc}") from None
        try:
            return encode(value, what="field 'data'")
        except (SerializationError, PayloadTooLargeError) as exc:
            raise MalformedMessage(str(exc)) from None
    try:
        decode(data)
    except SerializationError as exc:
        raise MalformedMessage(f"field 'data' is not valid msgpack (enc=msgpack): {exc}") from None
    return data


def parse_wire(
    fields: dict[bytes, bytes], *, partition: int | None = None, partitions: int | None = None
) -> dict[str, Any]:
    """Parse a flat-field stream entry into an internal message dict.

    ``partition``/``partitions`` (the inbox's partition and the hub's count), when given, reject
    entries added to the wrong partition's inbox. Raises :class:`MalformedMessage` with the reason.
    """
    size = sum(len(k) + len(v) for k, v in fields.items())
    if size > MAX_ENTRY_BYTES:
        raise MalformedMessage(f"entry is {size} bytes; the limit is {MAX_ENTRY_BYTES} bytes")
    version = _text(fields, "v", True)
    if version != WIRE_VERSION:
        raise MalformedMessage(
            f"unsupported wire version {version!r} (this worker reads version {WIRE_VERSION})"
        )
    kind = _text(fields, "kind", True)
    if kind not in KINDS:
        raise MalformedMessage(f"unknown kind {kind!r} (expected one of {', '.join(KINDS)})")
    target = _text(fields, "target", True)
    op = _text(fields, "op", True)
    request_id = _text(fields, "id", True)
    assert target is not None and op is not None and request_id is not None
    if len(request_id) > _MAX_ID:
        raise MalformedMessage(f"field 'id' is {len(request_id)} characters; the limit is {_MAX_ID}")
    enc = _text(fields, "enc", False) or "json"
    if enc not in ENCODINGS:
        raise MalformedMessage(
            f"unknown encoding {enc!r} in field 'enc' (expected one of {', '.join(ENCODINGS)})"
        )
    at_text = _text(fields, "at", False)
    at: int | None = None
    if at_text is not None:
        if kind != "signal":
            raise MalformedMessage(f"field 'at' is only supported for kind 'signal', not {kind!r}")
        try:
            at = int(at_text)
        except ValueError:
            raise MalformedMessage(
                f"field 'at' must be an integer (unix time in ms), got {at_text!r}"
            ) from None
    traceparent = _text(fields, "traceparent", False)
    if traceparent is not None and len(traceparent) > _MAX_TRACEPARENT:
        raise MalformedMessage(f"field 'traceparent' is longer than {_MAX_TRACEPARENT} characters")
    if kind == "signal":
        try:
            target = str(EntityId.parse(target))
        except ValueError as exc:
            raise MalformedMessage(f"kind 'signal' needs an entity target '@name@key': {exc}") from None
    elif target.startswith("@"):
        raise MalformedMessage(f"kind {kind!r} needs an orchestration instance id as target, not {target!r}")
    if partition is not None and partitions:
        owner = partition_of(target, partitions)
        if owner != partition:
            raise MalformedMessage(
                f"target {target!r} belongs to partition {owner} (crc32 % {partitions}), "
                f"but the entry was added to the inbox of partition {partition}"
            )
    payload = _payload(enc, fields.get(b"data"))
    msg: dict[str, Any]
    if kind == "signal":
        msg = {"kind": ev.MSG_SIGNAL, "target": target, "op": op, "input": payload, "id": request_id}
        if at is not None:
            msg["at"] = at
    elif kind == "event":
        msg = {"kind": ev.MSG_EVENT, "target": target, "name": op, "input": payload, "id": request_id}
    else:
        msg = {"kind": ev.MSG_START, "target": target, "name": op, "input": payload, "exec": request_id}
    if traceparent is not None:
        msg["traceparent"] = traceparent
    msg["_wire"] = fields
    return msg


_STREAM_ID = re.compile(rb"^[0-9]{1,20}-[0-9]{1,20}$")


def stream_id(value: str) -> tuple[int, int]:
    """A stream entry id ``"<ms>-<seq>"`` as a sortable pair."""
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


def is_wire(fields: dict[bytes, bytes]) -> bool:
    """Whether an inbox entry is in the public wire format (it has the version field ``v``)."""
    return b"v" in fields


def forwarded_position(fields: dict[bytes, bytes], partitions: int | None = None) -> tuple[str, str] | None:
    """``(source partition, outbox entry id)`` of an internal message forwarded from another
    partition's outbox, else None. Wire entries never have one, whatever fields they carry.
    Raises :class:`MalformedMessage` for an internal entry whose ``src``/``seq`` are invalid."""
    if is_wire(fields):
        return None
    src = fields.get(b"src")
    if src is None:
        return None
    seq = fields.get(b"seq")
    if not src.isdigit() or (partitions is not None and int(src) >= partitions):
        raise MalformedMessage(f"forwarded message has an invalid source partition {src[:40]!r}")
    if seq is None or not _STREAM_ID.match(seq):
        raise MalformedMessage(f"forwarded message has an invalid sequence {(seq or b'')[:60]!r}")
    return src.decode(), seq.decode()


def parse_entry(
    fields: dict[bytes, bytes], partition: int | None = None, partitions: int | None = None
) -> dict[str, Any]:
    """Decode one inbox entry into a message dict with at least ``kind`` and ``target``."""
    raw = fields.get(b"m")
    if raw is None or is_wire(fields):
        return parse_wire(fields, partition=partition, partitions=partitions)
    try:
        msg = unpack_record(raw)
    except Exception as exc:
        raise MalformedMessage(f"cannot decode message: {exc}") from None
    if (
        not isinstance(msg, dict)
        or not isinstance(msg.get("kind"), str)
        or not isinstance(msg.get("target"), str)
    ):
        raise MalformedMessage("message must be a map with string 'kind' and 'target'")
    return msg


#: a dead-letter entry keeps at most this many of the original entry's fields
MAX_DLQ_FIELDS = 256


def dlq_fields(eid: str, fields: dict[bytes, bytes], reason: str) -> dict[str, bytes | str]:
    """A dead-letter entry: the original fields (the first :data:`MAX_DLQ_FIELDS`), the reason and
    the source entry id."""
    out: dict[str, bytes | str] = {}
    for k, v in fields.items():
        if len(out) >= MAX_DLQ_FIELDS:
            out["dlq_truncated"] = str(len(fields))
            break
        out[k.decode(errors="replace")] = v
    out["dlq_reason"] = reason
    out["dlq_source_id"] = eid
    return out
