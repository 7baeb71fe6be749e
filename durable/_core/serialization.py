"""Payload encoding: msgpack with a few extension types.

Every payload that crosses a durable boundary (orchestration input and output, activity input and
result, event data, custom status) is encoded here. Values msgpack cannot carry raise
:class:`SerializationError` at the call site, naming the offending type.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import enum
import sys
import uuid
from typing import Any

import msgpack

_EXT_DATETIME = 1
_EXT_UUID = 2
_EXT_TUPLE = 3

#: Hard cap on one encoded payload; bigger values are rejected where they are produced.
MAX_PAYLOAD_BYTES = 2 * 1024 * 1024


#: Payloads larger than this are stored once outside the history and referenced from it.
LARGE_PAYLOAD_BYTES = 64 * 1024
#: A reference to such a payload: 0xc1 is never valid msgpack, so no payload can start like this.
BLOB_REF_PREFIX = b"\xc1blob:"


def is_blob_ref(data: object) -> bool:
    """True for a stored reference to a large payload (see :data:`BLOB_REF_PREFIX`)."""
    return isinstance(data, bytes) and data.startswith(BLOB_REF_PREFIX)


class SerializationError(TypeError):
    """A value could not be encoded (or decoded) as a durable payload."""


class PayloadTooLargeError(ValueError):
    """An encoded payload is larger than the configured cap."""


def _pydantic_base() -> type | None:
    module = sys.modules.get("pydantic")
    base = getattr(module, "BaseModel", None) if module is not None else None
    return base if isinstance(base, type) else None


def is_pydantic_model(tp: Any) -> bool:
    """Whether ``tp`` is a pydantic model class (only when the application imported pydantic)."""
    base = _pydantic_base()
    return base is not None and isinstance(tp, type) and issubclass(tp, base)


def to_plain(obj: Any) -> Any:
    """One level of conversion of a value msgpack cannot carry as is into plain values (the
    encoder's fallback: nested values are converted when msgpack reaches them).

    Raises TypeError for values with no plain form."""
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, decimal.Decimal):
        return str(obj)
    if isinstance(obj, _dt.date) and not isinstance(obj, _dt.datetime):
        return obj.isoformat()
    if isinstance(obj, _dt.timedelta):
        return obj.total_seconds()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    base = _pydantic_base()
    if base is not None and isinstance(obj, base):
        return obj.model_dump(mode="python")  # type: ignore[attr-defined]
    raise TypeError(f"cannot serialize a value of type {type(obj).__qualname__!r}")


def _default(obj: Any) -> Any:
    if isinstance(obj, _dt.datetime):
        if obj.tzinfo is None:
            raise SerializationError(
                "cannot serialize a naive datetime; use a timezone-aware one (datetime.now(timezone.utc))"
            )
        return msgpack.ExtType(_EXT_DATETIME, obj.isoformat().encode())
    if isinstance(obj, uuid.UUID):
        return msgpack.ExtType(_EXT_UUID, obj.bytes)
    if isinstance(obj, tuple):
        return msgpack.ExtType(_EXT_TUPLE, _pack(list(obj)))
    try:
        return to_plain(obj)
    except TypeError:
        pass
    raise SerializationError(f"cannot serialize a value of type {type(obj).__qualname__!r}: {obj!r:.80}")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _EXT_DATETIME:
        return _dt.datetime.fromisoformat(data.decode())
    if code == _EXT_UUID:
        return uuid.UUID(bytes=data)
    if code == _EXT_TUPLE:
        return tuple(_unpack(data))
    return msgpack.ExtType(code, data)


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, default=_default, use_bin_type=True, strict_types=True)  # type: ignore[no-any-return]


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)


def encode(value: Any, *, what: str = "payload", limit: int = MAX_PAYLOAD_BYTES) -> bytes:
    """Encode ``value``; ``what`` names it in error messages (e.g. "input of activity 'charge'")."""
    try:
        data = _pack(value)
    except SerializationError as exc:
        raise SerializationError(f"{what}: {exc}") from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(f"{what}: cannot serialize {type(value).__qualname__!r}: {exc}") from None
    if len(data) > limit:
        raise PayloadTooLargeError(
            f"{what}: encoded size {len(data)} bytes exceeds the limit of {limit} bytes"
        )
    return data


def decode(data: bytes | None) -> Any:
    """Decode a payload produced by :func:`encode`; ``None`` decodes to ``None``."""
    if data is None:
        return None
    try:
        return _unpack(data)
    except Exception as exc:  # msgpack raises several unrelated types
        raise SerializationError(f"cannot decode payload: {exc}") from exc


def pack_record(value: Any) -> bytes:
    """Encode an internal record (history event, message body); these hold only plain types."""
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def unpack_record(data: bytes) -> Any:
    """Decode an internal record written by :func:`pack_record`."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False)
