"""durable: durable orchestrations and durable entities on Redis.

Orchestrations are ordinary Python generator (or ``async def``) functions; the platform records
their progress in Redis, recovers them after crashes by deterministic replay and spreads the work
over any number of workers.
"""

from ._client import AsyncClient, Client
from ._context import EntityLock, OrchestrationContext
from ._entities import Entity, EntityContext, EntityId, EntityState
from ._model import (
    FailureDetails,
    NonDeterminismError,
    OrchestrationAlreadyExistsError,
    OrchestrationNotFoundError,
    OrchestrationState,
    OrchestrationStatus,
    RetryPolicy,
    TaskFailedError,
)
from ._registry import ActivityContext
from ._runtime import WorkerConfig
from ._serialization import PayloadTooLargeError, SerializationError
from ._tasks import Task, when_all, when_any
from ._worker import Worker

__all__ = [
    "ActivityContext",
    "AsyncClient",
    "Client",
    "Entity",
    "EntityContext",
    "EntityId",
    "EntityLock",
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
    "SerializationError",
    "Task",
    "TaskFailedError",
    "Worker",
    "WorkerConfig",
    "when_all",
    "when_any",
]

__version__ = "0.1.0"
