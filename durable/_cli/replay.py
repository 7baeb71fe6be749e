"""``durable replay-check MODULE:ATTR``: would the new code replay the recorded histories?

The command loads the application's :class:`~durable.Worker` (nothing runs: no worker starts),
replays histories against the orchestrators it registers, writing nothing, and reports each
instance that would hit non-determinism, with the first mismatching history event. Histories come
from a hub (``--redis-url``, ``--hub``, filtered by ``--status``, ``--name``, ``--limit``) or from
files exported with ``durable orchestration history ID --output json`` (``--history-file``, no
Redis needed). Exit code 0 when all replay cleanly, 1 when any would not, 3 when Redis is
unreachable.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .._core.registry import name_of
from .._core.replay import ReplayResult, replay_many
from .._worker import Worker
from .app import UsageError, load_worker
from .common import (
    EXIT_CODES_HELP,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    HELP_WIDTH,
    CommandError,
    Commands,
    HubMissingError,
    Outcome,
    Session,
    _add_common,
    _run,
    emit,
    fmt_cell,
    help_formatter,
    positive_int_arg,
    render_table,
    status_arg,
)

__all__ = ["check_histories", "histories_from_file", "register"]

_PAYLOADS = ("input", "result", "output")


def check_histories(
    worker: Worker, histories: Iterable[tuple[str, list[dict[str, Any]]]], *, payloads_encoded: bool
) -> list[ReplayResult]:
    """Replay (instance id, history) pairs against what ``worker`` registers."""
    registry = worker.registry
    return replay_many(histories, registry.resolve_orchestrator, name_of, payloads_encoded=payloads_encoded)


def histories_from_file(path: Path) -> list[tuple[str, list[dict[str, Any]]]]:
    """Histories in a JSON file: one history (a list of events, as ``durable orchestration history
    ID --output json`` prints it; the instance is named after the file), an object with
    ``instance_id`` and ``history``, or a list of such objects."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read {path}: {exc}", EXIT_USAGE) from None
    except json.JSONDecodeError as exc:
        raise CommandError(f"{path} is not valid JSON: {exc}", EXIT_USAGE) from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise CommandError(f"{path}: expected a list of history events or of histories", EXIT_USAGE)
    if all(isinstance(e, dict) and "history" not in e for e in data):
        return [(path.stem, data)]
    out: list[tuple[str, list[dict[str, Any]]]] = []
    for n, entry in enumerate(data):
        if not isinstance(entry, dict) or not isinstance(entry.get("history"), list):
            raise CommandError(f"{path}: entry {n} has no 'history' list", EXIT_USAGE)
        out.append((str(entry.get("instance_id") or f"{path.stem}[{n}]"), entry["history"]))
    return out


def _outcome(results: list[ReplayResult], source: str) -> Outcome:
    failed = [r for r in results if not r.ok]
    data = {
        "source": source,
        "replayed": len(results),
        "failed": len(failed),
        "results": [r.to_json() for r in results],
    }
    rows = []
    for r in results:
        event = r.event or {}
        label = " ".join(
            str(p) for p in (event.get("eid"), event.get("k"), event.get("name")) if p is not None
        )
        rows.append(
            [
                fmt_cell(r.instance_id, 40),
                fmt_cell(r.name, 30),
                fmt_cell(r.version, 12),
                "ok" if r.ok else "NONDETERMINISTIC",
                fmt_cell(label, 40),
                fmt_cell(r.error, 100),
            ]
        )
    headers = ["instance id", "name", "version", "replay", "first mismatching event", "reason"]
    text = render_table(headers, rows) if rows else ""
    note = f"{len(results)} histories from {source} replayed: " + (
        f"{len(failed)} would hit non-determinism" if failed else "all replay cleanly"
    )
    return Outcome(data, text, EXIT_FAILURE if failed else EXIT_OK, note)


async def _from_hub(worker: Worker, session: Session, args: argparse.Namespace) -> Outcome:
    try:
        client = await session.client()
    except HubMissingError as exc:
        raise CommandError(str(exc)) from None
    statuses = [s for group in args.status or [] for s in group]
    states = await client.list_orchestrations(status=list(statuses) or None, name=args.name, limit=args.limit)
    store = session.store
    histories: list[tuple[str, list[dict[str, Any]]]] = []
    for state in states:
        events = await store.get_history(state.instance_id)
        if not events:
            continue
        for e in events:
            for key in _PAYLOADS:
                if isinstance(e.get(key), bytes):
                    e[key] = await store.resolve(e[key])
        histories.append((state.instance_id, events))
    results = check_histories(worker, histories, payloads_encoded=True)
    return _outcome(results, f"hub {session.hub!r}")


def run(args: argparse.Namespace) -> int:
    prog = "durable replay-check"
    try:
        worker = load_worker(args.app)
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.history_file:
        try:
            histories = [h for path in args.history_file for h in histories_from_file(Path(path))]
            results = check_histories(worker, histories, payloads_encoded=False)
        except CommandError as exc:
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return exc.exit_code
        outcome = _outcome(results, ", ".join(args.history_file))
        emit(outcome, args.format)
        if outcome.note:
            print(f"{prog}: {outcome.note}", file=sys.stderr)
        return outcome.exit_code

    async def command(session: Session, a: argparse.Namespace) -> Outcome:
        return await _from_hub(worker, session, a)

    return _run(command, args)


def register(commands: Commands) -> None:
    """Add ``durable replay-check``."""
    parser = commands.add_parser(
        "replay-check",
        help="replay stored histories against new code, reporting non-determinism",
        description=textwrap.fill(
            "Load the durable.Worker that MODULE:ATTR names (nothing runs) and replay stored "
            "orchestration histories against the orchestrators it registers, writing nothing. "
            "Report every instance that would hit non-determinism with the new code, with the "
            "first history event that does not match. Histories come from the hub, or from files "
            "exported with 'durable orchestration history ID --output json' (--history-file, no "
            "Redis needed), so CI can gate a deploy on recorded production histories. Exit code 0 "
            "when all replay cleanly, 1 when any would not.",
            HELP_WIDTH,
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=help_formatter,
    )
    parser.add_argument(
        "app", metavar="MODULE:ATTR", help="the new code's worker, e.g. myapp.workflows:worker"
    )
    parser.add_argument(
        "--history-file",
        action="append",
        metavar="FILE",
        help="replay the histories in FILE instead of the hub's (repeatable)",
    )
    parser.add_argument(
        "--status",
        type=status_arg,
        nargs="+",
        action="extend",
        metavar="S",
        help="only instances with these statuses (comma-separated; default: all)",
    )
    parser.add_argument("--name", metavar="ORCH", help="only instances of orchestrator ORCH")
    parser.add_argument(
        "--limit",
        type=positive_int_arg,
        default=1000,
        metavar="N",
        help="at most N instances (default: 1000)",
    )
    _add_common(parser)
    parser.set_defaults(handler=run, ops_prog=parser.prog)
