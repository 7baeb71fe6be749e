"""A pytest plugin that runs the Durable Task SDK's own end-to-end tests against ``durable sidecar``.

The SDK's e2e tests (microsoft/durabletask-python, ``tests/durabletask/``) start the SDK's in-memory
backend with ``durabletask.testing.create_test_backend(port=...)``. This plugin replaces that
function before the test modules import it: each call starts a :class:`durable._sidecar.Sidecar` on
the same port, on a fresh hub of the Redis at ``$DURABLE_REDIS_URL``. The tests themselves run
unchanged. See ``run`` beside this file.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import durabletask.testing

from durable import WorkerConfig
from durable._sidecar import Sidecar


class _SidecarBackend:
    """What the SDK's tests use of their backend: ``stop()`` and ``reset()``."""

    def __init__(self, port: int) -> None:
        config = WorkerConfig(partitions=4, poll_ms=100, balance_interval_ms=100, drain_timeout=2)
        self.sidecar = Sidecar(
            os.environ["DURABLE_REDIS_URL"],
            f"sdk-e2e-{uuid.uuid4().hex[:8]}",
            host="[::]",
            port=port,
            config=config,
        )
        self.sidecar.start()

    def stop(self, grace: float | None = None) -> None:
        self.sidecar.stop()

    def reset(self) -> None:
        """Nothing to clear: the next backend uses a new hub."""


def create_test_backend(port: int = 50051, **_: Any) -> _SidecarBackend:
    return _SidecarBackend(port)


durabletask.testing.create_test_backend = create_test_backend  # type: ignore[assignment]
