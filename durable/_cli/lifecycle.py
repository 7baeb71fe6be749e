"""``durable orchestration terminate|suspend|resume|purge|rewind|restart``: the lifecycle commands.

They act on one instance (purge also on every finished instance that matches filters) through
the client's lifecycle methods; see :mod:`durable._cli.orchestration` for the rest of the group.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import re
from typing import Any

from .._core.model import OrchestrationAlreadyExistsError, OrchestrationNotFoundError
from .._core.serialization import PayloadTooLargeError, SerializationError
from .common import (
    EXIT_USAGE,
    CommandError,
    Commands,
    Outcome,
    Session,
    existing_client,
    instance_command,
    iso_arg,
    json_arg,
    leaf,
    missing_instance,
    positive_seconds_arg,
    status_arg,
)

__all__ = ["add_lifecycle_commands"]


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


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def _age_arg(text: str) -> _dt.timedelta:
    """A duration such as ``90s``, ``30m``, ``12h``, ``7d`` or ``2w`` (a bare number: seconds)."""
    match = _DURATION.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"expected a duration such as 30m, 12h or 7d, got {text!r}")
    return _dt.timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2).lower()])


async def orchestration_terminate(session: Session, args: argparse.Namespace) -> Outcome:
    client = await existing_client(session, args.instance_id)
    try:
        await client.terminate_orchestration(
            args.instance_id, output=args.termination_output, recursive=args.recursive
        )
    except OrchestrationNotFoundError:
        raise missing_instance(session, args.instance_id) from None
    except (SerializationError, PayloadTooLargeError) as exc:
        raise CommandError(str(exc)) from None
    return Outcome(
        {"instance_id": args.instance_id, "action": "terminate"},
        f"Requested termination of orchestration {args.instance_id!r}.",
    )


async def _suspend_or_resume(session: Session, args: argparse.Namespace, action: str) -> Outcome:
    client = await existing_client(session, args.instance_id)
    method = client.suspend_orchestration if action == "suspend" else client.resume_orchestration
    try:
        await method(args.instance_id, reason=args.reason)
    except OrchestrationNotFoundError:
        raise missing_instance(session, args.instance_id) from None
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
    client = await existing_client(session, args.instance_id)
    try:
        purged = await client.purge_orchestration(args.instance_id, recursive=args.recursive)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if not purged:
        raise missing_instance(session, args.instance_id)
    return Outcome(
        {"instance_id": args.instance_id, "purged": True}, f"Purged orchestration {args.instance_id!r}."
    )


async def orchestration_rewind(session: Session, args: argparse.Namespace) -> Outcome:
    client = await existing_client(session, args.instance_id)
    try:
        await client.rewind_orchestration(args.instance_id, reason=args.reason, timeout=args.timeout)
    except OrchestrationNotFoundError:
        raise missing_instance(session, args.instance_id) from None
    except (ValueError, TimeoutError) as exc:
        raise CommandError(str(exc)) from None
    return Outcome(
        {"instance_id": args.instance_id, "action": "rewind"},
        f"Rewound orchestration {args.instance_id!r}: its failed steps run again.",
    )


async def orchestration_restart(session: Session, args: argparse.Namespace) -> Outcome:
    client = await existing_client(session, args.instance_id)
    try:
        iid = await client.restart_orchestration(args.instance_id, new_instance_id=args.new_id)
    except OrchestrationNotFoundError:
        raise missing_instance(session, args.instance_id) from None
    except (ValueError, OrchestrationAlreadyExistsError) as exc:
        raise CommandError(str(exc)) from None
    return Outcome(
        {"instance_id": iid, "restarted": args.instance_id},
        f"Restarted orchestration {args.instance_id!r}"
        + (f" as {iid!r}." if iid != args.instance_id else "."),
    )


def add_lifecycle_commands(sub: Commands) -> None:
    """Add terminate, suspend, resume, purge, rewind and restart to ``durable orchestration``."""
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
        p = instance_command(
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
        "--timeout",
        type=positive_seconds_arg,
        default=300.0,
        metavar="S",
        help="without ID: wait at most S seconds",
    )
    p.set_defaults(ops_check=_check_purge)

    p = instance_command(
        sub,
        "rewind",
        orchestration_rewind,
        "rewind a failed orchestration",
        "Bring a FAILED orchestration back to RUNNING: its failed activity and sub-orchestration "
        "calls are forgotten and run again, its successful steps are not. Waits until a worker "
        "applied it; exit 1 when the instance has not failed or cannot be rewound.",
    )
    p.add_argument("--reason", metavar="R", help="a reason, recorded in the history")
    p.add_argument(
        "--timeout", type=positive_seconds_arg, default=60.0, metavar="S", help="wait at most S seconds"
    )

    p = instance_command(
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
