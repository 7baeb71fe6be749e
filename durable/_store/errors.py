"""Typed Redis errors for script calls, on every Redis version.

redis-py picks an error's type from the first word of the error reply: ``OOM ...`` becomes
:class:`~redis.exceptions.OutOfMemoryError`, ``READONLY ...`` a
:class:`~redis.exceptions.ReadOnlyError`. Redis 7 and later pass the error of a command that fails
inside a script on with its code first. Redis 6.2 wraps it in a generic error instead::

    ERR Error running script (call to f_<sha>): @user_script:4: @user_script: 4: -OOM command not
    allowed when used memory > 'maxmemory'.

which redis-py can only report as a plain ``ResponseError``. :func:`typed_error` unwraps it, so
that callers see the same exception types on 6.2 as on 7.x and 8.x; :class:`TypedScript` applies
it to a registered script.
"""

from __future__ import annotations

import re
from typing import Any

from redis.exceptions import (
    MasterDownError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
)

__all__ = ["TypedScript", "TypedScripts", "typed_error"]

#: error codes a command inside a script can fail with, and the types redis-py gives them when
#: they come first in the reply
_TYPES: dict[str, type[ResponseError]] = {
    "OOM": OutOfMemoryError,
    "READONLY": ReadOnlyError,
    "NOPERM": NoPermissionError,
    "MASTERDOWN": MasterDownError,
}

# "<context>: -CODE message", where the context names the script (6.2: "Error running script
# (call to f_<sha>): @user_script:4: @user_script: 4", or only "@user_script: 4" for an error
# table a script returns from redis.pcall); a pipeline may have put its own words in front
_WRAPPED = re.compile(
    r"(?P<context>(?:Error running script|@user_script)[^\n]*?):? -(?P<code>[A-Z]+) (?P<msg>.*)$", re.S
)


def typed_error(exc: ResponseError) -> ResponseError:
    """The typed error a Redis 6.2 script error reply stands for; ``exc`` itself otherwise."""
    if type(exc) is not ResponseError or not exc.args:
        return exc
    match = _WRAPPED.search(str(exc.args[0]))
    if match is None:
        return exc
    kind = _TYPES.get(match["code"])
    if kind is None:
        return exc
    return kind(f"{match['msg']} ({match['context']})")


class TypedScript:
    """A script registered with redis-py whose error replies are typed on every Redis version.

    Calls like the wrapped script (``await script(keys=..., args=...)``); ``sha`` and ``script``
    are the wrapped script's, for callers that send ``EVALSHA`` themselves.
    """

    def __init__(self, script: Any) -> None:
        self.wrapped = script
        self.sha: str = script.sha
        self.script: str | bytes = script.script

    async def __call__(self, keys: Any = None, args: Any = None, client: Any = None) -> Any:
        try:
            return await self.wrapped(keys=keys, args=args, client=client)
        except ResponseError as exc:
            typed = typed_error(exc)
            if typed is exc:
                raise
            raise typed from exc


class TypedScripts:
    """Stands in for a redis-py client in ``register_script``: scripts come back typed."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def register_script(self, script: str) -> TypedScript:
        return TypedScript(self._client.register_script(script))
