"""``durable orchestration start|list|describe|history|raise-event|terminate|suspend|resume|purge|
rewind|restart``.

The JSON output is the ops HTTP API's (:func:`durable._ops_views.state_json`,
:func:`durable._ops_views.history_event_json`); see :mod:`durable._cli_ops` for what every
command shares.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import re
from collections.abc import Mapping
from typing import Any

from .._client import AsyncClient
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
    Command,
    CommandError,
    Commands,
    HubMissingError,
    Outcome,
    Session,
    command_group,
    compact_json,
    fmt_cell,
    fmt_iso,
    fmt_time,
    iso_arg,
    json_arg,
    leaf,
    positive_int_arg,
    render_fields,
    render_table,
    status_arg,
)

__all__ = ["register"]


# ------------------------------------------------------------------------------------------------
# argument types


def _termination_output_arg(text: str) -> Any:
    try:
        return json_arg(text)
    except argparse.ArgumentTypeError as exc:
        if text.strip().lower() in ("json", "table"):
            raise argparse.ArgumentTypeError(
                f"{exc} (on 'terminate', --output is the termination output as JSON; "
                f"use --format {text.strip().lower()} to choose the output format)"
            ) from None
        raise


def _seconds_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _tag_arg(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def _age_arg(text: str) -> _dt.timedelta:
    """A duration such as ``90s``, ``30m``, ``12h``, ``7d`` or ``2w`` (a bare number: seconds)."""
    match = _DURATION.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"expected a duration such as 30m, 12h or 7d, got {text!r}")
    return _dt.timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2).lower()])


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


def _missing_instance(session: Session, instance_id: str) -> CommandError:
    hint = "" if session.hub_exists else f" (hub {session.hub!r} does not exist)"
    return CommandError(f"no orchestration with id {instance_id!r} in hub {session.hub!r}{hint}")


async def _existing_client(session: Session, instance_id: str) -> AsyncClient:
    try:
        return await session.client()
    except HubMissingError:
        raise _missing_instance(session, instance_id) from None


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
    client = await _existing_client(session, args.instance_id)
    state = await client.get_orchestration_state(args.instance_id)
    if state is None:
        raise _missing_instance(session, args.instance_id)
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
    client = await _existing_client(session, args.instance_id)
    if await client.get_orchestration_state(args.instance_id) is None:
        raise _missing_instance(session, args.instance_id)
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
    client = await _existing_client(session, args.instance_id)
    try:
        await client.raise_orchestration_event(args.instance_id, args.event, data=args.data)
    except OrchestrationNotFoundError:
        raise _missing_instance(session, args.instance_id) from None
    except (SerializationError, PayloadTooLargeError) as exc:
        raise CommandError(str(exc)) from None
    return Outcome(
        {"instance_id": args.instance_id, "event": args.event},
        f"Raised event {args.event!r} on orchestration {args.instance_id!r}.",
    )


async def orchestration_terminate(session: Session, args: argparse.Namespace) -> Outcome:
    client = await _existing_client(session, args.instance_id)
    try:
        await client.terminate_orchestration(
            args.instance_id, output=args.termination_output, recursive=args.recursive
        )
    except OrchestrationNotFoundError:
        raise _missing_instance(session, args.instance_id) from None
    except (SerializationError, PayloadTooLargeError) as exc:
        raise CommandError(str(exc)) from None
    return Outcome(
        {"instance_id": args.instance_id, "action": "terminate"},
        f"Requested termination of orchestration {args.instance_id!r}.",
    )


async def _suspend_or_resume(session: Session, args: argparse.Namespace, action: str) -> Outcome:
    client = await _existing_client(session, args.instance_id)
    method = client.suspend_orchestration if action == "suspend" else client.resume_orchestration
    try:
        await method(args.instance_id, reason=args.reason)
    except OrchestrationNotFoundError:
        raise _missing_instance(session, args.instance_id) from None
    verb = "suspension" if action == "suspend" else "resumption"
    return Outcome(
        {"instance_id": args.instance_id, "action": action},
        f"Requested {verb} of orchestration {args.instance_id!r}.",
    )


async def orchestration_suspend(session: Session, args: argparse.Namespace) -> Outcome:
    return await _suspend_or_resume(session, args, "suspend")


async def orchestration_resume(session: Session, args: argparse.Namespace) -> Outcome:
    return await _suspend_or_resume(session, args, "resume")


def _purge_filters(args: argparse.Namespace) -> dict[str, Any]:
    statuses = [s for group in args.status or [] for s in group]
    created_to = args.created_to
    if args.older_than is not None:
        cutoff = _dt.datetime.now(_dt.UTC) - args.older_than
        created_to = cutoff if created_to is None else min(created_to, cutoff)
    return {
        "status": statuses or None,
        "name": args.name,
        "created_from": args.created_from,
        "created_to": created_to,
    }


def _check_purge(args: argparse.Namespace) -> None:
    filters = _purge_filters(args)
    if args.instance_id is not None and any(v is not None for v in filters.values()):
        raise CommandError("give an instance id or filters, not both", EXIT_USAGE)
    if args.instance_id is None and all(v is None for v in filters.values()) and not args.all:
        raise CommandError(
            "give an instance id, or filters (--status, --name, --older-than, --created-from, "
            "--created-to), or --all",
            EXIT_USAGE,
        )
    if args.instance_id is None and any(not s.is_terminal for s in filters["status"] or []):
        raise CommandError(
            "only terminal instances (COMPLETED, FAILED, TERMINATED) can be purged", EXIT_USAGE
        )


async def orchestration_purge(session: Session, args: argparse.Namespace) -> Outcome:
    if args.instance_id is None:
        if not session.hub_exists:
            return Outcome({"purged": 0}, "Purged 0 orchestrations.")
        client = await session.client()
        try:
            count = await client.purge_orchestrations(**_purge_filters(args), timeout=args.timeout)
        except TimeoutError as exc:
            raise CommandError(str(exc)) from None
        return Outcome({"purged": count}, f"Purged {count} orchestration{'' if count == 1 else 's'}.")
    client = await _existing_client(session, args.instance_id)
    try:
        purged = await client.purge_orchestration(args.instance_id, recursive=args.recursive)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if not purged:
        raise _missing_instance(session, args.instance_id)
    return Outcome(
        {"instance_id": args.instance_id, "purged": True}, f"Purged orchestration {args.instance_id!r}."
    )


async def orchestration_rewind(session: Session, args: argparse.Namespace) -> Outcome:
    client = await _existing_client(session, args.instance_id)
    try:
        await client.rewind_orchestration(args.instance_id, reason=args.reason, timeout=args.timeout)
    except OrchestrationNotFoundError:
        raise _missing_instance(session, args.instance_id) from None
    except (ValueError, TimeoutError) as exc:
        raise CommandError(str(exc)) from None
    return Outcome(
        {"instance_id": args.instance_id, "action": "rewind"},
        f"Rewound orchestration {args.instance_id!r}: its failed steps run again.",
    )


async def orchestration_restart(session: Session, args: argparse.Namespace) -> Outcome:
    client = await _existing_client(session, args.instance_id)
    try:
        iid = await client.restart_orchestration(args.instance_id, new_instance_id=args.new_id)
    except OrchestrationNotFoundError:
        raise _missing_instance(session, args.instance_id) from None
    except (ValueError, OrchestrationAlreadyExistsError) as exc:
        raise CommandError(str(exc)) from None
    return Outcome(
        {"instance_id": iid, "restarted": args.instance_id},
        f"Restarted orchestration {args.instance_id!r}"
        + (f" as {iid!r}." if iid != args.instance_id else "."),
    )


# ------------------------------------------------------------------------------------------------
# argument parsing


def _instance_command(
    sub: Commands, name: str, command: Command, summary: str, description: str
) -> argparse.ArgumentParser:
    """A command on one orchestration instance: its first argument is the instance id."""
    parser = leaf(sub, name, command, summary, description)
    parser.add_argument("instance_id", metavar="ID", help="the instance id")
    return parser


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
        "--timeout", type=_seconds_arg, metavar="S", help="with --wait: give up after S seconds (exit 1)"
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

    _instance_command(
        sub,
        "describe",
        orchestration_describe,
        "show an orchestration's state",
        "Show the state of one orchestration instance: status, times, input, output, custom "
        "status and failure.",
    )

    _instance_command(
        sub,
        "history",
        orchestration_history,
        "show an orchestration's history events",
        "Show the history events of the current execution of an orchestration instance.",
    )

    p = _instance_command(
        sub,
        "raise-event",
        orchestration_raise_event,
        "send an external event to an orchestration",
        "Deliver external event EVENT to an orchestration instance; it is buffered until the "
        "orchestration waits for it.",
    )
    p.add_argument("event", metavar="EVENT", help="the event name")
    p.add_argument("--data", type=json_arg, metavar="JSON", help="the event's data, as JSON (default: null)")

    p = leaf(
        sub,
        "terminate",
        orchestration_terminate,
        "terminate an orchestration",
        "Terminate an orchestration instance: its status becomes TERMINATED with the given "
        "output. Here --output is the termination output; choose the output format with --format.",
        output_flag=False,
    )
    p.add_argument("instance_id", metavar="ID", help="the instance id")
    p.add_argument(
        "--output",
        dest="termination_output",
        type=_termination_output_arg,
        metavar="JSON",
        help="the termination output, as JSON (default: null)",
    )
    _recursive_flag(p, "terminate its running sub-orchestrations too, transitively")

    for action, command, summary in (
        ("suspend", orchestration_suspend, "suspend an orchestration"),
        ("resume", orchestration_resume, "resume a suspended orchestration"),
    ):
        p = _instance_command(
            sub,
            action,
            command,
            summary,
            f"{summary[0].upper()}{summary[1:]}. Events that arrive while it is suspended are kept "
            "and applied on resume.",
        )
        p.add_argument("--reason", metavar="R", help="a reason, recorded in the history")

    p = leaf(
        sub,
        "purge",
        orchestration_purge,
        "delete finished orchestrations",
        "Delete a finished (completed, failed or terminated) orchestration instance and everything "
        "it owns, with its sub-orchestrations; a running one is refused (exit 1): terminate it first. "
        "Without an ID, delete every finished instance that matches the filters (each partition's "
        "worker purges its part in batches; workers must be running) and print how many.",
    )
    p.add_argument("instance_id", metavar="ID", nargs="?", help="the instance id")
    _recursive_flag(p, "purge its sub-orchestrations too, transitively")
    p.add_argument(
        "--status",
        type=status_arg,
        nargs="+",
        action="extend",
        metavar="S",
        help="without ID: only these statuses (COMPLETED, FAILED, TERMINATED; comma-separated)",
    )
    p.add_argument("--name", metavar="N", help="without ID: only instances of orchestrator N")
    p.add_argument(
        "--older-than",
        type=_age_arg,
        metavar="AGE",
        help="without ID: only instances created longer ago than AGE (30m, 12h, 7d, 2w)",
    )
    p.add_argument("--created-from", type=iso_arg, metavar="ISO", help="without ID: created at or after")
    p.add_argument("--created-to", type=iso_arg, metavar="ISO", help="without ID: created at or before")
    p.add_argument("--all", action="store_true", help="without ID and filters: every finished instance")
    p.add_argument(
        "--timeout", type=_seconds_arg, default=300.0, metavar="S", help="without ID: wait at most S seconds"
    )
    p.set_defaults(ops_check=_check_purge)

    p = _instance_command(
        sub,
        "rewind",
        orchestration_rewind,
        "rewind a failed orchestration",
        "Bring a FAILED orchestration back to RUNNING: its failed activity and sub-orchestration "
        "calls are forgotten and run again, its successful steps are not. Waits until a worker "
        "applied it; exit 1 when the instance has not failed or cannot be rewound.",
    )
    p.add_argument("--reason", metavar="R", help="a reason, recorded in the history")
    p.add_argument("--timeout", type=_seconds_arg, default=60.0, metavar="S", help="wait at most S seconds")

    p = _instance_command(
        sub,
        "restart",
        orchestration_restart,
        "restart a finished orchestration",
        "Start a finished orchestration again with the same input: a new execution under the same "
        "id (its old history is replaced), or with --new-id under a new id, which is printed.",
    )
    p.add_argument("--new-id", action="store_true", help="run it under a new instance id")


def _recursive_flag(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--recursive",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"{what} (default; --no-recursive: only the instance itself)",
    )
