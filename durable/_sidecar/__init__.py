"""``durable sidecar``: the Durable Task protocol (``TaskHubSidecarService``) on this engine.

Needs the optional extra ``durable[sidecar]`` (``durabletask`` for the generated protocol modules,
and ``grpcio``). Nothing outside this package imports it, except the ``durable sidecar`` command.
"""

from .server import DEFAULT_HOST, DEFAULT_PORT, Sidecar
from .service import UNSUPPORTED

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "UNSUPPORTED", "Sidecar"]
