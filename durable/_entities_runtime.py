"""Entity processing inside a partition step (filled in by the entities feature)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._partition import Instance, PartitionRunner
    from ._runtime import Runtime


class EntityProcessor:
    """Applies entity operations for the partitions of one worker."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def ensure_loaded(self, runner: PartitionRunner, entity_ids: list[str]) -> None:
        return None

    def process(self, runner: PartitionRunner, target: str, msgs: list[dict[str, Any]], step: Any) -> None:
        raise NotImplementedError("entities")

    async def flush(self, runner: PartitionRunner, step: Any) -> None:
        return None

    def route_action(
        self, runner: PartitionRunner, inst: Instance, action: dict[str, Any], step: Any
    ) -> None:
        raise NotImplementedError(f"unsupported action {action.get('k')}")
