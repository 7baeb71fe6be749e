"""``durable orchestration start|list|describe|history|raise-event`` (and the lifecycle commands of
:mod:`durable._cli.lifecycle`: terminate|suspend|resume|purge|rewind|restart).

The JSON output is the ops HTTP API's (:func:`durable._ops_views.state_json`,
:func:`durable._ops_views.history_event_json`); see :mod:`durable._cli_ops` for what every
command shares.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from typing import Any

from .._core.model import (
    OrchestrationAlreadyExistsError,
    OrchestrationNotFoundError,
    OrchestrationState,
    OrchestrationStatus,
)
from .._core.serialization import PayloadTooLargeError, SerializationError
from .._ops.views import history_event_json, state_json
from .._store import queries as q
from .common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    Commands,
    Outcome,
    Session,
    command_group,
    compact_json,
    existing_client,
    fmt_cell,
    fmt_iso,
    fmt_time,
    instance_command,
    iso_arg,
    json_arg,
    leaf,
    missing_instance,
    positive_int_arg,
    positive_seconds_arg,
    render_fields,
    render_table,
    status_arg,
)
from .lifecycle import add_lifecycle_commands

__all__ = ["register"]


# ------------------------------------------------------------------------------------------------
# argument types


def _tag_arg(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


# ------------------------------------------------------------------------------------------------
# commands


def _state_text(data: Mapping[str, Any]) -> str:
    failure = data.get("failure_details")
    pairs = [
        ("Instance ID", q.text(data["instance_id"])),
        ("Name", q.text(data["name"])),
        ("Version", q.text(data.get("version")) or "-"),
        ("Status", q.text(data["runtime_status"])),
        ("Created", fmt_iso(data.get("created_at"))),
        ("Last updated", fmt_iso(data.get("last_updated_at"))),
        ("Scheduled start", fmt_iso(data.get("scheduled_start_at"))),
        ("Parent", q.text(data.get("parent_instance_id")) or "-"),
        ("Tags", ", ".join(f"{k}={v}" for k, v in (data.get("tags") or {}).items()) or "-"),
        ("Input", compact_json(data.get("input"))),
        ("Output", compact_json(data.get("output"))),
        ("Custom status", compact_json(data.get("custom_status"))),
        ("Failure", f"{failure['error_type']}: {failure['message']}" if failure else "-"),
    ]
    cause = failure.get("inner_failure") if failure else None
    while isinstance(cause, Mapping):
        pairs.append(("Caused by", f"{cause['error_type']}: {cause['message']}"))
        cause = cause.get("inner_failure")
    return render_fields(pairs)


def _check_start(args: argparse.Namespace) -> None:
    if args.timeout is not None and not args.wait:
        raise CommandError("--timeout requires --wait", EXIT_USAGE)


async def orchestration_start(session: Session, args: argparse.Namespace) -> Outcome:
    client = await session.client(create_hub=True)
    try:
        iid = await client.schedule_new_orchestration(
            args.name, input=args.input, instance_id=args.id, start_at=args.start_at, version=args.version
        )
    except OrchestrationAlreadyExistsError as exc:
        raise CommandError(str(exc)) from None
    except PayloadTooLargeError as exc:
        raise CommandError(str(exc)) from None
    except (SerializationError, ValueError) as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    if not args.wait:
        return Outcome({"instance_id": iid}, f"Started orchestration {args.name!r}: {iid}")
    timeout = args.timeout if args.timeout is not None else math.inf
    try:
        state = await client.wait_for_orchestration_completion(iid, timeout=timeout)
    except TimeoutError:
        current = await client.get_orchestration_state(iid)
        data = state_json(current) if current is not None else {"instance_id": iid}
        text = _state_text(data) if current is not None else iid
        return Outcome(
            data, text, EXIT_FAILURE, f"orchestration {iid!r} did not finish within {args.timeout:g}s"
        )
    data = state_json(state)
    completed = state.runtime_status == OrchestrationStatus.COMPLETED
    note = None if completed else f"orchestration {iid!r} ended {state.runtime_status.name}"
    return Outcome(data, _state_text(data), EXIT_OK if completed else EXIT_FAILURE, note)


async def orchestration_list(session: Session, args: argparse.Namespace) -> Outcome:
    statuses = [s for group in args.status or [] for s in group]
    states: list[OrchestrationState] = []
    token: str | None = args.continuation_token
    if session.hub_exists:
        client = await session.client()
        while True:
            try:
                page = await client.list_orchestrations(
                    status=list(statuses) or None,
                    name=args.name,
                    created_from=args.created_from,
                    created_to=args.created_to,
                    tags=dict(args.tag or []) or None,
                    limit=args.limit,
                    continuation_token=token,
                )
            except ValueError as exc:
                raise CommandError(str(exc), EXIT_USAGE) from None
            states.extend(page)
            token = page.continuation_token
            if not args.all or token is None:
                break
    more = f"more: --continuation-token {token}" if token else None
    data = [state_json(s) for s in states]
    rows = [
        [
            fmt_cell(s.instance_id, 40),
            fmt_cell(s.name, 40),
            s.runtime_status.name,
            fmt_time(s.created_at),
            fmt_time(s.last_updated_at),
        ]
        for s in states
    ]
    if not rows:
        return Outcome(data, "", note=more or "no orchestrations found")
    return Outcome(
        data, render_table(["instance id", "name", "status", "created", "updated"], rows), note=more
    )


async def orchestration_describe(session: Session, args: argparse.Namespace) -> Outcome:
    client = await existing_client(session, args.instance_id)
    state = await client.get_orchestration_state(args.instance_id)
    if state is None:
        raise missing_instance(session, args.instance_id)
    data = state_json(state)
    text = _state_text(data)
    failure = state.failure_details
    if failure is not None and failure.stack_trace:
        text += "\nStack trace:\n" + "\n".join(
            "  " + line for line in failure.stack_trace.rstrip().splitlines()
        )
    return Outcome(data, text)


_HISTORY_COLUMNS = ("event_id", "kind", "timestamp", "name", "tid")


def _history_summary(event: Mapping[str, Any]) -> str:
    parts: list[str] = []
    for key, value in event.items():
        if key in _HISTORY_COLUMNS or value is None:
            continue
        if key == "failure" and isinstance(value, Mapping):
            parts.append(f"failure={value.get('error_type')}: {value.get('message')}")
        else:
            parts.append(
                f"{key}={value if isinstance(value, str) and key == 'fire_at' else compact_json(value)}"
            )
    return " ".join(parts)


async def orchestration_history(session: Session, args: argparse.Namespace) -> Outcome:
    client = await existing_client(session, args.instance_id)
    if await client.get_orchestration_state(args.instance_id) is None:
        raise missing_instance(session, args.instance_id)
    events = [history_event_json(e) for e in await client.get_orchestration_history(args.instance_id)]
    rows = []
    for e in events:
        name, tid = e.get("name"), e.get("tid")
        label = " ".join(
            p for p in (q.text(name) if name is not None else "", f"#{tid}" if tid is not None else "") if p
        )
        rows.append(
            [
                q.text(e.get("event_id")),
                q.text(e.get("kind")),
                fmt_iso(e.get("timestamp"), millis=True),
                fmt_cell(label, 40),
                fmt_cell(_history_summary(e), 80),
            ]
        )
    return Outcome(events, render_table(["eid", "kind", "time", "name/tid", "summary"], rows))


async def orchestration_raise_event(session: Session, args: argparse.Namespace) -> Outcome:
    client = await existing_client(session, args.instance_id)
    try:
        await client.raise_orchestration_event(args.instance_id, args.event, data=args.data)
    except OrchestrationNotFoundError:
        raise missing_instance(session, args.instance_id) from None
    except (SerializationError, PayloadTooLargeError) as exc:
        raise CommandError(str(exc)) from None
    return Outcome(
        {"instance_id": args.instance_id, "event": args.event},
        f"Raised event {args.event!r} on orchestration {args.instance_id!r}.",
    )


# ------------------------------------------------------------------------------------------------
# argument parsing


def register(commands: Commands) -> None:
    """Add ``durable orchestration ...``."""
    sub = command_group(
        commands,
        "orchestration",
        "start, list, inspect and control orchestration instances",
        "Start, list, inspect and control the orchestration instances of a hub.",
    )

    p = leaf(
        sub,
        "start",
        orchestration_start,
        "start an orchestration",
        "Schedule a new instance of orchestrator NAME (registered by a worker) and print its id "
        '(JSON: {"instance_id": ...}). With --wait, wait until it finishes and print its final '
        "state (as 'describe' does); the exit code is then 0 only when it COMPLETED.",
    )
    p.add_argument("name", metavar="NAME", help="the orchestrator's registered name")
    p.add_argument("--input", type=json_arg, metavar="JSON", help="the input, as JSON (default: null)")
    p.add_argument("--id", metavar="ID", help="the instance id (default: a random one)")
    p.add_argument(
        "--start-at",
        type=iso_arg,
        metavar="ISO",
        help="start at this ISO-8601 time instead of now (no offset: UTC)",
    )
    p.add_argument(
        "--version",
        metavar="V",
        help="pin the instance to version V of the orchestrator (default: the newest version of "
        "the worker that runs its first step)",
    )
    p.add_argument("--wait", action="store_true", help="wait until the orchestration finishes")
    p.add_argument(
        "--timeout",
        type=positive_seconds_arg,
        metavar="S",
        help="with --wait: give up after S seconds (exit 1)",
    )
    p.set_defaults(ops_check=_check_start)

    p = leaf(
        sub,
        "list",
        orchestration_list,
        "list orchestration instances",
        "List orchestration instances, newest first, filtered by status, name and creation time.",
    )
    p.add_argument(
        "--status",
        type=status_arg,
        nargs="+",
        action="extend",
        metavar="S",
        help="only these statuses (repeatable, comma-separated): "
        + ", ".join(s.name for s in OrchestrationStatus),
    )
    p.add_argument("--name", metavar="N", help="only instances of orchestrator N")
    p.add_argument(
        "--limit", type=positive_int_arg, default=100, metavar="N", help="at most N (default: 100)"
    )
    p.add_argument("--created-from", type=iso_arg, metavar="ISO", help="created at or after (no offset: UTC)")
    p.add_argument("--created-to", type=iso_arg, metavar="ISO", help="created at or before (no offset: UTC)")
    p.add_argument(
        "--tag",
        type=_tag_arg,
        action="append",
        metavar="K=V",
        help="only instances with tag K set to V (repeatable: all must match)",
    )
    p.add_argument(
        "--continuation-token",
        metavar="T",
        help="the page after the one that printed 'more: --continuation-token T'",
    )
    p.add_argument("--all", action="store_true", help="every page (--limit is then the page size)")

    instance_command(
        sub,
        "describe",
        orchestration_describe,
        "show an orchestration's state",
        "Show the state of one orchestration instance: status, times, input, output, custom "
        "status and failure.",
    )

    instance_command(
        sub,
        "history",
        orchestration_history,
        "show an orchestration's history events",
        "Show the history events of the current execution of an orchestration instance.",
    )

    p = instance_command(
        sub,
        "raise-event",
        orchestration_raise_event,
        "send an external event to an orchestration",
        "Deliver external event EVENT to an orchestration instance; it is buffered until the "
        "orchestration waits for it.",
    )
    p.add_argument("event", metavar="EVENT", help="the event name")
    p.add_argument("--data", type=json_arg, metavar="JSON", help="the event's data, as JSON (default: null)")

    add_lifecycle_commands(sub)
