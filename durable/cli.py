"""The ``durable`` command line.

``durable worker MODULE:ATTR``
    Run a :class:`~durable.Worker` defined by an application until SIGTERM/SIGINT, then drain:
    stop taking work, finish (or hand back) what is in flight, release the partition leases
    and exit 0. A second signal stops at once (exit 1).

``durable demo``
    Run the sample patterns of the ``orchestrations`` and ``entities`` packages against an
    embedded (or the given) Redis, with live progress and a summary.

``durable redis status|stop``
    Show or stop the embedded Redis server of a data folder (default ``./.durable/redis``).

Exit codes: 0 success, 1 failure, 2 usage error.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskStatus

from ._cli import doctor, embedded, entity, hub, lint, orchestration, replay, schedule
from ._cli.app import UsageError, load_worker
from ._cli.common import (
    EXIT_CODES_HELP,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    Commands,
    leaf,
    leaf_exceptions,
    positive_int_arg,
    redact_url,
    seconds_arg,
    signal_receiver,
)
from ._cli.sidecar import add_sidecar_parser, load_sidecar_class
from ._client import AsyncClient
from ._config import (
    ENV_CONCURRENCY,
    ENV_DRAIN_TIMEOUT,
    ENV_HUB,
    ENV_LOG_LEVEL,
    ENV_OPS_HOST,
    ENV_OPS_PORT,
    ENV_OPS_TOKEN,
    ENV_PARTITIONS,
    ENV_REDIS_URL,
    VERSION,
    resolve_hub,
    resolve_url,
)
from ._worker import Worker

log = logging.getLogger("durable.cli")


_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


# ------------------------------------------------------------------------------------------------
# argument parsing


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number (0-65535), got {text!r}")
    return value


def _env(name: str, parse: Callable[[str], Any]) -> Any:
    """The parsed value of an environment variable, None when unset or empty."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return parse(raw)
    except (argparse.ArgumentTypeError, ValueError) as exc:
        raise UsageError(f"invalid ${name}: {exc}") from None


def _ops_token() -> str | None:
    """The ops API bearer token of ``$DURABLE_OPS_TOKEN`` (None: unset or empty); a token that
    would turn authentication off (only whitespace) or that no request could match (not
    printable ASCII) is a usage error."""
    from ._ops.http import InvalidTokenError, check_token

    try:
        return check_token(os.environ.get(ENV_OPS_TOKEN))
    except InvalidTokenError as exc:
        raise UsageError(f"invalid ${ENV_OPS_TOKEN}: {exc}") from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``durable`` command."""
    parser = argparse.ArgumentParser(
        prog="durable",
        description="Durable orchestrations and durable entities on Redis.",
        epilog="Run 'durable COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"durable {VERSION}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    worker = commands.add_parser(
        "worker",
        help="run a worker of an application until SIGTERM/SIGINT",
        description=(
            "Import MODULE (the current directory is on the import path), take its attribute ATTR "
            "(a durable.Worker, or a function returning one; default 'worker') and run it. On "
            "SIGTERM or SIGINT the worker drains: it stops taking work, finishes what is in flight "
            "(up to the drain timeout), releases its partition leases and exits 0. A second "
            "signal stops it at once (exit 1)."
        ),
        epilog=(
            f"Environment: ${ENV_REDIS_URL}, ${ENV_HUB}, ${ENV_CONCURRENCY}, ${ENV_PARTITIONS}, "
            f"${ENV_DRAIN_TIMEOUT}, ${ENV_LOG_LEVEL}, ${ENV_OPS_PORT}, ${ENV_OPS_HOST}, ${ENV_OPS_TOKEN} "
            "provide defaults for the options (the ops API bearer token only comes from the "
            "environment)."
        ),
    )
    worker.add_argument("--version", action="version", version=f"durable {VERSION}")
    worker.add_argument(
        "app", metavar="MODULE:ATTR", help="the worker to run, e.g. orchestrations.patterns:worker"
    )
    _add_redis_options(worker, default_hub=None)
    worker.add_argument(
        "--concurrency",
        type=positive_int_arg,
        metavar="N",
        help=f"concurrent activity executions (default: ${ENV_CONCURRENCY}, else the worker's setting)",
    )
    worker.add_argument(
        "--partitions",
        type=positive_int_arg,
        metavar="N",
        help=f"partition count used if this worker creates the hub (default: ${ENV_PARTITIONS}, else 32)",
    )
    worker.add_argument(
        "--drain-timeout",
        type=seconds_arg,
        metavar="S",
        help=f"seconds to finish in-flight work after a stop signal (default: ${ENV_DRAIN_TIMEOUT}, else 30)",
    )
    worker.add_argument(
        "--log-level",
        choices=_LOG_LEVELS,
        type=str.lower,
        help=f"logging threshold (default: ${ENV_LOG_LEVEL}, else info)",
    )
    worker.add_argument(
        "--ops-port",
        type=_port,
        metavar="PORT",
        help=f"serve the ops HTTP endpoint (metrics, health) on this port (default: ${ENV_OPS_PORT}; 0: off)",
    )
    worker.add_argument(
        "--ops-host",
        metavar="HOST",
        help=f"address of the ops HTTP endpoint (default: ${ENV_OPS_HOST}, else 0.0.0.0)",
    )
    worker.set_defaults(handler=_cmd_worker)

    demo = commands.add_parser(
        "demo",
        help="run the sample orchestration and entity patterns with live progress",
        description=(
            "Run the sample patterns with an in-process worker, show their progress and a summary: "
            "the orchestrations package (function chaining, fan-out/fan-in, human interaction, "
            "monitor, sub-orchestrations, retries) and the entities package (a counter, a bank "
            "account whose failed operation rolls back, transfers in critical sections, a scheduled "
            "signal, an entity signalling another, IoT readings sent with a plain XADD). Uses an "
            f"embedded Redis unless --redis-url or ${ENV_REDIS_URL} is given; the embedded Redis "
            "keeps running afterwards (see 'durable redis')."
        ),
    )
    demo.add_argument("--version", action="version", version=f"durable {VERSION}")
    _add_redis_options(demo, default_hub="demo")
    demo.add_argument(
        "--fan-out",
        type=positive_int_arg,
        default=200,
        metavar="N",
        help="number of parallel activities of the fan-out/fan-in pattern (default: 200)",
    )
    demo.add_argument("--quiet", action="store_true", help="no live progress, only the summary")
    demo.add_argument(
        "--keep", action="store_true", help="keep the demo's orchestration instances (default: purge them)"
    )
    demo.add_argument(
        "--timeout",
        type=seconds_arg,
        default=120.0,
        metavar="S",
        help="give up when the patterns have not finished after S seconds (default: 120)",
    )
    demo.set_defaults(handler=_cmd_demo)

    embedded.register(commands)

    sidecar = add_sidecar_parser(commands, _add_redis_options, _port)
    sidecar.set_defaults(handler=_cmd_sidecar)

    serve = commands.add_parser(
        "serve",
        help="run the ops HTTP server (API, dashboard, metrics) without a worker",
        description=(
            "Serve the ops HTTP endpoint (/v1 API, dashboard, /metrics, /healthz, /readyz) for a hub "
            "without running a worker in this process. Stops on SIGTERM/SIGINT."
        ),
    )
    _add_redis_options(serve, default_hub=None)
    serve.add_argument(
        "--ops-port",
        type=_port,
        metavar="PORT",
        help=f"port to listen on (default: ${ENV_OPS_PORT}, else 9464)",
    )
    serve.add_argument(
        "--ops-host",
        metavar="HOST",
        help=f"address to listen on (default: ${ENV_OPS_HOST}, else 0.0.0.0)",
    )
    serve.add_argument("--log-level", choices=_LOG_LEVELS, type=str.lower, help="logging threshold")
    serve.set_defaults(handler=_cmd_serve)

    # operator commands: orchestration, entity, partitions, workers, doctor (and the exit codes)
    _register_operator_commands(parser, commands)
    return parser


def _register_operator_commands(parser: argparse.ArgumentParser, commands: Commands) -> None:
    """Add the operator commands to the ``durable`` parser and its sub-command action."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = f"{parser.epilog or ''}\n\n{EXIT_CODES_HELP}".lstrip()
    orchestration.register(commands)
    entity.register(commands)
    schedule.register(commands)
    leaf(
        commands,
        "reindex",
        hub.reindex,
        "build the query indexes of instances and entities written by an older version",
        "Add the query indexes (status, name, tags, creation time; entity ids and control "
        "hashes) for instances and entities written before this version kept them, so that "
        "listing and paging see them. Safe to run while workers run, and to run again.",
    )
    leaf(
        commands,
        "partitions",
        hub.partitions,
        "show the partitions: owner, lease, backlog, timers",
        "Show every partition of the hub: the worker holding its lease and when the lease "
        "expires, the inbox backlog and the age of its oldest waiting message, timers, "
        "instances and entities, and the orchestration instances waiting for a worker that has "
        "their orchestrator version (during a rolling deploy, or after a version was removed).",
    )
    leaf(
        commands,
        "workers",
        hub.workers,
        "show the live workers",
        "Show the workers with a live heartbeat: host, pid, activity slots in use, owned partitions "
        "and the orchestrator versions they run.",
    )
    doctor.register(commands)
    replay.register(commands)
    lint.register(commands)


def _add_redis_options(parser: argparse.ArgumentParser, default_hub: str | None) -> None:
    parser.add_argument(
        "--redis-url",
        metavar="URL",
        help=f"Redis to use (default: ${ENV_REDIS_URL}, else an embedded Redis in ./.durable/redis)",
    )
    hub_default = f"'{default_hub}'" if default_hub else f"${ENV_HUB}, else the worker's hub"
    parser.add_argument(
        "--hub", metavar="NAME", default=default_hub, help=f"task hub name (default: {hub_default})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``durable`` command; returns the process exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_USAGE)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return handler(args)
    except UsageError as exc:
        print(f"durable {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"durable {args.command}: interrupted", file=sys.stderr)
        return 130


# ------------------------------------------------------------------------------------------------
# durable worker


@contextmanager
def _environment(updates: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of the block."""
    saved = {name: os.environ.get(name) for name in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass
class OpsSettings:
    """Where the ops HTTP endpoint listens."""

    host: str
    port: int
    token: str | None


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _cmd_worker(args: argparse.Namespace) -> int:
    level = args.log_level or _env(ENV_LOG_LEVEL, _log_level) or "info"
    _configure_logging(level)
    concurrency = args.concurrency or _env(ENV_CONCURRENCY, positive_int_arg)
    partitions = args.partitions or _env(ENV_PARTITIONS, positive_int_arg)
    drain_timeout = (
        args.drain_timeout if args.drain_timeout is not None else _env(ENV_DRAIN_TIMEOUT, seconds_arg)
    )
    ops_port = args.ops_port if args.ops_port is not None else _env(ENV_OPS_PORT, _port)
    ops_host = args.ops_host or os.environ.get(ENV_OPS_HOST, "").strip() or "0.0.0.0"
    ops_token = _ops_token() if ops_port else None
    env: dict[str, str] = {}
    if args.redis_url:
        env[ENV_REDIS_URL] = args.redis_url
    if args.hub:
        try:
            env[ENV_HUB] = resolve_hub(args.hub)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    with _environment(env):
        # the application sees the chosen Redis and hub while it is imported and while it runs
        worker = load_worker(args.app)
        if args.redis_url:
            worker.redis_url = args.redis_url
        if args.hub:
            worker.hub = args.hub
        if concurrency is not None:
            worker.config.concurrency = concurrency
        if partitions is not None:
            worker.config.partitions = partitions
        if drain_timeout is not None:
            worker.config.drain_timeout = drain_timeout
        ops = OpsSettings(ops_host, ops_port, ops_token) if ops_port else None
        try:
            return anyio.run(_serve_worker, worker, ops)
        except Exception as exc:
            errors = leaf_exceptions(exc)
            for error in errors:
                log.debug("worker failed", exc_info=error)
            message = "; ".join(f"{type(e).__name__}: {e}" for e in errors)
            log.error("worker failed: %s", message)
            return EXIT_FAILURE


def _log_level(text: str) -> str:
    value = text.lower()
    if value not in _LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(_LOG_LEVELS)}, got {text!r}")
    return value


OPS_SERVER_MODULE = "durable._ops.server"


def _load_ops_server() -> Callable[..., Awaitable[None]] | None:
    """``serve_ops`` of :data:`OPS_SERVER_MODULE` when this build has the ops server, else None."""
    try:
        module = importlib.import_module(OPS_SERVER_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name == OPS_SERVER_MODULE:
            return None
        raise
    serve: Callable[..., Awaitable[None]] | None = getattr(module, "serve_ops", None)
    return serve


async def _serve_worker(worker: Worker, ops: OpsSettings | None) -> int:
    """Run ``worker`` until a stop signal, then let it drain; returns the exit code."""
    if not worker.redis_url and not os.environ.get(ENV_REDIS_URL, "").strip():
        log.info("no Redis configured (--redis-url, $%s): using the embedded Redis", ENV_REDIS_URL)
    url = await anyio.to_thread.run_sync(resolve_url, worker.redis_url)
    worker.redis_url = url
    exit_code = EXIT_OK
    started = False
    stopping = False

    with signal_receiver() as signals:
        async with anyio.create_task_group() as tg:

            def stop(reason: str) -> None:
                nonlocal stopping, exit_code
                if stopping or not started or worker.worker_id is None:
                    if stopping:
                        log.warning("%s again: stopping without waiting for in-flight work", reason)
                        exit_code = EXIT_FAILURE
                    tg.cancel_scope.cancel()
                    return
                stopping = True
                log.info(
                    "%s: draining (up to %gs; signal again to stop at once)",
                    reason,
                    worker.config.drain_timeout,
                )
                worker.request_stop()

            async def run_worker(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
                await worker.run(task_status=task_status)
                tg.cancel_scope.cancel()  # the worker is done: so are the helpers (an error does the same)

            async def watch_signals() -> None:
                async for signum in signals:
                    stop(signal.Signals(signum).name)

            async def run_ops(settings: OpsSettings) -> None:
                nonlocal exit_code
                serve = _load_ops_server()
                if serve is None:
                    log.warning("this build has no ops server; ignoring the ops port %d", settings.port)
                    return
                client = AsyncClient(url, worker.hub)
                try:
                    await serve(worker._runtime, client, settings.host, settings.port, settings.token)
                except Exception as exc:
                    log.error("ops server on %s:%d failed: %s", settings.host, settings.port, exc)
                    exit_code = EXIT_FAILURE
                    stop("ops server failure")
                finally:
                    with anyio.CancelScope(shield=True):
                        await client.close()

            tg.start_soon(watch_signals)
            await tg.start(run_worker)
            started = True
            log.info(
                "worker %s started: hub=%s redis=%s concurrency=%d drain-timeout=%gs",
                worker.worker_id,
                worker.hub,
                redact_url(url),
                worker.config.concurrency,
                worker.config.drain_timeout,
            )
            if ops is not None:
                tg.start_soon(run_ops, ops)
    if not started:
        log.info("worker stopped before it started")
    elif exit_code == EXIT_OK:
        runtime = worker._runtime
        handed_back = runtime.activities.handed_back if runtime is not None else 0
        if handed_back:
            # their threads are daemons: they do not keep this process alive, the tasks run again
            log.info(
                "worker stopped: drain timeout reached, %d unfinished activity task(s) handed back "
                "for redelivery; partition leases released",
                handed_back,
            )
        else:
            log.info("worker stopped: in-flight work drained and partition leases released")
    return exit_code


# ------------------------------------------------------------------------------------------------
# durable sidecar


def _cmd_sidecar(args: argparse.Namespace) -> int:
    _configure_logging(args.log_level or _env(ENV_LOG_LEVEL, _log_level) or "info")
    try:
        sidecar_class = load_sidecar_class()
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    try:
        hub = resolve_hub(args.hub)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    sidecar = sidecar_class(args.redis_url, hub, host=args.host, port=args.port)
    partitions = args.partitions or _env(ENV_PARTITIONS, positive_int_arg)
    if partitions is not None:
        sidecar.config.partitions = partitions
    drain = args.drain_timeout if args.drain_timeout is not None else _env(ENV_DRAIN_TIMEOUT, seconds_arg)
    if drain is not None:
        sidecar.config.drain_timeout = drain
    ops_port = args.ops_port if args.ops_port is not None else _env(ENV_OPS_PORT, _port)
    ops_host = args.ops_host or os.environ.get(ENV_OPS_HOST, "").strip() or "0.0.0.0"
    ops = (
        OpsSettings(ops_host, ops_port, os.environ.get(ENV_OPS_TOKEN, "").strip() or None)
        if ops_port
        else None
    )
    try:
        return anyio.run(_serve_worker, sidecar, ops)
    except Exception as exc:
        log.error("sidecar failed: %s", "; ".join(f"{type(e).__name__}: {e}" for e in leaf_exceptions(exc)))
        return EXIT_FAILURE


# ------------------------------------------------------------------------------------------------
# durable demo


def _cmd_serve(args: argparse.Namespace) -> int:
    _configure_logging(args.log_level or _env(ENV_LOG_LEVEL, _log_level) or "info")
    port = args.ops_port if args.ops_port is not None else (_env(ENV_OPS_PORT, _port) or 9464)
    host = args.ops_host or os.environ.get(ENV_OPS_HOST, "").strip() or "0.0.0.0"
    token = _ops_token()

    async def serve() -> int:
        from ._ops.server import serve_ops

        url = await anyio.to_thread.run_sync(resolve_url, args.redis_url)
        async with AsyncClient(url, args.hub) as client, anyio.create_task_group() as tg:
            bound = await tg.start(serve_ops, None, client, host, port, token)
            log.info("ops server for hub %s on %s:%d (no worker)", client.hub, host, bound)
            with signal_receiver() as signals:
                async for signum in signals:
                    log.info("%s: stopping", signal.Signals(signum).name)
                    break
            tg.cancel_scope.cancel()
        return EXIT_OK

    return anyio.run(serve)


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._cli.demo import DemoOptions, run_demo

    if args.hub:
        try:
            resolve_hub(args.hub)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    options = DemoOptions(
        redis_url=args.redis_url,
        hub=args.hub,
        fan_out=args.fan_out,
        quiet=args.quiet,
        keep=args.keep,
        timeout=args.timeout,
    )
    return run_demo(options)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
