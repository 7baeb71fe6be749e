"""Bank accounts: the class form of an entity, and a transfer in a critical section.

:class:`Account` is an :class:`~durable.Entity` subclass: every public method is an operation and
``self.state`` is the balance. An operation that raises leaves no trace: :meth:`Account.withdraw`
takes the money out *first* and raises when that overdraws the account, and the worker discards
the deduction (and any signal the operation sent), exactly as if it had never run.

:func:`transfer` moves money between two accounts inside ``ctx.lock_entities``: while the
orchestration holds both locks, no other operation on either account can interleave, so the
total of all balances never changes, however many transfers run at once. Locks are always taken
in one global order, so two transfers in opposite directions cannot deadlock.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from durable import Entity, EntityId, OrchestrationContext, Task, TaskFailedError

#: The registered name of :class:`Account` (entity ids ``@account@<key>``).
ACCOUNT = "account"


class InsufficientFundsError(ValueError):
    """A withdrawal larger than the balance."""


def _amount(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"the amount must be a positive integer, got {value!r}")
    return value


class Account(Entity):
    """A bank account; its state is the balance (an integer, 0 for a new account)."""

    state = 0

    def deposit(self, amount: int) -> int:
        """Add ``amount`` to the balance; returns the new balance."""
        self.state += _amount(amount)
        return int(self.state)

    def withdraw(self, amount: int) -> int:
        """Take ``amount`` out; returns the new balance. Overdrawing raises, and the deduction
        made just before is rolled back with the rest of the operation."""
        self.state -= _amount(amount)
        if self.state < 0:
            raise InsufficientFundsError(f"insufficient funds: balance {self.state + amount}, asked {amount}")
        return int(self.state)

    def balance(self) -> int:
        """The current balance."""
        return int(self.state)


def account(key: str) -> EntityId:
    """The id of account ``key``."""
    return EntityId(ACCOUNT, key)


def transfer(ctx: OrchestrationContext, request: dict[str, Any]) -> Generator[Task[Any], Any, Any]:
    """Move ``amount`` from account ``from`` to account ``to`` in a critical section.

    Input: ``{"from": key, "to": key, "amount": n}``. Output: ``{"transferred": true,
    "balances": {from: b1, to: b2}}``, or ``{"transferred": false, "reason": ...}`` when the
    withdrawal was refused (then neither account changed).
    """
    src, dst, amount = account(request["from"]), account(request["to"]), request["amount"]
    if src == dst:
        raise ValueError("a transfer needs two different accounts")
    with (yield ctx.lock_entities(src, dst)):
        try:
            left = yield ctx.call_entity(src, "withdraw", input=amount)
        except TaskFailedError as refused:
            return {"transferred": False, "reason": refused.details.message}
        arrived = yield ctx.call_entity(dst, "deposit", input=amount)
    return {"transferred": True, "balances": {src.key: left, dst.key: arrived}}
