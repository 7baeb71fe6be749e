"""The operator commands of the ``durable`` command line.

``durable orchestration start|list|describe|history|raise-event|terminate|suspend|resume|purge``
``durable entity signal|get|list``
``durable partitions``, ``durable workers``, ``durable doctor``

Every command takes ``--redis-url`` and ``--hub`` (defaults: ``$DURABLE_REDIS_URL`` /
``$DURABLE_HUB``; with no URL the embedded Redis is used, as by the worker) and prints aligned
plain-text tables, or JSON with ``--output json``. The JSON uses the field names of the ops HTTP
API (:mod:`durable._ops_server`), whose converters and read-only queries
(:mod:`durable._ops_queries`) it shares.

Read-only commands never create a hub: on a hub without metadata they find nothing. Commands
that send work (``orchestration start``, ``entity signal``) create it like the client does.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
import math
import sys
import textwrap
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import _ops_queries as q
from ._cli_queries import (
    CONNECT_TIMEOUT_SECONDS,
    NodeFacts,
    cluster_overview,
    hub_meta,
    node_url,
    plain_client,
    read_node,
)
from ._cli_queries import (
    text as _text,
)
from ._client import AsyncClient
from ._config import resolve_hub, resolve_url
from ._entities import EntityId
from ._keys import FORMAT_VERSION
from ._model import (
    OrchestrationAlreadyExistsError,
    OrchestrationNotFoundError,
    OrchestrationState,
    OrchestrationStatus,
    ms_to_datetime,
)
from ._ops_server import history_event_json, state_json, to_json_value
from ._serialization import PayloadTooLargeError, SerializationError
from ._store import Store

__all__ = [
    "EXIT_CODES_HELP",
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "register_commands",
    "render_table",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

EXIT_CODES_HELP = (
    "exit codes:\n"
    "  0  success\n"
    "  1  the operation failed (not found, still running, conflict, an orchestration awaited with\n"
    "     --wait did not complete, doctor found a FAIL)\n"
    "  2  usage error (bad arguments, invalid JSON, date-time or hub name)\n"
    "  3  Redis unreachable"
)

ENV_REDIS_URL = "DURABLE_REDIS_URL"
ENV_HUB = "DURABLE_HUB"

#: Width of the wrapped command descriptions in --help.
HELP_WIDTH = 90
#: Longest cell of a table (longer values are cut, ``--output json`` shows them whole).
MAX_CELL = 60

#: Redis versions that bring features the engine uses.
XAUTOCLAIM_VERSION = (6, 2)
WAITAOF_VERSION = (7, 2)
#: Memory use (of maxmemory) from which doctor warns, and fails.
MEMORY_WARN_RATIO = 0.80
MEMORY_FAIL_RATIO = 0.95

OK, WARN, FAIL = "OK", "WARN", "FAIL"
_SEVERITY = {OK: 0, WARN: 1, FAIL: 2}


class CommandError(Exception):
    """Ends a command: ``message`` on stderr and ``exit_code``."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class HubMissingError(CommandError):
    """The hub has no metadata (no worker or client has used it yet)."""


@dataclass
class Outcome:
    """What a command prints: ``data`` for ``--output json``, ``text`` for people."""

    data: Any
    text: str
    exit_code: int = EXIT_OK
    #: a remark for stderr (both output modes)
    note: str | None = None


# ------------------------------------------------------------------------------------------------
# plain-text rendering


def _cell(value: Any, limit: int = MAX_CELL) -> str:
    """One table cell: a single line of at most ``limit`` characters ('-' for nothing)."""
    if value is None or value == "":
        return "-"
    text = value if isinstance(value, str) else _compact_json(value)
    text = " ".join(text.split()) if any(c in text for c in "\r\n\t") else text
    text = "".join(c if c.isprintable() else "?" for c in text)
    if len(text) > limit:
        text = text[: max(limit - 3, 1)] + "..."
    return text


def _compact_json(value: Any) -> str:
    return json.dumps(to_json_value(value), ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def render_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Aligned columns separated by two spaces, headers upper-cased, no trailing blanks."""
    body = [list(r) for r in rows]
    widths = [len(h) for h in headers]
    for row in body:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [[h.upper() for h in headers], *body]:
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    return "\n".join(lines)


def render_fields(pairs: Sequence[tuple[str, str]]) -> str:
    """``Label:  value`` lines with the values aligned."""
    width = max((len(label) for label, _ in pairs), default=0) + 1
    return "\n".join(f"{(label + ':').ljust(width)}  {value}".rstrip() for label, value in pairs)


def _fmt_time(value: _dt.datetime | None, millis: bool = False) -> str:
    if value is None:
        return "-"
    utc = value.astimezone(_dt.UTC)
    text = utc.strftime("%Y-%m-%d %H:%M:%S")
    if millis:
        text += f".{utc.microsecond // 1000:03d}"
    return text + "Z"


def _fmt_iso(value: Any, millis: bool = False) -> str:
    """A table time from the ISO string of the JSON form."""
    if not isinstance(value, str):
        return "-"
    try:
        return _fmt_time(_dt.datetime.fromisoformat(value), millis)
    except ValueError:
        return value


def _fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f}s"
    if value < 3600:
        return f"{int(value // 60)}m{int(value % 60):02d}s"
    return f"{int(value // 3600)}h{int(value % 3600 // 60):02d}m"


def _fmt_bytes(value: int) -> str:
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} B"  # pragma: no cover


def _ranges(numbers: Iterable[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    items = sorted(set(numbers))
    parts: list[str] = []
    i = 0
    while i < len(items):
        j = i
        while j + 1 < len(items) and items[j + 1] == items[j] + 1:
            j += 1
        parts.append(str(items[i]) if i == j else f"{items[i]}-{items[j]}")
        i = j + 1
    return ",".join(parts)


# ------------------------------------------------------------------------------------------------
# argument types


def _json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"invalid JSON {text!r}: {exc}") from None
    except RecursionError:
        raise argparse.ArgumentTypeError("invalid JSON: nested too deeply") from None


def _termination_output_arg(text: str) -> Any:
    try:
        return _json_arg(text)
    except argparse.ArgumentTypeError as exc:
        if text.strip().lower() in ("json", "table"):
            raise argparse.ArgumentTypeError(
                f"{exc} (on 'terminate', --output is the termination output as JSON; "
                f"use --format {text.strip().lower()} to choose the output format)"
            ) from None
        raise


def _iso_arg(text: str) -> _dt.datetime:
    raw = text.strip()
    if raw[-1:] in ("Z", "z"):
        raw = raw[:-1] + "+00:00"
    try:
        value = _dt.datetime.fromisoformat(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO-8601 date-time such as 2024-05-17T12:30:00Z, got {text!r}"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=_dt.UTC)


def _positive_int_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _seconds_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _status_arg(text: str) -> list[OrchestrationStatus]:
    out: list[OrchestrationStatus] = []
    for part in text.split(","):
        value = part.strip().upper().replace("-", "_")
        if not value:
            continue
        try:
            out.append(OrchestrationStatus[value])
        except KeyError:
            valid = ", ".join(s.name for s in OrchestrationStatus)
            raise argparse.ArgumentTypeError(f"unknown status {part.strip()!r}; use one of {valid}") from None
    return out


# ------------------------------------------------------------------------------------------------
# connection


def redact(url: str) -> str:
    """``url`` without its password."""
    from .cli import redact_url  # the CLI module imports this one: import it when used

    return redact_url(url)


class Session:
    """One command's view of a hub: a store that never creates the hub, and a client on it."""

    def __init__(self, url: str, hub: str) -> None:
        self.url = url
        self.hub = hub
        self._store: Store | None = None
        self._client: AsyncClient | None = None
        self.meta: dict[str, str] = {}

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("session not open")
        return self._store

    @property
    def hub_exists(self) -> bool:
        return self.store.partitions > 0

    async def open(self) -> None:
        """Connect (exit code 3 when Redis does not answer) and read the hub's metadata."""
        await preflight(self.url)
        store = Store.from_url(self.url, self.hub)
        self._store = store
        await store._detect_cluster()
        self.meta = await hub_meta(store)
        try:
            partitions = int(self.meta.get("partitions", "0"))
        except ValueError:
            partitions = 0
        store.partitions = max(partitions, 0)

    async def client(self, *, create_hub: bool = False) -> AsyncClient:
        """A client on this session's store; without ``create_hub`` a missing hub raises
        :class:`HubMissingError` instead of being created."""
        if self._client is not None:
            return self._client
        store = self.store
        if not self.hub_exists:
            if not create_hub:
                raise HubMissingError(f"hub {self.hub!r} does not exist (no worker or client has used it)")
            await store.ensure_hub()
        client = AsyncClient(self.url, self.hub)
        if client.durability == "strict":
            await store.enable_strict(None, 5_000)
        client._store = store  # the client closes it
        self._client = client
        return client

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            if self._client is not None:
                await self._client.close()
            elif self._store is not None:
                await self._store.close()
            self._client = None
            self._store = None


async def preflight(url: str) -> None:
    """PING ``url`` with a short connect timeout and no retries; redis errors propagate."""
    try:
        probe = plain_client(url)
    except ValueError as exc:
        raise CommandError(f"invalid Redis URL {redact(url)!r}: {exc}", EXIT_USAGE) from None
    try:
        with anyio.fail_after(CONNECT_TIMEOUT_SECONDS * 2):
            await probe.ping()
    finally:
        with anyio.CancelScope(shield=True):
            await probe.aclose()


# ------------------------------------------------------------------------------------------------
# running a command

Command = Callable[[Session, argparse.Namespace], Awaitable[Outcome]]


def _run(command: Command, args: argparse.Namespace) -> int:
    """Resolve the target, run ``command`` in an event loop, print its outcome; the exit code."""
    prog: str = getattr(args, "ops_prog", "durable")
    try:
        hub = resolve_hub(args.hub)
        check: Callable[[argparse.Namespace], None] | None = getattr(args, "ops_check", None)
        if check is not None:
            check(args)  # usage errors before connecting
    except ValueError as exc:
        return _fail(prog, str(exc), EXIT_USAGE)
    except CommandError as exc:
        return _fail(prog, str(exc), exc.exit_code)
    url = args.redis_url or None
    try:
        url = resolve_url(url)
    except (OSError, RuntimeError) as exc:
        return _fail(prog, f"cannot start the embedded Redis: {exc}", EXIT_UNREACHABLE)

    async def body() -> Outcome:
        session = Session(url, hub)
        try:
            await session.open()
            return await command(session, args)
        finally:
            await session.close()

    try:
        outcome = anyio.run(body)
    except CommandError as exc:
        return _fail(prog, str(exc), exc.exit_code)
    except (RedisConnectionError, RedisTimeoutError, TimeoutError, OSError) as exc:
        detail = str(exc) or type(exc).__name__
        return _fail(prog, f"Redis at {redact(url)} is unreachable: {detail}", EXIT_UNREACHABLE)
    except (RedisError, RedisClusterException) as exc:
        return _fail(prog, f"Redis error: {exc}", EXIT_FAILURE)
    emit(outcome, args.format)
    if outcome.note:
        print(f"{prog}: {outcome.note}", file=sys.stderr)
    return outcome.exit_code


def _fail(prog: str, message: str, code: int) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code


def emit(outcome: Outcome, fmt: str) -> None:
    """Print ``outcome`` as JSON or as text."""
    if fmt == "json":
        text = json.dumps(to_json_value(outcome.data), ensure_ascii=False, allow_nan=False, indent=2)
        print(text)
    elif outcome.text:
        print(outcome.text)


# ------------------------------------------------------------------------------------------------
# orchestrations


def _state_text(data: Mapping[str, Any]) -> str:
    failure = data.get("failure_details")
    pairs = [
        ("Instance ID", _text(data["instance_id"])),
        ("Name", _text(data["name"])),
        ("Status", _text(data["runtime_status"])),
        ("Created", _fmt_iso(data.get("created_at"))),
        ("Last updated", _fmt_iso(data.get("last_updated_at"))),
        ("Scheduled start", _fmt_iso(data.get("scheduled_start_at"))),
        ("Parent", _text(data.get("parent_instance_id")) or "-"),
        ("Input", _compact_json(data.get("input"))),
        ("Output", _compact_json(data.get("output"))),
        ("Custom status", _compact_json(data.get("custom_status"))),
        ("Failure", f"{failure['error_type']}: {failure['message']}" if failure else "-"),
    ]
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
            args.name, input=args.input, instance_id=args.id, start_at=args.start_at
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
    if not session.hub_exists:
        states: list[OrchestrationState] = []
    else:
        client = await session.client()
        states = await client.list_orchestrations(
            status=list(statuses) or None,
            name=args.name,
            created_from=args.created_from,
            created_to=args.created_to,
            limit=args.limit,
        )
    data = [state_json(s) for s in states]
    rows = [
        [
            _cell(s.instance_id, 40),
            _cell(s.name, 40),
            s.runtime_status.name,
            _fmt_time(s.created_at),
            _fmt_time(s.last_updated_at),
        ]
        for s in states
    ]
    if not rows:
        return Outcome(data, "", note="no orchestrations found")
    return Outcome(data, render_table(["instance id", "name", "status", "created", "updated"], rows))


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
                f"{key}={value if isinstance(value, str) and key == 'fire_at' else _compact_json(value)}"
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
            p for p in (_text(name) if name is not None else "", f"#{tid}" if tid is not None else "") if p
        )
        rows.append(
            [
                _text(e.get("event_id")),
                _text(e.get("kind")),
                _fmt_iso(e.get("timestamp"), millis=True),
                _cell(label, 40),
                _cell(_history_summary(e), 80),
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
        await client.terminate_orchestration(args.instance_id, output=args.termination_output)
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


async def orchestration_purge(session: Session, args: argparse.Namespace) -> Outcome:
    client = await _existing_client(session, args.instance_id)
    try:
        purged = await client.purge_orchestration(args.instance_id)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if not purged:
        raise _missing_instance(session, args.instance_id)
    return Outcome(
        {"instance_id": args.instance_id, "purged": True}, f"Purged orchestration {args.instance_id!r}."
    )


# ------------------------------------------------------------------------------------------------
# entities


def _entity_id(name: str, key: str) -> str:
    """``@name@key`` (names are case-insensitive, stored lower-cased); usage error when invalid."""
    try:
        return str(EntityId(name.lower(), key))
    except ValueError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None


def _entity_method(client: AsyncClient, name: str) -> Callable[..., Awaitable[Any]]:
    method = getattr(client, name, None)
    if method is None or not callable(method):
        raise CommandError(f"entities are not available: this version of the durable client has no {name}()")
    return method  # type: ignore[no-any-return]


def entity_json(result: Any, entity_id: str) -> dict[str, Any]:
    """An entity state in the form of ``GET /v1/entities/{name}/{key}``."""
    canonical = str(getattr(result, "entity_id", entity_id))
    try:
        name, key = q.split_entity_id(canonical)
    except ValueError:
        name, key = q.split_entity_id(entity_id)
    body: dict[str, Any] = {
        "entity_id": canonical,
        "name": name,
        "key": key,
        "state": to_json_value(getattr(result, "state", None)),
        "last_modified_at": to_json_value(getattr(result, "last_modified_at", None)),
    }
    for extra in ("locked_by", "backlog"):
        if hasattr(result, extra):
            body[extra] = to_json_value(getattr(result, extra))
    return body


async def entity_signal(session: Session, args: argparse.Namespace) -> Outcome:
    entity_id = _entity_id(args.name, args.key)
    client = await session.client(create_hub=True)
    signal = _entity_method(client, "signal_entity")
    try:
        result = await signal(entity_id, args.operation, input=args.input)
    except PayloadTooLargeError as exc:
        raise CommandError(str(exc)) from None
    except (SerializationError, TypeError, ValueError) as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    data: dict[str, Any] = {"entity_id": entity_id, "operation": args.operation}
    if isinstance(result, str):
        data["signal_id"] = result
    text = f"Signalled {args.operation!r} to entity {entity_id!r}"
    text += f" (signal id {result})." if isinstance(result, str) else "."
    return Outcome(data, text)


async def entity_get(session: Session, args: argparse.Namespace) -> Outcome:
    entity_id = _entity_id(args.name, args.key)
    try:
        client = await session.client()
    except HubMissingError as exc:
        raise CommandError(f"no entity with id {entity_id!r}: {exc}") from None
    get = _entity_method(client, "get_entity")
    try:
        result = await get(entity_id)
    except (TypeError, ValueError) as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    if result is None:
        raise CommandError(f"no entity with id {entity_id!r} in hub {session.hub!r}")
    data = entity_json(result, entity_id)
    pairs = [
        ("Entity ID", data["entity_id"]),
        ("Name", data["name"]),
        ("Key", data["key"]),
        ("Last modified", _fmt_iso(data.get("last_modified_at"), millis=True)),
    ]
    if "locked_by" in data:
        pairs.append(("Locked by", _text(data["locked_by"]) or "-"))
    if "backlog" in data:
        pairs.append(("Backlog", _text(data["backlog"])))
    pairs.append(("State", _compact_json(data.get("state"))))
    return Outcome(data, render_fields(pairs))


async def entity_list(session: Session, args: argparse.Namespace) -> Outcome:
    name = args.name
    if name is not None and "@" in name:
        raise CommandError(f"entity names cannot contain '@': {name!r}", EXIT_USAGE)
    rows = await q.list_entities(session.store, name, args.limit) if session.hub_exists else []
    for row in rows:
        row["last_modified_at"] = to_json_value(ms_to_datetime(int(row.pop("last_modified_at_ms"))))
    table = [
        [
            _cell(r["entity_id"], 50),
            _cell(r["name"], 30),
            _cell(r["key"], 40),
            _fmt_iso(r["last_modified_at"]),
        ]
        for r in rows
    ]
    if not table:
        return Outcome(rows, "", note="no entities found")
    return Outcome(rows, render_table(["entity id", "name", "key", "last modified"], table))


# ------------------------------------------------------------------------------------------------
# hub state


async def partitions(session: Session, args: argparse.Namespace) -> Outcome:
    if not session.hub_exists:
        raise HubMissingError(f"hub {session.hub!r} does not exist (no metadata): no partitions")
    infos = await q.partitions_info(session.store)
    data = []
    rows = []
    for info in infos:
        row = info.to_json()
        row["owned_by_this_worker"] = False  # the CLI is no worker (the field of GET /v1/partitions)
        data.append(row)
        rows.append(
            [
                str(info.partition),
                _cell(info.owner, 50),
                _text(info.epoch) or "-",
                _fmt_seconds(info.lease_ttl_ms / 1000) if info.lease_ttl_ms is not None else "-",
                str(info.backlog),
                _fmt_seconds(info.oldest_age_seconds) if info.oldest_message_id else "-",
                f"{info.timers} ({info.timers_due_soon} due soon)" if info.timers else "0",
                str(info.instances),
                str(info.entities),
            ]
        )
    headers = ["partition", "owner", "epoch", "lease expires in", "backlog", "oldest age", "timers"]
    text = render_table([*headers, "instances", "entities"], rows)
    return Outcome(data, text)


def worker_json(row: dict[str, Any]) -> dict[str, Any]:
    """A row of :func:`durable._ops_queries.live_workers` in the form of ``GET /v1/workers``."""
    out = dict(row)
    out["this_worker"] = False  # the CLI is no worker
    out["expires_at"] = _iso_ms(out.pop("expires_at_ms"))
    out["heartbeat_at"] = _iso_ms(out.pop("heartbeat_at_ms"))
    return out


def _iso_ms(ms: Any) -> str | None:
    if isinstance(ms, bool) or not isinstance(ms, int | float):
        return None
    return ms_to_datetime(int(ms)).isoformat()


async def workers(session: Session, args: argparse.Namespace) -> Outcome:
    live = await q.live_workers(session.store)
    data = [worker_json(r) for r in live]
    rows = []
    for r in live:
        slots = "-"
        if r["slots"] is not None:
            used = r["slots_used"] if r["slots_used"] is not None else "?"
            slots = f"{used}/{r['slots']}"
        owned: list[int] = r["partitions"]
        rows.append(
            [
                _cell(r["worker_id"], 50),
                _cell(r["host"], 30),
                _text(r["pid"]) or "-",
                slots,
                f"{len(owned)}: {_ranges(owned)}" if owned else "0",
                _fmt_seconds(r["expires_in_ms"] / 1000),
            ]
        )
    if not rows:
        return Outcome(data, "", note=f"no live workers in hub {session.hub!r}")
    headers = ["worker id", "host", "pid", "slots used", "partitions", "heartbeat expires in"]
    return Outcome(data, render_table(headers, rows))


# ------------------------------------------------------------------------------------------------
# doctor


@dataclass
class Check:
    """One doctor finding."""

    name: str
    status: str
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail}


def _combine(name: str, nodes: list[NodeFacts], judge: Callable[[NodeFacts], tuple[str, str]]) -> Check:
    """One check over every node: the worst status; per-node details when they differ."""
    verdicts = [(node, *judge(node)) for node in nodes]
    worst = max((status for _, status, _ in verdicts), key=lambda s: _SEVERITY[s])
    details = {detail for _, _, detail in verdicts}
    if len(nodes) == 1 or len(details) == 1:
        detail = verdicts[0][2]
        if len(nodes) > 1:
            detail += f" (all {len(nodes)} primaries)"
        return Check(name, worst, detail)
    return Check(name, worst, "; ".join(f"{node.address}: {detail}" for node, _, detail in verdicts))


def _judge_version(node: NodeFacts) -> tuple[str, str]:
    return OK, f"Redis {_text(node.info.get('redis_version')) or 'unknown'}"


def _judge_feature(minimum: tuple[int, int], missing: str) -> Callable[[NodeFacts], tuple[str, str]]:
    def judge(node: NodeFacts) -> tuple[str, str]:
        version = node.version
        wanted = ".".join(map(str, minimum))
        if version and version >= minimum:
            return OK, f"available (Redis {wanted}+)"
        return (FAIL if minimum == XAUTOCLAIM_VERSION else WARN), f"needs Redis {wanted}+: {missing}"

    return judge


def _judge_policy(node: NodeFacts) -> tuple[str, str]:
    policy = _text(node.info.get("maxmemory_policy")) or "unknown"
    if policy == "noeviction":
        return OK, "noeviction"
    return FAIL, (
        f"{policy}: Redis may evict durable state (instances, history, leases) under memory "
        "pressure; set maxmemory-policy noeviction"
    )


def _judge_appendonly(node: NodeFacts) -> tuple[str, str]:
    if int(node.info.get("aof_enabled", 0) or 0) == 1:
        return OK, "yes"
    return WARN, "no: a Redis restart loses everything written since the last snapshot"


def _judge_appendfsync(node: NodeFacts) -> tuple[str, str]:
    value = node.appendfsync
    aof = int(node.info.get("aof_enabled", 0) or 0) == 1
    if value is None:
        return WARN, "unknown (CONFIG GET is not permitted)"
    if not aof:
        return OK, f"{value} (not in effect: appendonly is off)"
    if value == "always":
        return OK, "always"
    if value == "everysec":
        return OK, "everysec (a crash of the host may lose up to one second of writes)"
    return WARN, f"{value}: the OS decides when to flush; a host crash may lose many seconds of writes"


def _judge_memory(node: NodeFacts) -> tuple[str, str]:
    used = int(node.info.get("used_memory", 0) or 0)
    limit = int(node.info.get("maxmemory", 0) or 0)
    system = int(node.info.get("total_system_memory", 0) or 0)
    if limit <= 0:
        if system > 0 and used / system >= MEMORY_WARN_RATIO:
            return WARN, f"no maxmemory; {_fmt_bytes(used)} used of {_fmt_bytes(system)} system memory"
        return OK, f"{_fmt_bytes(used)} used, no maxmemory limit"
    ratio = used / limit
    detail = f"{_fmt_bytes(used)} used of maxmemory {_fmt_bytes(limit)} ({ratio:.0%})"
    if ratio >= MEMORY_FAIL_RATIO:
        return FAIL, detail + ": writes will soon be refused (OOM)"
    if ratio >= MEMORY_WARN_RATIO:
        return WARN, detail
    return OK, detail


async def _lease_check(store: Store) -> Check:
    infos = await q.partitions_info(store)
    live = {w["worker_id"] for w in await q.live_workers(store)}
    total = len(infos)
    unowned = [p.partition for p in infos if p.owner is None]
    stale = [p.partition for p in infos if p.owner is not None and p.owner not in live]
    leased = total - len(unowned)
    workers_text = f"{len(live)} live worker{'s' if len(live) != 1 else ''}"
    if not live:
        return Check(
            "leases", WARN, f"{leased}/{total} partitions leased, no live workers: nothing processes the hub"
        )
    problems = []
    if unowned:
        problems.append(f"partitions {_ranges(unowned)} have no lease holder")
    if stale:
        problems.append(f"partitions {_ranges(stale)} are leased by workers without a live heartbeat")
    if problems:
        return Check(
            "leases",
            WARN,
            f"{leased}/{total} partitions leased, {workers_text}; "
            + "; ".join(problems)
            + " (normal for a few seconds after a worker joins or leaves)",
        )
    return Check("leases", OK, f"{total}/{total} partitions leased by {workers_text}")


async def doctor_checks(session: Session) -> list[Check]:
    """Everything ``durable doctor`` checks, in order."""
    store = session.store
    checks: list[Check] = []
    # -- the servers
    if store.cluster:
        cluster_info, primaries = await cluster_overview(session.url)
        state = next(
            (
                line.split(":", 1)[1].strip()
                for line in cluster_info.splitlines()
                if line.startswith("cluster_state:")
            ),
            "unknown",
        )
        status = OK if state == "ok" and primaries else FAIL
        checks.append(Check("cluster", status, f"cluster mode, state {state}, {len(primaries)} primaries"))
        nodes = [await read_node(node_url(session.url, a), a) for a in primaries]
    else:
        parts = urlsplit(session.url)
        address = (
            f"{parts.hostname or 'localhost'}:{parts.port or 6379}" if parts.hostname else redact(session.url)
        )
        nodes = [await read_node(session.url, address)]
        checks.append(Check("cluster", OK, "standalone (cluster mode disabled)"))
    down = [n for n in nodes if n.error is not None]
    if down:
        checks.append(Check("nodes", FAIL, "; ".join(f"{n.address}: {n.error}" for n in down)))
    nodes = [n for n in nodes if n.error is None]
    if nodes:
        checks.insert(0, _combine("redis", nodes, _judge_version))
        checks.append(
            _combine(
                "xautoclaim",
                nodes,
                _judge_feature(XAUTOCLAIM_VERSION, "stale activity tasks of dead workers are not reclaimed"),
            )
        )
        checks.append(
            _combine(
                "waitaof",
                nodes,
                _judge_feature(
                    WAITAOF_VERSION, "durability 'strict' falls back to WAIT (replica acknowledgement only)"
                ),
            )
        )
        checks.append(_combine("maxmemory-policy", nodes, _judge_policy))
        checks.append(_combine("appendonly", nodes, _judge_appendonly))
        checks.append(_combine("appendfsync", nodes, _judge_appendfsync))
        checks.append(_combine("memory", nodes, _judge_memory))
    # -- the hub
    meta = session.meta
    if not meta:
        checks.append(
            Check(
                "hub",
                FAIL,
                f"hub {session.hub!r} has no metadata: no worker has started on it "
                f"(check --hub / ${ENV_HUB})",
            )
        )
        return checks
    if not session.hub_exists:
        checks.append(
            Check(
                "hub", FAIL, f"hub {session.hub!r} has an invalid partition count {meta.get('partitions')!r}"
            )
        )
        return checks
    created = meta.get("created", "")
    created_text = f", created {_fmt_time(ms_to_datetime(int(created)))}" if created.isdigit() else ""
    checks.append(Check("hub", OK, f"hub {session.hub!r}: {store.partitions} partitions{created_text}"))
    fmt = meta.get("format")
    if fmt is None:
        checks.append(
            Check("format", WARN, f"no format version recorded (this build writes {FORMAT_VERSION})")
        )
    elif fmt == str(FORMAT_VERSION):
        checks.append(Check("format", OK, f"version {fmt}"))
    else:
        checks.append(
            Check(
                "format",
                FAIL,
                f"version {fmt}, but this build reads version {FORMAT_VERSION}: upgrade or migrate",
            )
        )
    checks.append(await _lease_check(store))
    return checks


async def doctor(session: Session, args: argparse.Namespace) -> Outcome:
    checks = await doctor_checks(session)
    counts = {s: sum(1 for c in checks if c.status == s) for s in (OK, WARN, FAIL)}
    failed = counts[FAIL] > 0
    data = {
        "ok": not failed,
        "hub": session.hub,
        "redis_url": redact(session.url),
        "summary": counts,
        "checks": [c.to_json() for c in checks],
    }
    table = render_table(["status", "check", "detail"], [[c.status, c.name, c.detail] for c in checks])
    summary = f"{counts[OK]} OK, {counts[WARN]} WARN, {counts[FAIL]} FAIL"
    return Outcome(data, f"{table}\n\n{summary}", EXIT_FAILURE if failed else EXIT_OK)


# ------------------------------------------------------------------------------------------------
# argument parsing


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _add_common(parser: argparse.ArgumentParser, *, output_flag: bool = True) -> None:
    target = parser.add_argument_group("connection and output")
    target.add_argument(
        "--redis-url",
        metavar="URL",
        help=f"Redis to use (default: ${ENV_REDIS_URL}, else the embedded Redis in ./.durable/redis)",
    )
    target.add_argument("--hub", metavar="NAME", help=f"task hub (default: ${ENV_HUB}, else 'default')")
    flags = ["--output", "--format"] if output_flag else ["--format"]
    target.add_argument(
        *flags,
        dest="format",
        choices=("table", "json"),
        default="table",
        metavar="FORMAT",
        help="'table' (default): aligned plain text for people; 'json': for scripts, with the "
        "field names of the ops HTTP API",
    )


def _leaf(
    group: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    command: Command,
    summary: str,
    description: str,
    *,
    output_flag: bool = True,
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = group.add_parser(
        name,
        help=summary,
        description=textwrap.fill(description, HELP_WIDTH),
        epilog=EXIT_CODES_HELP,
        formatter_class=_formatter,
    )
    parser.set_defaults(handler=functools.partial(_run, command), ops_prog=parser.prog)
    _add_common(parser, output_flag=output_flag)
    return parser


def _group_help(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def register_commands(
    parser: argparse.ArgumentParser, commands: argparse._SubParsersAction[argparse.ArgumentParser]
) -> None:
    """Add the operator commands to the ``durable`` parser and its sub-command action."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = f"{parser.epilog or ''}\n\n{EXIT_CODES_HELP}".lstrip()

    # -- orchestration
    orch = commands.add_parser(
        "orchestration",
        help="start, list, inspect and control orchestration instances",
        description="Start, list, inspect and control the orchestration instances of a hub.",
        epilog=EXIT_CODES_HELP,
        formatter_class=_formatter,
    )
    orch.set_defaults(handler=functools.partial(_group_help, orch))
    sub = orch.add_subparsers(dest="orchestration_command", metavar="COMMAND")

    p = _leaf(
        sub,
        "start",
        orchestration_start,
        "start an orchestration",
        "Schedule a new instance of orchestrator NAME (registered by a worker) and print its id "
        '(JSON: {"instance_id": ...}). With --wait, wait until it finishes and print its final '
        "state (as 'describe' does); the exit code is then 0 only when it COMPLETED.",
    )
    p.add_argument("name", metavar="NAME", help="the orchestrator's registered name")
    p.add_argument("--input", type=_json_arg, metavar="JSON", help="the input, as JSON (default: null)")
    p.add_argument("--id", metavar="ID", help="the instance id (default: a random one)")
    p.add_argument(
        "--start-at",
        type=_iso_arg,
        metavar="ISO",
        help="start at this ISO-8601 time instead of now (no offset: UTC)",
    )
    p.add_argument("--wait", action="store_true", help="wait until the orchestration finishes")
    p.add_argument(
        "--timeout", type=_seconds_arg, metavar="S", help="with --wait: give up after S seconds (exit 1)"
    )
    p.set_defaults(ops_check=_check_start)

    p = _leaf(
        sub,
        "list",
        orchestration_list,
        "list orchestration instances",
        "List orchestration instances, newest first, filtered by status, name and creation time.",
    )
    p.add_argument(
        "--status",
        type=_status_arg,
        nargs="+",
        action="extend",
        metavar="S",
        help="only these statuses (repeatable, comma-separated): "
        + ", ".join(s.name for s in OrchestrationStatus),
    )
    p.add_argument("--name", metavar="N", help="only instances of orchestrator N")
    p.add_argument(
        "--limit", type=_positive_int_arg, default=100, metavar="N", help="at most N (default: 100)"
    )
    p.add_argument(
        "--created-from", type=_iso_arg, metavar="ISO", help="created at or after (no offset: UTC)"
    )
    p.add_argument("--created-to", type=_iso_arg, metavar="ISO", help="created at or before (no offset: UTC)")

    p = _leaf(
        sub,
        "describe",
        orchestration_describe,
        "show an orchestration's state",
        "Show the state of one orchestration instance: status, times, input, output, custom "
        "status and failure.",
    )
    p.add_argument("instance_id", metavar="ID", help="the instance id")

    p = _leaf(
        sub,
        "history",
        orchestration_history,
        "show an orchestration's history events",
        "Show the history events of the current execution of an orchestration instance.",
    )
    p.add_argument("instance_id", metavar="ID", help="the instance id")

    p = _leaf(
        sub,
        "raise-event",
        orchestration_raise_event,
        "send an external event to an orchestration",
        "Deliver external event EVENT to an orchestration instance; it is buffered until the "
        "orchestration waits for it.",
    )
    p.add_argument("instance_id", metavar="ID", help="the instance id")
    p.add_argument("event", metavar="EVENT", help="the event name")
    p.add_argument("--data", type=_json_arg, metavar="JSON", help="the event's data, as JSON (default: null)")

    p = _leaf(
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

    for action, command, summary in (
        ("suspend", orchestration_suspend, "suspend an orchestration"),
        ("resume", orchestration_resume, "resume a suspended orchestration"),
    ):
        p = _leaf(
            sub,
            action,
            command,
            summary,
            f"{summary[0].upper()}{summary[1:]}. Events that arrive while it is suspended are kept "
            "and applied on resume.",
        )
        p.add_argument("instance_id", metavar="ID", help="the instance id")
        p.add_argument("--reason", metavar="R", help="a reason, recorded in the history")

    p = _leaf(
        sub,
        "purge",
        orchestration_purge,
        "delete a finished orchestration",
        "Delete the state and history of a finished (completed, failed or terminated) "
        "orchestration instance. A running instance is refused (exit 1): terminate it first.",
    )
    p.add_argument("instance_id", metavar="ID", help="the instance id")

    # -- entity
    ent = commands.add_parser(
        "entity",
        help="signal, read and list durable entities",
        description="Signal, read and list the durable entities of a hub.",
        epilog=EXIT_CODES_HELP,
        formatter_class=_formatter,
    )
    ent.set_defaults(handler=functools.partial(_group_help, ent))
    esub = ent.add_subparsers(dest="entity_command", metavar="COMMAND")
    p = _leaf(
        esub,
        "signal",
        entity_signal,
        "send an operation to an entity",
        "Send operation OP (one-way, durable) to the entity NAME with key KEY.",
    )
    p.add_argument("name", metavar="NAME", help="the entity's registered name")
    p.add_argument("key", metavar="KEY", help="the entity key")
    p.add_argument("operation", metavar="OP", help="the operation")
    p.add_argument("--input", type=_json_arg, metavar="JSON", help="the operation's input, as JSON")
    p = _leaf(
        esub, "get", entity_get, "show an entity's state", "Show the state of entity NAME with key KEY."
    )
    p.add_argument("name", metavar="NAME", help="the entity's registered name")
    p.add_argument("key", metavar="KEY", help="the entity key")
    p = _leaf(esub, "list", entity_list, "list entities", "List entities, most recently modified first.")
    p.add_argument("--name", metavar="N", help="only entities named N")
    p.add_argument(
        "--limit", type=_positive_int_arg, default=100, metavar="N", help="at most N (default: 100)"
    )

    # -- hub state
    p = _leaf(
        commands,
        "partitions",
        partitions,
        "show the partitions: owner, lease, backlog, timers",
        "Show every partition of the hub: the worker holding its lease and when the lease "
        "expires, the inbox backlog and the age of its oldest waiting message, timers, "
        "instances and entities.",
    )
    p = _leaf(
        commands,
        "workers",
        workers,
        "show the live workers",
        "Show the workers with a live heartbeat: host, pid, activity slots in use, owned partitions.",
    )
    p = _leaf(
        commands,
        "doctor",
        doctor,
        "check Redis and the hub for problems",
        "Check the Redis server(s) and the hub: Redis version and features (XAUTOCLAIM needs "
        "6.2+, WAITAOF 7.2+), cluster mode, maxmemory-policy (must be noeviction), appendonly and "
        "appendfsync, memory headroom, hub metadata, partition count and format version, and the "
        "partition leases. Prints each check as OK, WARN or FAIL; exits 1 when any check FAILs.",
    )
