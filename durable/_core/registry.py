"""Registration of orchestrators, activities and entities by name."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from .activity import ActivityContext as ActivityContext  # re-exported: its historic home

_NAME_ATTR = "__durable_name__"


def _default_name(fn: Any) -> str:
    name = getattr(fn, _NAME_ATTR, None) or getattr(fn, "__name__", None)
    if not name:
        raise TypeError(f"cannot derive a name for {fn!r}; pass name=")
    return str(name)


def name_of(fn_or_name: Any, kind: str) -> str:
    """The registered name of a function (or the string itself)."""
    if isinstance(fn_or_name, str):
        if not fn_or_name:
            raise ValueError(f"{kind} name must not be empty")
        return fn_or_name
    if callable(fn_or_name):
        return _default_name(fn_or_name)
    raise TypeError(f"expected a {kind} function or name, got {type(fn_or_name).__qualname__}")


class Registry:
    """What a worker can run."""

    def __init__(self) -> None:
        self.orchestrators: dict[str, Callable[..., Any]] = {}
        self.activities: dict[str, Callable[..., Any]] = {}
        self.entities: dict[str, Any] = {}

    def _add(self, table: dict[str, Any], fn: Any, name: str | None, kind: str) -> str:
        if not callable(fn):
            raise TypeError(f"{kind} must be callable, got {type(fn).__qualname__}")
        key = name or _default_name(fn)
        if key in table and table[key] is not fn:
            raise ValueError(f"a different {kind} named {key!r} is already registered")
        table[key] = fn
        if name:
            with contextlib.suppress(AttributeError, TypeError):
                setattr(fn, _NAME_ATTR, name)
        return key

    def add_orchestrator(self, fn: Callable[..., Any], name: str | None = None) -> str:
        return self._add(self.orchestrators, fn, name, "orchestrator")

    def add_activity(self, fn: Callable[..., Any], name: str | None = None) -> str:
        return self._add(self.activities, fn, name, "activity")

    def add_entity(self, fn: Any, name: str | None = None) -> str:
        key = (name or _default_name(fn)).lower()
        return self._add(self.entities, fn, key, "entity")
