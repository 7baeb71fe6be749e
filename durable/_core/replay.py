"""The replay check: replay recorded histories against the code a worker registers, writing
nothing, and report each one that would hit non-determinism, with the first mismatching event.

Pure: histories come in as lists of event dicts, in any of three forms: as stored (payloads are
encoded bytes), as :meth:`Client.get_orchestration_history` returns them (payloads decoded), or as
``durable orchestration history ID --output json`` prints them (``event_id``, ``kind``,
``timestamp`` and JSON payloads).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import events as ev
from .context import NameOf
from .executor import OrchestrationExecutor, VersionResolver
from .model import OrchestrationStatus, datetime_to_ms
from .registry import UNVERSIONED
from .serialization import encode

#: failures the engine records on its own (not outcomes of the orchestrator code)
ENGINE_FAILURES = frozenset(
    {
        "PoisonMessageError",
        "HistoryLimitExceededError",
        "NonDeterminismError",
        "OrchestrationNotFoundError",
    }
)
_PAYLOAD_FIELDS = ("input", "result", "output")


@dataclass(frozen=True)
class ReplayResult:
    """The outcome of replaying one instance's history."""

    instance_id: str
    name: str
    version: str
    #: True when the code replays the history cleanly
    ok: bool
    #: why it does not (the non-determinism message), when it does not
    error: str | None = None
    #: the first history event the code does not match (as given), when there is one
    event: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "instance_id": self.instance_id,
            "name": self.name,
            "version": self.version,
            "ok": self.ok,
            "error": self.error,
            "event_id": None if self.event is None else self.event.get("eid"),
            "event_kind": None if self.event is None else self.event.get("k"),
        }


def _ms(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return datetime_to_ms(_dt.datetime.fromisoformat(value))
        except ValueError:
            return value
    return value


def normalize_event(event: Mapping[str, Any], *, payloads_encoded: bool) -> dict[str, Any]:
    """One history event in the stored form (``k``, ``eid``, ``ts``, encoded payloads)."""
    if "k" not in event and "kind" in event:  # the JSON export of the CLI and the ops API
        out: dict[str, Any] = {"k": event["kind"], "eid": event.get("event_id")}
        out["ts"] = _ms(event.get("timestamp"))
        out.update({k: v for k, v in event.items() if k not in ("kind", "event_id", "timestamp")})
        if "fire_at" in out:
            out["fire_at"] = _ms(out["fire_at"])
        payloads_encoded = False
    else:
        out = dict(event)
    if not payloads_encoded:
        for key in _PAYLOAD_FIELDS:
            if key in out and out[key] is not None:
                out[key] = encode(out[key], what=f"the {key} of a history event")
    return out


def replay_one(
    instance_id: str,
    history: list[dict[str, Any]],
    resolve_version: VersionResolver,
    name_of: NameOf,
    *,
    strict: bool = False,
) -> ReplayResult:
    """Replay one history (stored form) against the registered code."""
    started = next((e for e in history if e.get("k") == ev.EXECUTION_STARTED), None)
    if started is None:
        return ReplayResult(instance_id, "", UNVERSIONED, True)  # never started: nothing to replay
    name = str(started.get("name", ""))
    version = started.get("ver", UNVERSIONED)
    if version is not None and resolve_version(name, version) is None:
        label = f" version {version!r}" if version else ""
        return ReplayResult(
            instance_id,
            name,
            version,
            False,
            f"no orchestrator named {name!r}{label} is registered by this code",
            started,
        )
    executor = OrchestrationExecutor(
        instance_id,
        lambda n: None,
        name_of,
        resolve_version=resolve_version,
        strict=strict,
    )
    events = [dict(e) for e in history]
    executor.replay(events)
    version = executor.version
    error = executor.replay_error
    if error is not None:
        at = executor.replay_failed_at
        event = history[at] if at is not None and at < len(history) else None
        return ReplayResult(instance_id, name, version, False, str(error), event)
    last = history[-1] if history else {}
    if last.get("k") == ev.EXECUTION_COMPLETED:
        problem = _outcome_mismatch(executor, last)
        if problem is not None:
            return ReplayResult(instance_id, name, version, False, problem, last)
    return ReplayResult(instance_id, name, version, True)


def _outcome_mismatch(executor: OrchestrationExecutor, completed: Mapping[str, Any]) -> str | None:
    """A finished history: the code must finish the same way (unless the engine ended it)."""
    status = str(completed.get("status", ""))
    failure = completed.get("failure") or {}
    engine_made = isinstance(failure, Mapping) and failure.get("error_type") in ENGINE_FAILURES
    if status == OrchestrationStatus.TERMINATED.value or (
        status == OrchestrationStatus.FAILED.value and engine_made
    ):
        return None
    if not executor.is_done:
        return f"the history ends {status} here, but the code is still waiting for more work"
    if executor.status.value != status:
        return f"the history ends {status} here, but the code now ends {executor.status.value}"
    return None


def replay_many(
    histories: Iterable[tuple[str, list[dict[str, Any]]]],
    resolve_version: VersionResolver,
    name_of: NameOf,
    *,
    payloads_encoded: bool = False,
    on_result: Callable[[ReplayResult], None] | None = None,
) -> list[ReplayResult]:
    """Replay (instance id, history) pairs; histories in any of the accepted forms."""
    results: list[ReplayResult] = []
    for instance_id, raw in histories:
        history = [normalize_event(e, payloads_encoded=payloads_encoded) for e in raw]
        result = replay_one(instance_id, history, resolve_version, name_of)
        if on_result is not None:
            on_result(result)
        results.append(result)
    return results
