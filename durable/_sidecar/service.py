"""The ``TaskHubSidecarService`` implementation: worker RPCs go to the dispatcher, client RPCs to
the engine's client operations (:class:`durable.AsyncClient`)."""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc
from durabletask.internal import orchestrator_service_pb2 as pb
from durabletask.internal import orchestrator_service_pb2_grpc as stubs
from google.protobuf import empty_pb2, wrappers_pb2

from .._client import AsyncClient
from .._core import events as ev
from .._core.model import OrchestrationAlreadyExistsError, OrchestrationNotFoundError, OrchestrationStatus
from .._core.serialization import encode
from .._runtime import tracing
from . import convert
from .dispatch import Dispatcher
from .entity_rpcs import EntityRpcs

log = logging.getLogger("durable.sidecar")

#: the RPCs this sidecar answers with UNIMPLEMENTED, and why
UNSUPPORTED: dict[str, str] = {
    "DeleteTaskHub": (
        "the engine never deletes a hub (a live worker or sidecar would go on writing to it, and "
        "a hub's partition count must not change under it); stop its workers and sidecars, then "
        "delete its keys (durable:{<hub>}:* and durable:{<hub>:NN}:*) in Redis, or use a new hub name"
    ),
    "SkipGracefulOrchestrationTerminations": (
        "the engine has no graceful termination to skip: a terminate ends an instance at its next step"
    ),
}
_PING_SECONDS = 30.0
_REWIND_SECONDS = 30.0


def _ms(value: Any) -> _dt.datetime:
    return value.ToDatetime(tzinfo=_dt.UTC)  # type: ignore[no-any-return]


class SidecarService(EntityRpcs, stubs.TaskHubSidecarServiceServicer):  # type: ignore[misc]
    """One hub behind the Durable Task protocol."""

    def __init__(self, client: AsyncClient, dispatcher: Dispatcher) -> None:
        self.client = client
        self.dispatcher = dispatcher
        for name, why in UNSUPPORTED.items():
            setattr(self, name, self._unsupported(name, why))

    @staticmethod
    def _unsupported(name: str, why: str) -> Any:
        async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> NoReturn:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"durable sidecar: {name}: {why}")
            raise AssertionError("unreachable")

        return handler

    # -- worker RPCs -------------------------------------------------------------------------------
    async def Hello(self, request: empty_pb2.Empty, context: Any) -> empty_pb2.Empty:
        return empty_pb2.Empty()

    async def GetWorkItems(self, request: pb.GetWorkItemsRequest, context: Any) -> AsyncIterator[pb.WorkItem]:
        conn = await self.dispatcher.connect(request)
        log.info("an SDK worker connected (%s)", context.peer())
        try:
            while not self.dispatcher.stopping:
                try:
                    item = await _wait_for(conn.queue.get(), _PING_SECONDS)
                except TimeoutError:
                    item = pb.WorkItem(healthPing=pb.HealthPing())
                yield item
        finally:
            self.dispatcher.disconnect(conn)

    async def CompleteOrchestratorTask(
        self, request: pb.OrchestratorResponse, context: Any
    ) -> pb.CompleteTaskResponse:
        await self._complete(self.dispatcher.complete_orchestration(request), context)
        return pb.CompleteTaskResponse()

    async def CompleteActivityTask(
        self, request: pb.ActivityResponse, context: Any
    ) -> pb.CompleteTaskResponse:
        await self._complete(self.dispatcher.complete_activity(request), context)
        return pb.CompleteTaskResponse()

    async def CompleteEntityTask(
        self, request: pb.EntityBatchResult, context: Any
    ) -> pb.CompleteTaskResponse:
        await self._complete(self.dispatcher.complete_entity(request), context)
        return pb.CompleteTaskResponse()

    async def _complete(self, work: Any, context: Any) -> None:
        try:
            await work
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def AbandonTaskOrchestratorWorkItem(self, request: Any, context: Any) -> Any:
        self.dispatcher.abandon(request.completionToken)
        return pb.AbandonOrchestrationTaskResponse()

    async def AbandonTaskActivityWorkItem(self, request: Any, context: Any) -> Any:
        self.dispatcher.abandon(request.completionToken)
        return pb.AbandonActivityTaskResponse()

    async def AbandonTaskEntityWorkItem(self, request: Any, context: Any) -> Any:
        self.dispatcher.abandon(request.completionToken)
        return pb.AbandonEntityTaskResponse()

    # -- hub RPCs ----------------------------------------------------------------------------------
    async def CreateTaskHub(self, request: pb.CreateTaskHubRequest, context: Any) -> pb.CreateTaskHubResponse:
        """The hub exists once this sidecar runs (its metadata is written again if it went
        missing); recreating an existing hub would delete it, which the engine never does."""
        if request.recreateIfExists:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"durable sidecar: hub {self.client.hub!r} exists and is not recreated: "
                + UNSUPPORTED["DeleteTaskHub"],
            )
        if await self.dispatcher.store.restore_meta():
            log.warning("hub %r had no metadata: written again", self.client.hub)
        return pb.CreateTaskHubResponse()

    # -- client RPCs -------------------------------------------------------------------------------
    async def StartInstance(
        self, request: pb.CreateInstanceRequest, context: Any
    ) -> pb.CreateInstanceResponse:
        start_at = (
            _ms(request.scheduledStartTimestamp) if request.HasField("scheduledStartTimestamp") else None
        )
        try:
            value = convert.json_value(convert.optional_text(request, "input"))
            # the SDK client's trace context: the start (and so the orchestration) joins its trace
            with tracing.remote_parent(convert.trace_parent(request)):
                iid = await self.client.schedule_new_orchestration(
                    request.name,
                    input=value,
                    instance_id=request.instanceId or None,
                    start_at=start_at,
                    tags=dict(request.tags) or None,
                    version=request.version.value if request.HasField("version") else None,
                    replace=_reuse_policy(request),
                )
        except OrchestrationAlreadyExistsError as exc:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except TimeoutError as exc:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
        return pb.CreateInstanceResponse(instanceId=iid)

    async def GetInstance(self, request: pb.GetInstanceRequest, context: Any) -> pb.GetInstanceResponse:
        state = await self.client.get_orchestration_state(request.instanceId)
        return self._instance_response(state, request.getInputsAndOutputs)

    @staticmethod
    def _instance_response(state: Any, payloads: bool) -> pb.GetInstanceResponse:
        if state is None:
            return pb.GetInstanceResponse(exists=False)
        return pb.GetInstanceResponse(exists=True, orchestrationState=convert.state_to_pb(state, payloads))

    async def WaitForInstanceStart(
        self, request: pb.GetInstanceRequest, context: Any
    ) -> pb.GetInstanceResponse:
        return await self._wait(request, context, self.client.wait_for_orchestration_start)

    async def WaitForInstanceCompletion(
        self, request: pb.GetInstanceRequest, context: Any
    ) -> pb.GetInstanceResponse:
        return await self._wait(request, context, self.client.wait_for_orchestration_completion)

    async def _wait(self, request: pb.GetInstanceRequest, context: Any, wait: Any) -> pb.GetInstanceResponse:
        if await self.client.get_orchestration_state(request.instanceId) is None:
            return pb.GetInstanceResponse(exists=False)
        remaining = context.time_remaining()
        timeout = remaining if remaining is not None else 365 * 86400.0
        try:
            state = await wait(request.instanceId, timeout=max(timeout, 0.001))
        except TimeoutError:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"timed out waiting for instance {request.instanceId!r}"
            )
        return self._instance_response(state, request.getInputsAndOutputs)

    async def RaiseEvent(self, request: pb.RaiseEventRequest, context: Any) -> pb.RaiseEventResponse:
        value = convert.json_value(convert.optional_text(request, "input"))
        try:
            await self.client.raise_orchestration_event(request.instanceId, request.name, data=value)
        except OrchestrationNotFoundError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        return pb.RaiseEventResponse()

    async def TerminateInstance(self, request: pb.TerminateRequest, context: Any) -> pb.TerminateResponse:
        value = convert.json_value(convert.optional_text(request, "output"))
        try:
            await self._terminate(request.instanceId, value, request.recursive)
        except OrchestrationNotFoundError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        return pb.TerminateResponse()

    async def _terminate(self, instance_id: str, output: Any, recursive: bool) -> None:
        if recursive:
            for child in await self._children(instance_id):
                state = await self.client.get_orchestration_state(child)
                if state is not None and not state.runtime_status.is_terminal:
                    await self._terminate(child, output, True)
        await self.client.terminate_orchestration(instance_id, output=output)

    async def _children(self, instance_id: str) -> list[str]:
        history = await self.client.get_orchestration_history(instance_id)
        return [str(e["iid"]) for e in history if e.get("k") == ev.SUB_CREATED and e.get("iid")]

    async def SuspendInstance(self, request: pb.SuspendRequest, context: Any) -> pb.SuspendResponse:
        reason = convert.optional_text(request, "reason")
        try:
            await self.client.suspend_orchestration(request.instanceId, reason=reason)
        except OrchestrationNotFoundError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        return pb.SuspendResponse()

    async def ResumeInstance(self, request: pb.ResumeRequest, context: Any) -> pb.ResumeResponse:
        reason = convert.optional_text(request, "reason")
        try:
            await self.client.resume_orchestration(request.instanceId, reason=reason)
        except OrchestrationNotFoundError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        return pb.ResumeResponse()

    async def PurgeInstances(
        self, request: pb.PurgeInstancesRequest, context: Any
    ) -> pb.PurgeInstancesResponse:
        if request.instanceId:
            ids = [request.instanceId]
        elif request.HasField("purgeInstanceFilter"):
            f = request.purgeInstanceFilter
            states = await self.client.list_orchestrations(
                status=[convert.STATUS_FROM_PB[s] for s in f.runtimeStatus] or None,
                created_from=_ms(f.createdTimeFrom) if f.HasField("createdTimeFrom") else None,
                created_to=_ms(f.createdTimeTo) if f.HasField("createdTimeTo") else None,
                limit=1_000_000,
            )
            ids = [s.instance_id for s in states if s.runtime_status.is_terminal]
        else:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "give an instance id or a filter")
        count = 0
        for iid in ids:
            count += await self._purge(iid, request.recursive)
        return pb.PurgeInstancesResponse(
            deletedInstanceCount=count, isComplete=wrappers_pb2.BoolValue(value=True)
        )

    async def _purge(self, instance_id: str, recursive: bool) -> int:
        children = await self._children(instance_id) if recursive else []
        try:
            count = int(await self.client.purge_orchestration(instance_id))
        except ValueError:
            return 0  # still running: not purged
        for child in children:
            count += await self._purge(child, True)
        return count

    async def RewindInstance(
        self, request: pb.RewindInstanceRequest, context: Any
    ) -> pb.RewindInstanceResponse:
        """The engine's rewind: of orchestrations native workers run (an SDK-run one is refused
        with FAILED_PRECONDITION, and the reason)."""
        try:
            await self.client.rewind_orchestration(
                request.instanceId, reason=convert.optional_text(request, "reason"), timeout=_REWIND_SECONDS
            )
        except OrchestrationNotFoundError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except ValueError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except TimeoutError:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the rewind of {request.instanceId!r} is not applied yet (it still will be)",
            )
        return pb.RewindInstanceResponse()

    async def RestartInstance(
        self, request: pb.RestartInstanceRequest, context: Any
    ) -> pb.RestartInstanceResponse:
        state = await self.client.get_orchestration_state(request.instanceId)
        if state is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no orchestration with id {request.instanceId!r}")
            raise AssertionError("unreachable")
        if not state.runtime_status.is_terminal:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, f"orchestration {request.instanceId!r} has not finished"
            )
        new_id = None if request.restartWithNewInstanceId else request.instanceId
        iid = await self.client.schedule_new_orchestration(state.name, input=state.input, instance_id=new_id)
        return pb.RestartInstanceResponse(instanceId=iid)

    async def QueryInstances(
        self, request: pb.QueryInstancesRequest, context: Any
    ) -> pb.QueryInstancesResponse:
        query = request.query
        offset = int(query.continuationToken.value or 0) if query.HasField("continuationToken") else 0
        size = query.maxInstanceCount or 100
        statuses = [convert.STATUS_FROM_PB[s] for s in query.runtimeStatus]
        if OrchestrationStatus.RUNNING.value in statuses:
            statuses.append(OrchestrationStatus.CONTINUED_AS_NEW.value)
        prefix = query.instanceIdPrefix.value if query.HasField("instanceIdPrefix") else ""
        states = await self.client.list_orchestrations(
            status=list(statuses) or None,
            created_from=_ms(query.createdTimeFrom) if query.HasField("createdTimeFrom") else None,
            created_to=_ms(query.createdTimeTo) if query.HasField("createdTimeTo") else None,
            limit=offset + size + 1 if not prefix else 1_000_000,
        )
        matching = [s for s in states if s.instance_id.startswith(prefix)]
        page = matching[offset : offset + size]
        out = pb.QueryInstancesResponse(
            orchestrationState=[convert.state_to_pb(s, query.fetchInputsAndOutputs) for s in page]
        )
        if len(matching) > offset + size:
            out.continuationToken.value = str(offset + size)
        return out

    async def ListInstanceIds(
        self, request: pb.ListInstanceIdsRequest, context: Any
    ) -> pb.ListInstanceIdsResponse:
        """Finished instances (completed time: the last update), newest first, paged."""
        token = request.lastInstanceKey.value if request.HasField("lastInstanceKey") else ""
        try:
            offset = int(token or 0)
        except ValueError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad instance key {token!r}")
        size = request.pageSize if request.pageSize > 0 else 100
        terminal = [s for s in OrchestrationStatus if s.is_terminal]
        wanted = [convert.STATUS_FROM_PB[s] for s in request.runtimeStatus] or [s.value for s in terminal]
        lo = _ms(request.completedTimeFrom) if request.HasField("completedTimeFrom") else None
        hi = _ms(request.completedTimeTo) if request.HasField("completedTimeTo") else None
        states = await self.client.list_orchestrations(status=list(wanted), limit=1_000_000)
        ids = [
            s.instance_id
            for s in states
            if s.runtime_status.is_terminal
            and (lo is None or s.last_updated_at >= lo)
            and (hi is None or s.last_updated_at <= hi)
        ]
        out = pb.ListInstanceIdsResponse(instanceIds=ids[offset : offset + size])
        if len(ids) > offset + size:
            out.lastInstanceKey.value = str(offset + size)
        return out

    async def StreamInstanceHistory(
        self, request: pb.StreamInstanceHistoryRequest, context: Any
    ) -> AsyncIterator[pb.HistoryChunk]:
        """The history of the instance's current execution, in chunks."""
        iid = request.instanceId
        if await self.client.get_orchestration_state(iid) is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no orchestration with id {iid!r}")
        history = await self.client.get_orchestration_history(iid)
        wanted = convert.optional_text(request, "executionId")
        started = next((e for e in history if e.get("k") == ev.EXECUTION_STARTED), {})
        if wanted and started.get("exec") and wanted != started.get("exec"):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{iid!r} has no execution {wanted!r}")
        for start in range(0, len(history), _HISTORY_CHUNK):
            chunk = [_packed(e) for e in history[start : start + _HISTORY_CHUNK]]
            yield pb.HistoryChunk(events=[convert.history_event(e, iid) for e in chunk])


def _reuse_policy(request: pb.CreateInstanceRequest) -> list[OrchestrationStatus] | None:
    """The start's id reuse policy as the engine's ``replace``: the statuses it lists (none: an
    existing instance is never replaced); without a policy, the engine's rule (finished ones).
    A status the engine never gives an instance (CANCELED) matches nothing."""
    if not request.HasField("orchestrationIdReusePolicy"):
        return None
    statuses = request.orchestrationIdReusePolicy.replaceableStatus
    return [OrchestrationStatus(convert.STATUS_FROM_PB[s]) for s in statuses if s in convert.STATUS_FROM_PB]


def _packed(event: dict[str, Any]) -> dict[str, Any]:
    """A history event whose payloads the client decoded, with them encoded again."""
    return {k: encode(v) if k in _PAYLOADS and v is not None else v for k, v in event.items()}


_PAYLOADS = ("input", "result", "output")
_HISTORY_CHUNK = 200


async def _wait_for(awaitable: Any, timeout: float) -> Any:
    import asyncio

    return await asyncio.wait_for(awaitable, timeout)
