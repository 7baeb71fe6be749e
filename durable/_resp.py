"""A minimal RESP encoder for the few calls whose argument count makes redis-py's generic one costly."""

from __future__ import annotations

from typing import Any


def pack_command(*args: Any) -> bytes:
    """Encode one command as a RESP array of bulk strings (bytes, str, int and float arguments)."""
    parts: list[bytes] = [b"*%d\r\n" % len(args)]
    append = parts.append
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int | float):
            data = repr(arg).encode()
        else:
            raise TypeError(f"cannot encode {type(arg).__qualname__} as a Redis argument")
        append(b"$%d\r\n" % len(data))
        append(data)
        append(b"\r\n")
    return b"".join(parts)
