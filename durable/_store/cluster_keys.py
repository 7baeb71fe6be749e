"""The keys of the stream reads, found without a round trip, for redis-py's cluster client.

redis-py's cluster client routes each command by its keys. For commands whose keys move, which
include XREAD and XREADGROUP (the keys follow ``STREAMS``), it first asks a server with
``COMMAND GETKEYS``: one extra round trip before every inbox, task and work read, about one per
step. Their keys are simple to find here: after ``STREAMS``, the first half of the arguments.
"""

from __future__ import annotations

from typing import Any

from redis._parsers.commands import AsyncCommandsParser

#: options before STREAMS, and how many arguments each takes besides its name
_OPTIONS = {"GROUP": 2, "COUNT": 1, "BLOCK": 1, "NOACK": 0}


def _word(arg: Any) -> str:
    return (arg.decode() if isinstance(arg, bytes) else str(arg)).upper()


def stream_read_keys(args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """The keys of an XREAD or XREADGROUP command (its words in ``args``), or None if it is not one."""
    if not args or _word(args[0]) not in ("XREAD", "XREADGROUP"):
        return None
    i = 1
    while i < len(args):
        word = _word(args[i])
        if word == "STREAMS":
            rest = args[i + 1 :]
            return tuple(rest[: len(rest) // 2]) if rest and len(rest) % 2 == 0 else None
        if word not in _OPTIONS:
            return None
        i += 1 + _OPTIONS[word]
    return None


class StreamReadKeysParser(AsyncCommandsParser):
    """redis-py's command parser, except that stream reads are parsed here."""

    async def get_keys(self, *args: Any) -> tuple[str, ...] | None:
        keys = stream_read_keys(args)
        if keys is not None:
            return keys
        return await super().get_keys(*args)
