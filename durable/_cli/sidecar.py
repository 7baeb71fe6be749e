"""``durable sidecar``: serve the Durable Task protocol (the optional extra ``durable[sidecar]``)."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

#: the module that implements the sidecar (imported only when the command runs)
SIDECAR_MODULE = "durable._sidecar"


def add_sidecar_parser(commands: Any, add_redis_options: Any, port_type: Any) -> argparse.ArgumentParser:
    """Register ``durable sidecar`` on the ``durable`` command's sub-parsers."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "sidecar",
        help="serve the Durable Task protocol (gRPC) for Durable Task SDK workers and clients",
        description=(
            "Serve TaskHubSidecarService on HOST:PORT until SIGTERM/SIGINT, then drain. Durable "
            "Task SDK workers and clients (any language) connect to it as to any Durable Task "
            "backend; their orchestrations and activities run on this hub, beside native durable "
            "workers. The sidecar is a worker in every other respect: it owns partitions, serves "
            "the ops endpoint and drains on SIGTERM. Needs: pip install 'durable[sidecar]'."
        ),
    )
    add_redis_options(parser, default_hub=None)
    parser.add_argument("--port", type=port_type, default=4001, help="gRPC port (default: 4001)")
    parser.add_argument("--host", default="127.0.0.1", help="gRPC address (default: 127.0.0.1)")
    parser.add_argument("--partitions", type=int, metavar="N", help="partition count if this creates the hub")
    parser.add_argument("--drain-timeout", type=float, metavar="S", help="seconds to drain on a stop signal")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), type=str.lower)
    parser.add_argument("--ops-port", type=port_type, metavar="PORT", help="ops HTTP port (0: off)")
    parser.add_argument("--ops-host", metavar="HOST", help="ops HTTP address (default: 0.0.0.0)")
    return parser


def load_sidecar_class() -> Any:
    """The :class:`durable._sidecar.Sidecar` class; ImportError names the extra to install."""
    try:
        module = importlib.import_module(SIDECAR_MODULE)
    except ImportError as exc:
        raise ImportError(
            f"durable sidecar needs the optional extra: pip install 'durable[sidecar]' ({exc})"
        ) from None
    return module.Sidecar
