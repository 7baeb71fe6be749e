"""Entities whose code runs in a remote executor (a Durable Task SDK worker behind ``durable sidecar``).

Pure, like the entity batch executor it extends. The partition owner still applies every message
to such an entity itself (locks, the waiting queue, de-duplication, delayed signals are the
engine's, exactly as for a native entity); only the operations themselves run elsewhere. An
operation that passes the lock and de-duplication checks is appended to the entity's remote list
(``EntityRecord.remote``: ``[token, sent, operations, handed out at]``) instead of being run.
When no work item is out, the owner hands the waiting operations out as one work item (a fresh
token; ``sent``: how many it carries). The executor's reply (:data:`MSG_REMOTE_RESULT`, with
the token) comes back through the entity's partition inbox; the owner commits it only if its
token is the outstanding one, so a late, repeated or abandoned reply changes nothing: the new
state, the call responses and the messages the operations sent are committed together, exactly
once. The observer hears of each operation of a committed reply (:meth:`OperationObserver.ran`:
the worker's spans), with the work item's token, the operation's place in it and when the item
was handed out.

Operations run in the order they were accepted; the messages an operation sends leave when its
batch's reply is committed (after lock messages the entity handled meanwhile).
"""

from __future__ import annotations

import uuid
from typing import Any

from . import events as ev
from .entity_batch import EntityBatch
from .model import FailureDetails

#: inbox message kind: an executor's reply to a work item (orchestration step or entity batch)
MSG_REMOTE_RESULT = "remote_result"


class RemoteEntityBatch(EntityBatch):
    """Applies a batch of messages to an entity whose operations run in a remote executor.

    After :meth:`run`, :attr:`dispatched` is the token of a new work item to hand out (or None).
    """

    dispatched: str | None = None

    def _missing(self) -> bool:
        return False

    def _remote(self) -> tuple[str, int, list[dict[str, Any]]]:
        raw = self.record.remote
        if not raw:
            return "", 0, []
        return str(raw[0]), int(raw[1]), list(raw[2])

    def _handed_out(self) -> int:
        """When the outstanding work item was handed out (ms; the step's time); 0: unknown."""
        raw = self.record.remote
        return int(raw[3]) if len(raw) > 3 and raw[3] else 0

    def _set_remote(self, token: str, sent: int, ops: list[dict[str, Any]], at: int = 0) -> None:
        self.record.remote = ([token, sent, ops, at] if at else [token, sent, ops]) if token or ops else []

    def run(self, msgs: Any) -> Any:
        others: list[dict[str, Any]] = []
        for msg in msgs:
            if msg.get("kind") == MSG_REMOTE_RESULT:
                self._result(msg)
            else:
                others.append(msg)
        result = super().run(others)
        token, _, ops = self._remote()
        if not token and ops:
            self.dispatched = uuid.uuid4().hex
            self._set_remote(self.dispatched, len(ops), ops, self.now_ms)
        return result

    def _execute(self, msg: dict[str, Any], kind: str, op: str) -> None:
        token, sent, ops = self._remote()
        ops.append({k: v for k, v in msg.items() if not k.startswith("_")})
        self._set_remote(token, sent, ops, self._handed_out())

    def _result(self, msg: dict[str, Any]) -> None:
        token, sent, ops = self._remote()
        if not token or msg.get("token") != token:
            return  # late, repeated, or for an abandoned work item
        handed_out = self._handed_out()
        done, rest = ops[:sent], ops[sent:]
        self._set_remote("", 0, rest)
        batch_failure = FailureDetails.from_record(msg.get("failure"))
        results: list[dict[str, Any]] = list(msg.get("results") or ())
        result = self.result
        for i, op in enumerate(done):
            outcome = results[i] if i < len(results) and batch_failure is None else None
            failure = batch_failure
            if outcome is None and failure is None:
                failure = FailureDetails("the entity worker returned no result", "EntityBatchError")
            elif outcome is not None:
                failure = FailureDetails.from_record(outcome.get("failure"))
            if failure is None:
                result.completed += 1
            else:
                result.failed += 1
            if self.observer is not None:
                self.observer.ran(self.target, str(op.get("op", "")), op, (token, i), handed_out, failure)
            if op.get("kind") == ev.MSG_CALL:
                self._respond(op, None if outcome is None else outcome.get("result"), failure)
            elif failure is not None:
                result.signal_failures.append((str(op.get("op", "")), failure))
        if batch_failure is not None:
            return  # nothing of the batch is kept
        had_state = self.record.state is not None
        self.record.state = msg.get("state")
        result.deleted = self.record.state is None and (had_state or result.deleted)
        for out in msg.get("actions") or ():
            out = dict(out)
            if out.get("kind") == ev.MSG_START:
                out.setdefault("exec", uuid.uuid4().hex)
                out.setdefault("created", self.now_ms)
            result.out.append(out)
