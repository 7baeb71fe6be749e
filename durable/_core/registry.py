"""Registration of orchestrators (several versions of one name), activities and entities by name,
and the capabilities a worker advertises from them."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from .activity import ActivityContext as ActivityContext  # re-exported: its historic home

_NAME_ATTR = "__durable_name__"

#: the version of an orchestrator registered without one (and of histories recorded before versions)
UNVERSIONED = ""
#: the version part of the capability "any version of this orchestrator" (an unpinned start)
ANY_VERSION = "*"


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


def version_key(version: str) -> tuple[int, tuple[int, ...], str]:
    """Sort key of a version: dotted integers compare numerically ("1.10" > "1.9") and above any
    other string; other strings compare as strings; the unversioned "" is the lowest of all."""
    parts = version.split(".")
    if version and all(p.isdigit() for p in parts):
        return (2, tuple(int(p) for p in parts), version)
    return (1 if version else 0, (), version)


def check_version(version: str | None) -> str | None:
    """Validate a version given by a caller (None: not pinned)."""
    if version is None:
        return None
    if not isinstance(version, str):
        raise TypeError(f"a version is a string, got {type(version).__qualname__}")
    if version == ANY_VERSION or any(c in version for c in "|\n"):
        raise ValueError(f"invalid version {version!r}: it may not be '*' or contain '|' or a newline")
    return version


def capability(kind: str, name: str, version: str | None = None) -> str:
    """A capability string: ``o|<name>|<version>`` (``*``: any version), ``a|<name>``, ``e|<name>``."""
    if kind == "o":
        return f"o|{name}|{ANY_VERSION if version is None else version}"
    return f"{kind}|{name}"


def split_capability(cap: str) -> tuple[str, str, str | None]:
    """Inverse of :func:`capability`: (kind, name, version or None)."""
    kind, _, rest = cap.partition("|")
    if kind == "o":
        name, _, version = rest.rpartition("|")
        return kind, name, None if version == ANY_VERSION else version
    return kind, rest, None


class Registry:
    """What a worker can run."""

    def __init__(self) -> None:
        #: orchestrator name -> version -> function
        self.orchestrator_versions: dict[str, dict[str, Callable[..., Any]]] = {}
        self.activities: dict[str, Callable[..., Any]] = {}
        self.entities: dict[str, Any] = {}

    @property
    def orchestrators(self) -> dict[str, Callable[..., Any]]:
        """Orchestrator name -> the function of its newest version."""
        out: dict[str, Callable[..., Any]] = {}
        for name in self.orchestrator_versions:
            found = self.resolve_orchestrator(name)
            if found is not None:
                out[name] = found[1]
        return out

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

    def add_orchestrator(
        self, fn: Callable[..., Any], name: str | None = None, version: str | None = None
    ) -> str:
        if not callable(fn):
            raise TypeError(f"orchestrator must be callable, got {type(fn).__qualname__}")
        key = name or _default_name(fn)
        ver = check_version(version) or UNVERSIONED
        versions = self.orchestrator_versions.setdefault(key, {})
        if ver in versions and versions[ver] is not fn:
            label = f"version {ver!r} of " if ver else ""
            raise ValueError(f"a different orchestrator is already registered as {label}{key!r}")
        versions[ver] = fn
        if name:
            with contextlib.suppress(AttributeError, TypeError):
                setattr(fn, _NAME_ATTR, name)
        return key

    def add_activity(self, fn: Callable[..., Any], name: str | None = None) -> str:
        return self._add(self.activities, fn, name, "activity")

    def add_entity(self, fn: Any, name: str | None = None) -> str:
        key = (name or _default_name(fn)).lower()
        return self._add(self.entities, fn, key, "entity")

    # -- lookups ---------------------------------------------------------------------------------
    def newest_version(self, name: str) -> str | None:
        """The newest registered version of orchestrator ``name`` (None: not registered)."""
        versions = self.orchestrator_versions.get(name)
        if not versions:
            return None
        return max(versions, key=version_key)

    def resolve_orchestrator(
        self, name: str, version: str | None = None
    ) -> tuple[str, Callable[..., Any]] | None:
        """(version, function) of orchestrator ``name`` at ``version`` (None: the newest one)."""
        versions = self.orchestrator_versions.get(name)
        if not versions:
            return None
        ver = max(versions, key=version_key) if version is None else version
        fn = versions.get(ver)
        return (ver, fn) if fn is not None else None

    def can_run(self, name: str, version: str | None) -> bool:
        """Whether a step of orchestrator ``name`` pinned to ``version`` (None: not pinned yet) runs here."""
        return self.resolve_orchestrator(name, version) is not None

    def capabilities(self) -> list[str]:
        """What this worker advertises: every (orchestrator, version), "any version" of each
        orchestrator name, every activity and every entity."""
        caps: list[str] = []
        for name, versions in sorted(self.orchestrator_versions.items()):
            caps.append(capability("o", name))
            caps.extend(capability("o", name, v) for v in sorted(versions, key=version_key))
        caps.extend(capability("a", name) for name in sorted(self.activities))
        caps.extend(capability("e", name) for name in sorted(self.entities))
        return caps
