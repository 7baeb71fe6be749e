"""``durable sidecar``: a worker that serves the Durable Task protocol to SDK workers and clients.

A :class:`Sidecar` is a :class:`durable.Worker` in every respect (it takes part in partition
ownership, commits steps, serves the ops endpoint) that runs no code of its own: it streams the
hub's remote work items to connected Durable Task SDK workers, and answers the protocol's client
RPCs with the engine's client operations.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import grpc
from durabletask.internal import orchestrator_service_pb2_grpc as stubs

from .._client import AsyncClient
from .._config import WorkerConfig
from .._runtime.runtime import SIDECAR_PREFIX
from .._store.workitems import ANY_ENTITY, ANY_NAME, WorkItemStore
from .._worker import Worker
from .dispatch import Dispatcher
from .service import SidecarService

log = logging.getLogger("durable.sidecar")

DEFAULT_PORT = 4001
DEFAULT_HOST = "127.0.0.1"
_MAX_MESSAGE = 64 * 1024 * 1024


class Sidecar(Worker):
    """Serves ``TaskHubSidecarService`` on ``host:port`` for one hub.

    ``port=0`` picks a free port (see :attr:`port` once it runs). ``visibility_ms`` is how long a
    work item held by a sidecar that went quiet stays with it before another sidecar takes it.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        hub: str | None = None,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        config: WorkerConfig | None = None,
        visibility_ms: int = 30_000,
    ) -> None:
        super().__init__(redis_url, hub, config=config)
        self.host = host
        self.port = port
        self.visibility_ms = visibility_ms
        self.dispatcher: Dispatcher | None = None

    @property
    def address(self) -> str:
        """``host:port`` for SDK clients and workers."""
        return f"{self.host}:{self.port}"

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        rt = self._make_runtime()
        rt.run_activities = False
        rt.worker_id = SIDECAR_PREFIX + rt.worker_id
        rt.prepare()
        dispatcher = Dispatcher(rt.store, WorkItemStore(rt.store), rt.worker_id, self.visibility_ms)
        self.dispatcher = dispatcher
        client = AsyncClient(self.redis_url, self.hub)
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", _MAX_MESSAGE),
                ("grpc.max_send_message_length", _MAX_MESSAGE),
            ]
        )
        stubs.add_TaskHubSidecarServiceServicer_to_server(SidecarService(client, dispatcher), server)
        bound = server.add_insecure_port(f"{self.host}:{self.port}")
        if bound == 0:
            raise OSError(f"durable sidecar: cannot listen on {self.host}:{self.port}")
        self.port = bound
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(self._run_runtime)
                # from now on, owners hand out every orchestration and entity no local worker
                # registered (it waits for an SDK worker that runs it, as with any Durable Task backend)
                await dispatcher.workitems.advertise([ANY_NAME, ANY_ENTITY])
                await server.start()
                tg.start_soon(dispatcher.run)
                log.info(
                    "durable sidecar serving the Durable Task protocol on %s (hub %s)", self.address, self.hub
                )
                task_status.started()
                await rt.stopped.wait()
                # the runtime drained: hand back what this sidecar holds, close the streams
                await dispatcher.hand_back()
                await server.stop(grace=1.0)
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await server.stop(grace=None)
                await client.close()
                await rt.store.close()

    async def _run_runtime(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        assert self._runtime is not None
        await self._runtime.run(task_status=task_status)
