"""durable: durable orchestrations and durable entities on Redis.

Orchestrations are ordinary Python generator (or ``async def``) functions; the platform records
their progress in Redis, recovers them after crashes by deterministic replay and spreads the work
over any number of workers.
"""

from ._client import AsyncClient
from ._config import VERSION as __version__
from ._config import WorkerConfig
from ._core.context import EntityLock, OrchestrationContext
from ._core.entities import Entity, EntityContext, EntityId, EntitySignal, EntityState
from ._core.model import (
    ActivityTimeoutError,
    FailureDetails,
    NonDeterminismError,
    OrchestrationAlreadyExistsError,
    OrchestrationNotFoundError,
    OrchestrationState,
    OrchestrationStatus,
    RetryPolicy,
    TaskFailedError,
)
from ._core.registry import ActivityContext
from ._core.schedules import (
    ScheduleAlreadyExistsError,
    ScheduleDescription,
    ScheduleNotFoundError,
    ScheduleStatus,
)
from ._core.serialization import PayloadTooLargeError, SerializationError
from ._core.tasks import Task, when_all, when_any
from ._sync_client import Client
from ._worker import Worker

__all__ = [
    "ActivityContext",
    "ActivityTimeoutError",
    "AsyncClient",
    "Client",
    "Entity",
    "EntityContext",
    "EntityId",
    "EntityLock",
    "EntitySignal",
    "EntityState",
    "FailureDetails",
    "NonDeterminismError",
    "OrchestrationAlreadyExistsError",
    "OrchestrationContext",
    "OrchestrationNotFoundError",
    "OrchestrationState",
    "OrchestrationStatus",
    "PayloadTooLargeError",
    "RetryPolicy",
    "ScheduleAlreadyExistsError",
    "ScheduleDescription",
    "ScheduleNotFoundError",
    "ScheduleStatus",
    "SerializationError",
    "Task",
    "TaskFailedError",
    "Worker",
    "WorkerConfig",
    "__version__",
    "when_all",
    "when_any",
]
