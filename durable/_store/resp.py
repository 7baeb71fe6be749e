"""A minimal RESP encoder for the few calls whose argument count makes redis-py's generic one costly."""

from __future__ import annotations

from typing import Any


def pack_command(*args: Any) -> bytes:
    """Encode one command as a RESP array of bulk strings (bytes, str, int and float arguments)."""
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
