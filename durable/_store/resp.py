"""A minimal RESP encoder for the few calls whose argument count makes redis-py's generic one costly,
and the decoding of the raw replies those calls read (what redis-py's response callbacks would do)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_hiredis_pack: Callable[[tuple[Any, ...]], bytes] | None
try:  # redis[hiredis] is a dependency; its C encoder is about four times faster on a commit
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - hiredis is installed with the package
    _hiredis_pack = None


def pack_command(*args: Any) -> bytes:
    """Encode one command as a RESP array of bulk strings (bytes, str, int and float arguments)."""
    if _hiredis_pack is not None:
        try:
            return _hiredis_pack(args)
        except (TypeError, ValueError, UnicodeError):
            pass  # what hiredis refuses (a bool, a str subclass it does not take): encoded below
    return _pack(args)


def _pack(args: tuple[Any, ...]) -> bytes:
    parts: list[bytes] = [b"*%d\r\n" % len(args)]
    append = parts.append
    for arg in args:
        cls = arg.__class__
        if cls is bytes:
            append(b"$%d\r\n%b\r\n" % (len(arg), arg))
        elif cls is str:
            data = arg.encode()
            append(b"$%d\r\n%b\r\n" % (len(data), data))
        elif cls is int:
            data = b"%d" % arg
            append(b"$%d\r\n%b\r\n" % (len(data), data))
        elif isinstance(arg, bytes | str | int | float):
            data = (
                arg.encode()
                if isinstance(arg, str)
                else arg
                if isinstance(arg, bytes)
                else repr(arg).encode()
            )
            append(b"$%d\r\n%b\r\n" % (len(data), data))
        else:
            raise TypeError(f"cannot encode {type(arg).__qualname__} as a Redis argument")
    return b"".join(parts)


def stream_replies(streams: Any) -> list[tuple[bytes, list[Any]]]:
    """The (stream, raw entries) of an XREAD/XREADGROUP reply, RESP2 (a list) or RESP3 (a map)."""
    if isinstance(streams, dict):
        return list(streams.items())
    return [(stream, entries) for stream, entries in streams]


def stream_entries(entries: list[Any]) -> list[tuple[str, dict[bytes, bytes]]]:
    """Raw stream entries ``[id, [field, value, ...]]`` as (id, fields); entries deleted while
    pending (no fields) are left out."""
    out: list[tuple[str, dict[bytes, bytes]]] = []
    for eid, flat in entries:
        if flat:
            it = iter(flat)
            out.append((eid.decode(), dict(zip(it, it, strict=False))))
    return out


def field_map(reply: Any) -> dict[bytes, Any]:
    """A raw HGETALL reply as a dict (RESP2 gives a flat list, RESP3 a map)."""
    if isinstance(reply, dict):
        return reply
    it = iter(reply)
    return dict(zip(it, it, strict=False))
