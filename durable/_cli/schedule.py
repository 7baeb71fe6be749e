"""``durable schedule create|list|describe|update|pause|resume|trigger|delete``.

The JSON output is the ops HTTP API's (:func:`durable._ops.schedules.schedule_json`); see
:mod:`durable._cli.common` for what every command shares.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
from typing import Any

from .._client import AsyncClient
from .._core.schedules import (
    OVERLAP_POLICIES,
    ScheduleAlreadyExistsError,
    ScheduleNotFoundError,
    ScheduleStatus,
)
from .._core.serialization import PayloadTooLargeError, SerializationError
from .._ops.schedules import schedule_json
from . import common as cli

__all__ = ["register"]


def _seconds_arg(text: str) -> _dt.timedelta:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if value < 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a non-negative number of seconds, got {text!r}")
    return _dt.timedelta(seconds=value)


def _optional_iso_arg(text: str) -> _dt.datetime | None:
    return None if text.strip().lower() == "none" else cli.iso_arg(text)


def _status_arg(text: str) -> str:
    value = text.strip().upper()
    if value not in {s.value for s in ScheduleStatus}:
        valid = ", ".join(s.value for s in ScheduleStatus)
        raise argparse.ArgumentTypeError(f"unknown status {text!r}; use one of {valid}")
    return value


def _text(data: dict[str, Any]) -> str:
    interval = data.get("interval")
    calendar = data.get("cron") or (f"every {interval:g}s" if interval is not None else "-")
    pairs = [
        ("Schedule ID", data["schedule_id"]),
        ("Orchestration", data["orchestration_name"]),
        ("Status", data["status"] + (f" ({data['paused_reason']})" if data.get("paused_reason") else "")),
        ("Calendar", f"{calendar} ({data['timezone']})" if data.get("cron") else calendar),
        ("Overlap", data["overlap"]),
        ("Catch-up window", f"{data['catchup_window']:g}s"),
        ("Start at", cli.fmt_iso(data.get("start_at"))),
        ("End at", cli.fmt_iso(data.get("end_at"))),
        ("Next run", cli.fmt_iso(data.get("next_run_at"))),
        ("Last run", cli.fmt_iso(data.get("last_run_at"))),
        ("Last instance", data.get("last_instance_id") or "-"),
        ("Runs started", str(data["runs_started"])),
        ("Runs skipped", str(data["runs_skipped"])),
        ("Created", cli.fmt_iso(data.get("created_at"))),
        ("Input", cli.compact_json(data.get("input"))),
    ]
    return cli.render_fields(pairs)


def _missing(session: cli.Session, schedule_id: str) -> cli.CommandError:
    return cli.CommandError(f"no schedule with id {schedule_id!r} in hub {session.hub!r}")


async def _existing(session: cli.Session, schedule_id: str) -> AsyncClient:
    try:
        return await session.client()
    except cli.HubMissingError:
        raise _missing(session, schedule_id) from None


def _calendar_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for name in ("cron", "interval", "input", "timezone", "start_at", "end_at", "overlap", "catchup_window"):
        value = getattr(args, name, ...)
        if value is not ...:
            kwargs[name] = value
    return kwargs


async def schedule_create(session: cli.Session, args: argparse.Namespace) -> cli.Outcome:
    client = await session.client(create_hub=True)
    kwargs = {k: v for k, v in _calendar_kwargs(args).items() if v is not None or k == "input"}
    try:
        desc = await client.create_schedule(
            args.schedule_id, args.orchestration, paused=args.paused, **kwargs
        )
    except ScheduleAlreadyExistsError as exc:
        raise cli.CommandError(str(exc)) from None
    except PayloadTooLargeError as exc:
        raise cli.CommandError(str(exc)) from None
    except (SerializationError, ValueError) as exc:
        raise cli.CommandError(str(exc), cli.EXIT_USAGE) from None
    data = schedule_json(desc)
    return cli.Outcome(data, _text(data))


async def schedule_list(session: cli.Session, args: argparse.Namespace) -> cli.Outcome:
    found = []
    if session.hub_exists:
        client = await session.client()
        found = await client.list_schedules(status=args.status or None, prefix=args.prefix)
    data = [schedule_json(d) for d in found]
    rows = [
        [
            cli.fmt_cell(d["schedule_id"], 40),
            cli.fmt_cell(d["orchestration_name"], 30),
            d["status"],
            cli.fmt_cell(d["cron"] or f"every {d['interval']:g}s", 30),
            cli.fmt_iso(d["next_run_at"]),
            cli.fmt_cell(d["last_instance_id"], 50),
            f"{d['runs_started']}/{d['runs_skipped']}",
        ]
        for d in data
    ]
    if not rows:
        return cli.Outcome(data, "", note="no schedules found")
    headers = [
        "schedule id",
        "orchestration",
        "status",
        "calendar",
        "next run",
        "last run",
        "started/skipped",
    ]
    return cli.Outcome(data, cli.render_table(headers, rows))


async def schedule_describe(session: cli.Session, args: argparse.Namespace) -> cli.Outcome:
    client = await _existing(session, args.schedule_id)
    try:
        desc = await client.get_schedule(args.schedule_id)
    except ValueError as exc:
        raise cli.CommandError(str(exc), cli.EXIT_USAGE) from None
    if desc is None:
        raise _missing(session, args.schedule_id)
    data = schedule_json(desc)
    return cli.Outcome(data, _text(data))


async def schedule_update(session: cli.Session, args: argparse.Namespace) -> cli.Outcome:
    client = await _existing(session, args.schedule_id)
    kwargs = _calendar_kwargs(args)
    if not kwargs:
        raise cli.CommandError("nothing to change: give at least one option", cli.EXIT_USAGE)
    try:
        desc = await client.update_schedule(args.schedule_id, **kwargs)
    except ScheduleNotFoundError:
        raise _missing(session, args.schedule_id) from None
    except PayloadTooLargeError as exc:
        raise cli.CommandError(str(exc)) from None
    except (SerializationError, ValueError) as exc:
        raise cli.CommandError(str(exc), cli.EXIT_USAGE) from None
    data = schedule_json(desc)
    return cli.Outcome(data, _text(data))


async def _act(session: cli.Session, args: argparse.Namespace, action: str) -> cli.Outcome:
    client = await _existing(session, args.schedule_id)
    try:
        if action == "pause":
            await client.pause_schedule(args.schedule_id, reason=args.reason)
        elif action == "resume":
            await client.resume_schedule(args.schedule_id)
        else:
            iid = await client.trigger_schedule(args.schedule_id)
            data = {"schedule_id": args.schedule_id, "instance_id": iid}
            return cli.Outcome(data, f"Triggered schedule {args.schedule_id!r}: {iid}")
        desc = await client.get_schedule(args.schedule_id)
    except ScheduleNotFoundError:
        raise _missing(session, args.schedule_id) from None
    except ValueError as exc:
        raise cli.CommandError(str(exc), cli.EXIT_USAGE) from None
    if desc is None:
        raise _missing(session, args.schedule_id)
    data = schedule_json(desc)
    return cli.Outcome(data, _text(data))


async def schedule_pause(session: cli.Session, args: argparse.Namespace) -> cli.Outcome:
    return await _act(session, args, "pause")


async def schedule_resume(session: cli.Session, args: argparse.Namespace) -> cli.Outcome:
    return await _act(session, args, "resume")


async def schedule_trigger(session: cli.Session, args: argparse.Namespace) -> cli.Outcome:
    return await _act(session, args, "trigger")


async def schedule_delete(session: cli.Session, args: argparse.Namespace) -> cli.Outcome:
    client = await _existing(session, args.schedule_id)
    try:
        deleted = await client.delete_schedule(args.schedule_id)
    except ValueError as exc:
        raise cli.CommandError(str(exc), cli.EXIT_USAGE) from None
    if not deleted:
        raise _missing(session, args.schedule_id)
    data = {"schedule_id": args.schedule_id, "deleted": True}
    return cli.Outcome(data, f"Deleted schedule {args.schedule_id!r}.")


def _calendar_options(p: argparse.ArgumentParser, *, update: bool) -> None:
    keep = argparse.SUPPRESS if update else None
    unchanged = " (default: unchanged)" if update else ""
    p.add_argument("--cron", default=keep, metavar="EXPR", help=f"cron expression, 5 or 6 fields{unchanged}")
    p.add_argument(
        "--interval", type=_seconds_arg, default=keep, metavar="S", help=f"every S seconds{unchanged}"
    )
    p.add_argument(
        "--input", type=cli.json_arg, default=keep, metavar="JSON", help=f"the runs' input{unchanged}"
    )
    p.add_argument(
        "--timezone",
        default=argparse.SUPPRESS if update else "UTC",
        metavar="TZ",
        help=f"IANA time zone of the cron expression (default: {'unchanged' if update else 'UTC'})",
    )
    p.add_argument(
        "--start-at", type=_optional_iso_arg, default=keep, metavar="ISO", help="no slot before this time"
    )
    p.add_argument("--end-at", type=_optional_iso_arg, default=keep, metavar="ISO", help="no slot after it")
    p.add_argument(
        "--overlap",
        choices=OVERLAP_POLICIES,
        default=argparse.SUPPRESS if update else "skip",
        help=f"while a run still runs (default: {'unchanged' if update else 'skip'})",
    )
    p.add_argument(
        "--catchup-window",
        type=_seconds_arg,
        default=argparse.SUPPRESS if update else _dt.timedelta(0),
        metavar="S",
        help="start missed slots at most S seconds old" + (unchanged or " (default: 0)"),
    )


def register(commands: cli.Commands) -> None:
    """Add ``durable schedule ...``."""
    sub = cli.command_group(
        commands,
        "schedule",
        "create, list and control recurring schedules",
        "Create, list, inspect and control the recurring schedules of a hub: each starts an "
        "orchestration on a cron calendar or at an interval.",
    )
    p = cli.leaf(
        sub,
        "create",
        schedule_create,
        "create a schedule",
        "Create schedule ID that starts orchestration NAME on a calendar: exactly one of --cron "
        "and --interval. Each run's instance id is ID@<slot time, UTC>.",
    )
    p.add_argument("schedule_id", metavar="ID", help="the schedule id")
    p.add_argument("orchestration", metavar="NAME", help="the orchestrator's registered name")
    _calendar_options(p, update=False)
    p.add_argument("--paused", action="store_true", help="create it paused")

    p = cli.leaf(sub, "list", schedule_list, "list schedules", "List the schedules of the hub, by id.")
    p.add_argument(
        "--status", type=_status_arg, action="append", metavar="S", help="ACTIVE, PAUSED, COMPLETED"
    )
    p.add_argument("--prefix", metavar="P", help="only ids starting with P")

    p = cli.leaf(sub, "describe", schedule_describe, "show a schedule", "Show one schedule.")
    p.add_argument("schedule_id", metavar="ID", help="the schedule id")

    p = cli.leaf(
        sub,
        "update",
        schedule_update,
        "change a schedule",
        "Change the given options of schedule ID (the others stay). --cron replaces an interval "
        "and --interval a cron expression; --start-at none / --end-at none remove a bound.",
    )
    p.add_argument("schedule_id", metavar="ID", help="the schedule id")
    _calendar_options(p, update=True)

    for name, command, summary in (
        ("pause", schedule_pause, "stop starting runs"),
        ("resume", schedule_resume, "continue from the next slot"),
        ("trigger", schedule_trigger, "start one run now"),
        ("delete", schedule_delete, "delete a schedule"),
    ):
        p = cli.leaf(sub, name, command, summary, f"{summary[0].upper()}{summary[1:]} (schedule ID).")
        p.add_argument("schedule_id", metavar="ID", help="the schedule id")
        if name == "pause":
            p.add_argument("--reason", metavar="R", help="why (shown by describe)")
