"""Loading an application's :class:`~durable.Worker` from ``MODULE:ATTR`` (``durable worker``,
``durable replay-check``)."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from .._worker import Worker


class UsageError(Exception):
    """A bad command line or environment: reported on stderr, exit code 2."""


def load_worker(spec: str) -> Worker:
    """Import ``MODULE:ATTR`` (ATTR defaults to ``worker``) and return the Worker it names.

    ATTR may be a dotted path and may name a zero-argument callable that returns a Worker. The
    current directory is put on the import path first, as ``python -m`` does.
    """
    module_name, _, attr = spec.partition(":")
    module_name, attr = module_name.strip(), (attr.strip() or "worker")
    if not module_name or spec.count(":") > 1:
        raise UsageError(f"expected MODULE:ATTR (e.g. orchestrations.patterns:worker), got {spec!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise UsageError(
                f"cannot import {module_name!r}: no module named {missing!r} "
                f"(looked in {cwd} and on PYTHONPATH)"
            ) from None
        raise
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(target, Worker) and callable(target):
        target = target()
    if not isinstance(target, Worker):
        raise UsageError(f"{spec!r} is a {type(target).__qualname__}, not a durable.Worker")
    return target
