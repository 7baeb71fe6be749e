"""The operator commands of the ``durable`` command line.

``durable orchestration start|list|describe|history|raise-event|terminate|suspend|resume|purge``
``durable entity signal|get|list``
``durable partitions``, ``durable workers``, ``durable doctor``

Every command takes ``--redis-url`` and ``--hub`` (defaults: ``$DURABLE_REDIS_URL`` /
``$DURABLE_HUB``; with no URL the embedded Redis is used, as by the worker) and prints aligned
plain-text tables, or JSON with ``--output json``. The JSON uses the field names of the ops HTTP
API (:mod:`durable._ops_server`), whose JSON views (:mod:`durable._ops_views`) and read-only
queries (:mod:`durable._ops_queries`) it shares.

Read-only commands never create a hub: on a hub without metadata they find nothing. Commands
that send work (``orchestration start``, ``entity signal``) create it like the client does.

This module holds what every command shares (exit codes, options, the session, running a
command, rendering) and the ``partitions`` and ``workers`` commands; the command groups are in
:mod:`durable._cli_orchestration`, :mod:`durable._cli_entity` and :mod:`durable._cli_doctor`.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
import math
import signal
import sys
import textwrap
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import anyio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .._client import AsyncClient
from .._config import ENV_HUB, ENV_REDIS_URL, resolve_hub, resolve_url
from .._core.model import OrchestrationStatus
from .._ops import views as views
from .._ops.views import to_json_value
from .._store import queries as q
from .._store.store import Store

__all__ = [
    "EXIT_CODES_HELP",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "leaf_exceptions",
    "redact_url",
    "render_table",
    "signal_receiver",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = (
    "exit codes:\n"
    "  0  success\n"
    "  1  the operation failed (not found, still running, conflict, an orchestration awaited with\n"
    "     --wait did not complete, doctor found a FAIL)\n"
    "  2  usage error (bad arguments, invalid JSON, date-time or hub name)\n"
    "  3  Redis unreachable"
)


#: Width of the wrapped command descriptions in --help.
HELP_WIDTH = 90
#: Longest cell of a table (longer values are cut, ``--output json`` shows them whole).
MAX_CELL = 60


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


def fmt_cell(value: Any, limit: int = MAX_CELL) -> str:
    """One table cell: a single line of at most ``limit`` characters ('-' for nothing)."""
    if value is None or value == "":
        return "-"
    text = value if isinstance(value, str) else compact_json(value)
    text = " ".join(text.split()) if any(c in text for c in "\r\n\t") else text
    text = "".join(c if c.isprintable() else "?" for c in text)
    if len(text) > limit:
        text = text[: max(limit - 3, 1)] + "..."
    return text


def compact_json(value: Any) -> str:
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


def fmt_time(value: _dt.datetime | None, millis: bool = False) -> str:
    if value is None:
        return "-"
    utc = value.astimezone(_dt.UTC)
    text = utc.strftime("%Y-%m-%d %H:%M:%S")
    if millis:
        text += f".{utc.microsecond // 1000:03d}"
    return text + "Z"


def fmt_iso(value: Any, millis: bool = False) -> str:
    """A table time from the ISO string of the JSON form."""
    if not isinstance(value, str):
        return "-"
    try:
        return fmt_time(_dt.datetime.fromisoformat(value), millis)
    except ValueError:
        return value


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f}s"
    if value < 3600:
        return f"{int(value // 60)}m{int(value % 60):02d}s"
    return f"{int(value // 3600)}h{int(value % 3600 // 60):02d}m"


def fmt_bytes(value: int) -> str:
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} B"  # pragma: no cover


def fmt_ranges(numbers: Iterable[int]) -> str:
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


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is out of range for a number")
    return value


def json_arg(text: str) -> Any:
    """A JSON argument; strict like the wire format (no NaN, no Infinity, no overflowing numbers)."""
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise argparse.ArgumentTypeError(f"invalid JSON {text!r}: {exc}") from None
    except RecursionError:
        raise argparse.ArgumentTypeError("invalid JSON: nested too deeply") from None


def status_arg(text: str) -> list[OrchestrationStatus]:
    """A comma-separated list of orchestration statuses (case and dashes ignored)."""
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


def seconds_arg(text: str) -> float:
    """A non-negative number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number of seconds, got {text!r}")
    return value


def iso_arg(text: str) -> _dt.datetime:
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


def positive_int_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


# ------------------------------------------------------------------------------------------------
# connection


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs and messages)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


redact = redact_url


def leaf_exceptions(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or ``[exc]``."""
    if isinstance(exc, BaseExceptionGroup):
        out: list[BaseException] = []
        for inner in exc.exceptions:
            out.extend(leaf_exceptions(inner))
        return out
    return [exc]


@contextmanager
def signal_receiver() -> Iterator[Any]:
    """SIGTERM/SIGINT as an async iterator (one that never yields when signals cannot be caught)."""
    with ExitStack() as stack:
        signals: Any
        try:
            signals = stack.enter_context(anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT))
        except (NotImplementedError, ValueError, RuntimeError):  # not the main thread / platform
            signals = _NoSignals()
        yield signals


class _NoSignals:
    def __aiter__(self) -> _NoSignals:
        return self

    async def __anext__(self) -> int:
        await anyio.sleep_forever()
        raise StopAsyncIteration  # pragma: no cover


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
        self.meta = await q.hub_meta(store)
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
        probe = q.plain_client(url)
    except ValueError as exc:
        raise CommandError(f"invalid Redis URL {redact(url)!r}: {exc}", EXIT_USAGE) from None
    try:
        with anyio.fail_after(q.CONNECT_TIMEOUT_SECONDS * 2):
            await probe.ping()
    finally:
        with anyio.CancelScope(shield=True):
            await probe.aclose()


# ------------------------------------------------------------------------------------------------
# running a command

Command = Callable[[Session, argparse.Namespace], Awaitable[Outcome]]
#: The sub-command action of a parser (``add_subparsers()``), where commands are added.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


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
# argument parsing


def help_formatter(prog: str) -> argparse.HelpFormatter:
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


def leaf(
    group: Commands,
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
        formatter_class=help_formatter,
    )
    parser.set_defaults(handler=functools.partial(_run, command), ops_prog=parser.prog)
    _add_common(parser, output_flag=output_flag)
    return parser


def _group_help(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def command_group(commands: Commands, name: str, summary: str, description: str) -> Commands:
    """A command with sub-commands (``durable NAME COMMAND``); alone it prints its help (exit 2)."""
    group = commands.add_parser(
        name, help=summary, description=description, epilog=EXIT_CODES_HELP, formatter_class=help_formatter
    )
    group.set_defaults(handler=functools.partial(_group_help, group))
    return group.add_subparsers(dest=f"{name}_command", metavar="COMMAND")


# ------------------------------------------------------------------------------------------------
# commands on one orchestration instance


def positive_seconds_arg(text: str) -> float:
    """A positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def missing_instance(session: Session, instance_id: str) -> CommandError:
    """The error for an instance id the hub does not hold (saying so when the hub is missing)."""
    hint = "" if session.hub_exists else f" (hub {session.hub!r} does not exist)"
    return CommandError(f"no orchestration with id {instance_id!r} in hub {session.hub!r}{hint}")


async def existing_client(session: Session, instance_id: str) -> AsyncClient:
    """The session's client, or :func:`missing_instance` when the hub does not exist."""
    try:
        return await session.client()
    except HubMissingError:
        raise missing_instance(session, instance_id) from None


def instance_command(
    sub: Commands, name: str, command: Command, summary: str, description: str
) -> argparse.ArgumentParser:
    """A command on one orchestration instance: its first argument is the instance id."""
    parser = leaf(sub, name, command, summary, description)
    parser.add_argument("instance_id", metavar="ID", help="the instance id")
    return parser
