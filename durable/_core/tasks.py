"""Durable tasks: what orchestrator code yields or awaits.

A task completes only when the replay executor applies the matching history event; nothing here
does I/O. Generator orchestrators ``yield`` tasks, ``async def`` orchestrators ``await`` them; the
executor drives both the same way (``send``/``throw``), so no event loop is involved in replay.
"""

from __future__ import annotations

import abc
from collections.abc import Generator, Iterable, Sequence
from typing import Any, Generic, TypeVar

from .convert import rebuild
from .model import FailureDetails, TaskFailedError
from .serialization import SerializationError, decode

T = TypeVar("T")


class Task(Generic[T]):
    """A unit of durable work whose result arrives later (activity, timer, event, ...)."""

    # slots: a waiting instance's cache entry holds its open tasks
    __slots__ = ("_complete", "_exception", "_parents", "_result")

    def __init__(self) -> None:
        self._complete = False
        self._result: Any = None
        self._exception: TaskFailedError | None = None
        #: the composite tasks (when_all, when_any) this task is a child of
        self._parents: tuple[CompositeTask[Any], ...] = ()

    @property
    def is_complete(self) -> bool:
        """True once the task has a result or a failure."""
        return self._complete

    @property
    def is_failed(self) -> bool:
        """True when the task completed with a failure."""
        return self._exception is not None

    def get_result(self) -> T:
        """The task's result; raises :class:`TaskFailedError` if it failed."""
        if not self._complete:
            raise RuntimeError("the task has not completed yet")
        if self._exception is not None:
            raise self._exception
        return self._result  # type: ignore[no-any-return]

    def get_exception(self) -> TaskFailedError | None:
        """The failure, if the task failed."""
        return self._exception

    def __await__(self) -> Generator[Task[T], Any, T]:
        result = yield self
        return result  # type: ignore[no-any-return]

    def _set_result(self, result: Any) -> None:
        if self._complete:
            return
        self._complete = True
        self._result = result
        for parent in self._parents:
            parent._on_child_completed(self)

    def _set_failure(self, exc: TaskFailedError) -> None:
        if self._complete:
            return
        self._complete = True
        self._exception = exc
        for parent in self._parents:
            parent._on_child_completed(self)


class CompletableTask(Task[T]):
    """A task completed by one history event (activity, timer, sub-orchestration, event, entity call)."""

    __slots__ = ("description", "result_type")

    def __init__(self, description: str = "", result_type: Any = None) -> None:
        super().__init__()
        self.description = description
        #: the type the result payload is rebuilt into (None: as decoded)
        self.result_type = result_type

    def complete_with_payload(self, data: bytes | None, *, undecodable_fails: bool = False) -> None:
        """Complete with an encoded result, rebuilt into :attr:`result_type`; a payload that does
        not fit the type fails the task (with the field named). A payload that cannot be decoded
        at all raises (the step fails: poison handling), unless ``undecodable_fails``."""
        try:
            decoded = decode(data)
        except SerializationError as exc:
            if not undecodable_fails:
                raise
            self.fail(str(exc), FailureDetails.from_exception(exc))
            return
        try:
            value = rebuild(decoded, self.result_type, f"result of {self.description}")
        except SerializationError as exc:
            self.fail(str(exc), FailureDetails.from_exception(exc))
            return
        self._set_result(value)

    def fail(self, message: str, details: FailureDetails) -> None:
        """Complete the task with a failure."""
        self._set_failure(TaskFailedError(message, details))


class EventTask(CompletableTask[T]):
    """A wait for an external event: it carries the (casefolded) event name it waits for, so the
    context keeps its waiters in one list rather than in a map of lists."""

    __slots__ = ("event_key",)

    def __init__(self, event_key: str, description: str = "", result_type: Any = None) -> None:
        super().__init__(description, result_type)
        self.event_key = event_key


class RetryableTask(CompletableTask[T]):
    """An activity or sub-orchestration call with a retry policy; the context reschedules it."""

    __slots__ = ("action", "attempt", "call", "details", "first_attempt_ms", "policy")

    def __init__(
        self,
        description: str,
        action: dict[str, Any],
        policy: Any,
        first_attempt_ms: int,
        result_type: Any = None,
    ) -> None:
        super().__init__(description, result_type)
        self.action = action
        self.policy = policy
        self.attempt = 1
        self.first_attempt_ms = first_attempt_ms
        #: the task id of the first attempt: the call's identity across retries
        self.call: int | None = None
        #: the last heartbeat details an attempt recorded (encoded), passed to the next attempt
        self.details: bytes | None = None


class CompositeTask(Task[T], abc.ABC):
    """A task made of child tasks."""

    __slots__ = ("children",)

    def __init__(self, children: Sequence[Task[Any]]) -> None:
        super().__init__()
        self.children = list(children)
        for child in self.children:
            if not isinstance(child, Task):
                raise TypeError(f"expected durable tasks, got {type(child).__qualname__}")
            child._parents = (*child._parents, self)

    @abc.abstractmethod
    def _on_child_completed(self, child: Task[Any]) -> None:
        """Called when one of the children completes (when_all and when_any decide differently)."""


class WhenAllTask(CompositeTask[list[Any]]):
    """Completes with every child's result, in order; fails with the first child failure."""

    __slots__ = ()

    def __init__(self, children: Sequence[Task[Any]]) -> None:
        super().__init__(children)
        self._check()

    def _check(self) -> None:
        if all(c.is_complete for c in self.children):
            for c in self.children:
                if c.is_failed:
                    self._set_failure(c.get_exception())  # type: ignore[arg-type]
                    return
            self._set_result([c._result for c in self.children])

    def _on_child_completed(self, child: Task[Any]) -> None:
        if child.is_failed:
            self._set_failure(child.get_exception())  # type: ignore[arg-type]
        else:
            self._check()


class WhenAnyTask(CompositeTask[Task[Any]]):
    """Completes with the first child that completes (the child task itself)."""

    __slots__ = ()

    def __init__(self, children: Sequence[Task[Any]]) -> None:
        if not children:
            raise ValueError("when_any needs at least one task")
        super().__init__(children)
        for c in self.children:
            if c.is_complete:
                self._set_result(c)
                break

    def _on_child_completed(self, child: Task[Any]) -> None:
        self._set_result(child)


def when_all(tasks: Iterable[Task[Any]]) -> Task[list[Any]]:
    """A task that completes when all ``tasks`` complete, with the list of their results."""
    return WhenAllTask(list(tasks))


def when_any(tasks: Iterable[Task[Any]]) -> Task[Task[Any]]:
    """A task that completes when the first of ``tasks`` completes, with that task as result."""
    return WhenAnyTask(list(tasks))
