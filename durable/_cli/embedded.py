"""``durable redis status|stop``: the embedded Redis that ``durable demo`` and the other commands
start when no Redis is given."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import textwrap

from .._config import ENV_REDIS_URL
from .._embedded import DEFAULT_DATA_DIR, _pid_alive, embedded_redis_status, stop_embedded_redis
from .common import (
    EXIT_CODES_HELP,
    EXIT_FAILURE,
    EXIT_OK,
    HELP_WIDTH,
    Commands,
    command_group,
    help_formatter,
    render_fields,
    seconds_arg,
)


def register(commands: Commands) -> None:
    """``durable redis status|stop``: the embedded Redis of a data folder."""
    group = command_group(
        commands,
        "redis",
        "show or stop the embedded Redis server",
        textwrap.fill(
            "The embedded Redis (used when no --redis-url or $" + ENV_REDIS_URL + " is given) is a "
            "redis-server shared by every durable process that uses the same data folder. It keeps "
            "running after they exit, so the CLI and the dashboard can still reach it; these commands "
            "show it and stop it. Its data stays in the folder and is loaded again on the next start.",
            HELP_WIDTH,
        ),
    )
    for name, handler, summary, description in (
        (
            "status",
            _cmd_redis_status,
            "show whether the embedded Redis runs (exit 0) or not (exit 1)",
            "Show whether the embedded Redis of the data folder runs: its URL, pid, start time and "
            "binary. Exit code 0 when it runs, 1 when it does not. Starts nothing.",
        ),
        (
            "stop",
            _cmd_redis_stop,
            "stop the embedded Redis (its data stays)",
            "Shut the embedded Redis of the data folder down (SHUTDOWN, which writes its append-only "
            "file, then SIGTERM, then SIGKILL after the timeout). Exit code 0 when it stopped or was "
            "not running, 1 when it could not be stopped. The data stays in the folder.",
        ),
    ):
        parser = group.add_parser(
            name,
            help=summary,
            description=textwrap.fill(description, HELP_WIDTH),
            epilog=EXIT_CODES_HELP,
            formatter_class=help_formatter,
        )
        parser.add_argument(
            "--data-dir",
            metavar="DIR",
            default=str(DEFAULT_DATA_DIR),
            help=f"the embedded Redis's data folder (default: ./{DEFAULT_DATA_DIR})",
        )
        if name == "status":
            parser.add_argument(
                "--output",
                dest="format",
                choices=("table", "json"),
                default="table",
                metavar="FORMAT",
                help="'table' (default): for people; 'json': for scripts",
            )
        else:
            parser.add_argument(
                "--timeout",
                type=seconds_arg,
                default=10.0,
                metavar="S",
                help="wait up to S seconds for each way of stopping it (default: 10)",
            )
        parser.set_defaults(handler=handler)


def _cmd_redis_status(args: argparse.Namespace) -> int:
    try:
        status = embedded_redis_status(args.data_dir)
    except OSError as exc:
        print(f"durable redis status: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    started = (
        _dt.datetime.fromtimestamp(status.started_at, _dt.UTC).replace(microsecond=0)
        if status.started_at is not None
        else None
    )
    if args.format == "json":
        data = {
            "running": status.running,
            "data_dir": str(status.data_dir),
            "url": status.url,
            "pid": status.pid,
            "started_at": started.isoformat().replace("+00:00", "Z") if started else None,
            "redis_server": status.redis_server,
        }
        print(json.dumps(data, indent=2))
    elif status.running:
        pairs = [
            ("Embedded Redis", "running"),
            ("URL", str(status.url)),
            ("PID", str(status.pid)),
            ("Data folder", str(status.data_dir)),
            ("Started", started.strftime("%Y-%m-%d %H:%M:%SZ") if started else "-"),
            ("Binary", status.redis_server or "-"),
        ]
        print(render_fields(pairs))
    else:
        print(render_fields([("Embedded Redis", "not running"), ("Data folder", str(status.data_dir))]))
    return EXIT_OK if status.running else EXIT_FAILURE


def _cmd_redis_stop(args: argparse.Namespace) -> int:
    try:
        status = embedded_redis_status(args.data_dir)
        stopped = stop_embedded_redis(args.data_dir, timeout=args.timeout)
    except OSError as exc:
        print(f"durable redis stop: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if not stopped:
        print(f"No embedded Redis is running for {status.data_dir} (nothing to stop).")
        return EXIT_OK
    if status.pid is not None and _pid_alive(status.pid):
        print(f"durable redis stop: error: redis-server (pid {status.pid}) is still running", file=sys.stderr)
        return EXIT_FAILURE
    what = f"pid {status.pid}, {status.url}" if status.running else "it"
    print(f"Stopped the embedded Redis ({what}); its data stays in {status.data_dir}.")
    return EXIT_OK
