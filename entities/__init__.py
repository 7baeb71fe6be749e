"""Sample durable entities: the entity counterpart of :mod:`orchestrations`.

=============================  =================================================================
Pattern                        Where
=============================  =================================================================
Counter (function form)        :func:`entities.counter.counter` -- ``add``, ``get``, ``reset``
Bank account (class form)      :class:`entities.bank.Account` -- an :class:`~durable.Entity`
                               subclass; an operation that raises rolls back its state changes
Transfer (critical section)    :func:`entities.bank.transfer` -- an orchestration that locks
                               both accounts with ``ctx.lock_entities``
Scheduled signal               :class:`entities.reminder.Reminder` -- ``signal_at``
Entity signals entity          :class:`entities.scores.Player` signals its
                               :class:`entities.scores.Leaderboard`
IoT aggregator (wire format)   :func:`entities.telemetry.telemetry` -- fed by a plain ``XADD``
                               from any language (docs/wire-format.md)
=============================  =================================================================

Serve them with ``durable worker entities:worker``, or run them all with ``durable demo``
(:mod:`entities.demo`). Tests register them on their own worker with :func:`register`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from durable import Worker

from .bank import Account, transfer
from .counter import counter
from .reminder import Reminder
from .scores import Leaderboard, Player
from .telemetry import telemetry

#: Every entity of the samples (registered under their default names: counter, account, ...).
ENTITIES: tuple[Any, ...] = (counter, Account, Reminder, Player, Leaderboard, telemetry)
#: The orchestrators of the samples.
ORCHESTRATORS: tuple[Callable[..., Any], ...] = (transfer,)


def register(target: Worker) -> Worker:
    """Register every sample entity and orchestrator on ``target``; returns it."""
    for entity in ENTITIES:
        target.add_entity(entity)
    for orchestrator in ORCHESTRATORS:
        target.add_orchestrator(orchestrator)
    return target


#: A worker with every sample registered, for ``durable worker entities:worker``. Creating it
#: connects to nothing: its hub comes from ``$DURABLE_HUB`` (else ``default``) and its Redis
#: (``$DURABLE_REDIS_URL``, else an embedded server) is resolved when it starts.
worker = register(Worker())

__all__ = [
    "ENTITIES",
    "ORCHESTRATORS",
    "Account",
    "Leaderboard",
    "Player",
    "Reminder",
    "counter",
    "register",
    "telemetry",
    "transfer",
    "worker",
]
