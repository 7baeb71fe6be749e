"""``ctx.logger``: a replay-safe logger for orchestrator code.

Orchestrator code runs again over its recorded history whenever a worker rebuilds an instance, so
a plain ``logging`` call would print its line once per replay. :class:`ReplaySafeLogger` drops
records while the context replays, and adds the instance's id, name and version to each record.

The worker goes one step further: it asks the context to keep the step's records
(``ctx._log_records``) and emits them only once the step has committed, so a step that fails to
commit and runs again (on this worker or another) writes its lines once.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .context import OrchestrationContext

#: the logger ``ctx.logger`` writes to (a child of ``durable``)
LOGGER_NAME = "durable.orchestration"


class ReplaySafeLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A :class:`logging.LoggerAdapter` over ``durable.orchestration`` that is silent during replay.

    Each record carries ``instance_id``, ``orchestration_name`` and ``orchestration_version``
    (use them in a formatter: ``%(instance_id)s``)."""

    def __init__(self, ctx: OrchestrationContext, logger: logging.Logger | None = None) -> None:
        super().__init__(logger or logging.getLogger(LOGGER_NAME), {})
        self._ctx = ctx

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        ctx = self._ctx
        extra = {
            "instance_id": ctx.instance_id,
            "orchestration_name": ctx._name,
            "orchestration_version": getattr(ctx, "version", None),
        }
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        return msg, kwargs

    def isEnabledFor(self, level: int) -> bool:
        return not self._ctx.is_replaying and self.logger.isEnabledFor(level)

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        msg, processed = self.process(msg, kwargs)
        kwargs = dict(processed)
        records = self._ctx._log_records
        if records is None:
            kwargs["stacklevel"] = int(kwargs.get("stacklevel", 1)) + 1
            self.logger.log(level, msg, *args, **kwargs)
            return
        if not isinstance(records, list):  # kept, none yet (the shared empty tuple of a cached context)
            records = self._ctx._log_records = []
        exc_info = kwargs.get("exc_info")
        if exc_info and not isinstance(exc_info, tuple):
            exc_info = (
                (type(exc_info), exc_info, exc_info.__traceback__)
                if isinstance(exc_info, BaseException)
                else sys.exc_info()
            )
        stacklevel = int(kwargs.get("stacklevel", 1)) + 1
        try:
            fn, lno, func, sinfo = self.logger.findCaller(bool(kwargs.get("stack_info")), stacklevel)
        except ValueError:
            fn, lno, func, sinfo = "(unknown file)", 0, "(unknown function)", None
        record = self.logger.makeRecord(
            self.logger.name, level, fn, lno, msg, args, exc_info or None, func, kwargs["extra"], sinfo
        )
        records.append(record)


def emit(records: Iterable[logging.LogRecord]) -> None:
    """Hand kept records to their loggers (after the step that produced them committed)."""
    for record in records:
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)
