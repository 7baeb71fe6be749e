"""OpenTelemetry tracing (the optional extra ``durable[otel]``).

With ``opentelemetry-api`` installed and a tracer provider configured by the application, durable
emits, on the tracer ``durable``:

* ``create_orchestration:<name>`` (PRODUCER) on the client, a child of the caller's active span;
* ``orchestration:<name>`` (SERVER), one span per execution of an instance, from its start to its
  end, with ``durable.instance_id``, ``durable.orchestration.name``,
  ``durable.orchestration.version``, ``durable.orchestration.status`` and a ``timer`` event per
  fired timer; a sub-orchestration's span is a child of its parent orchestration's span;
* ``activity:<name>`` (SERVER) for each attempt of an activity, a child of its orchestration's span;
* ``entity:<name>:<operation>`` (SERVER) for each entity operation applied, a child of the span of
  whoever sent it (an orchestration, an entity, a client, or another service's ``traceparent``);
  for an operation a remote executor (a Durable Task SDK worker) ran, from the hand-out of its
  work item to the commit of the reply, with ids derived from the work item
  (:func:`work_traceparent`, which the sidecar hands to the SDK).

The trace context travels in the messages as a W3C ``traceparent`` (the field the wire format
documents). Spans are emitted only once the step that did the work has committed (an activity's
once its result is stored), so a step that runs again after a crash or a conflict never emits
twice. An orchestration's span outlives the process that started it: its ids are derived from the
instance id and execution id, so every worker that runs a step of it (and every child's parent
link) agrees on them, and the worker that commits its end emits it with those ids.

Without the extra nothing here imports OpenTelemetry and every function is a cheap no-op.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from .._core.model import FailureDetails

try:  # the optional extra: never required
    from opentelemetry import context as _otel_context
    from opentelemetry import trace as _trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
except ImportError:  # pragma: no cover - exercised by the test that hides the package
    _trace = None  # type: ignore[assignment]

log = logging.getLogger("durable.tracing")

#: whether OpenTelemetry is installed (spans are recorded only if the application configured it)
ENABLED = _trace is not None
TRACER_NAME = "durable"


def _tracer() -> Any:
    return _trace.get_tracer(TRACER_NAME)


def format_traceparent(trace_id: int, span_id: int, flags: int) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"


def parse_traceparent(value: Any) -> tuple[int, int, int] | None:
    """(trace id, span id, flags) of a W3C ``traceparent``; None when absent or invalid."""
    if not isinstance(value, str):
        return None
    parts = value.strip().split("-")
    if len(parts) < 4 or len(parts[0]) != 2 or parts[0] == "ff":
        return None
    version, trace_hex, span_hex, flags_hex = parts[:4]
    if (
        len(trace_hex) != 32
        or len(span_hex) != 16
        or len(flags_hex) != 2
        or (version == "00" and len(parts) != 4)
    ):
        return None
    try:
        trace_id, span_id, flags = int(trace_hex, 16), int(span_hex, 16), int(flags_hex, 16)
    except ValueError:
        return None
    if trace_id == 0 or span_id == 0:
        return None
    return trace_id, span_id, flags


def _derived(*parts: str, size: int) -> int:
    digest = hashlib.blake2b("\x00".join(parts).encode(), digest_size=size, person=b"durable-trace").digest()
    return int.from_bytes(digest, "big") or 1


def orchestration_ids(instance_id: str, execution_id: str, incoming: Any) -> tuple[int, int, int]:
    """(trace id, span id, flags) of an execution's span: the span id derived from the instance and
    execution ids, the trace id the parent's (else derived too), so every worker agrees on them."""
    span_id = _derived(instance_id, execution_id, size=8)
    parent = parse_traceparent(incoming)
    if parent is not None:
        return parent[0], span_id, parent[2]
    return _derived(instance_id, execution_id, "trace", size=16), span_id, 1


def orchestration_traceparent(instance_id: str, execution_id: str, incoming: Any) -> str | None:
    """The ``traceparent`` an execution puts on the messages it sends (None without the extra)."""
    if not ENABLED:
        return None
    if incoming is None or isinstance(incoming, str):
        return _derived_traceparent(instance_id, execution_id, incoming)
    return format_traceparent(*orchestration_ids(instance_id, execution_id, incoming))


@functools.lru_cache(maxsize=4096)
def _derived_traceparent(instance_id: str, execution_id: str, incoming: str | None) -> str:
    """Every step of an execution sends the same ``traceparent``: derived (two hashes) once."""
    return format_traceparent(*orchestration_ids(instance_id, execution_id, incoming))


def work_ids(traceparent: Any, *key: str) -> tuple[int, int, int]:
    """(trace id, span id, flags) of the span of work that an SDK worker runs (an activity attempt,
    an entity operation): derived from ``key`` (what names the work item), so the sidecar that
    hands it out, the one that takes its completion and the partition owner agree on them; in the
    sender's trace (``traceparent``), else in one derived from ``key`` too."""
    span_id = _derived(*key, "work", size=8)
    parent = parse_traceparent(traceparent)
    if parent is not None:
        return parent[0], span_id, parent[2]
    return _derived(*key, "trace", size=16), span_id, 1


def work_traceparent(traceparent: Any, *key: str) -> str | None:
    """That span's context as a ``traceparent``, for the SDK worker (None without the extra)."""
    if not ENABLED:
        return None
    return format_traceparent(*work_ids(traceparent, *key))


def remote_operation_key(token: str, index: int) -> tuple[str, str, str]:
    """The ``key`` of the span of the ``index``-th operation of the entity work item ``token``."""
    return "entity", token, str(index)


def current_traceparent() -> str | None:
    """The caller's active span context as a ``traceparent`` (None when there is none)."""
    if not ENABLED:
        return None
    ctx = _trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format_traceparent(ctx.trace_id, ctx.span_id, int(ctx.trace_flags))


def _parent_context(traceparent: Any) -> Any:
    """An OpenTelemetry context whose current span is the remote ``traceparent`` (else an empty
    context: a root span, never the ambient one of the worker)."""
    parsed = parse_traceparent(traceparent)
    if parsed is None:
        return _otel_context.Context()
    span_ctx = SpanContext(parsed[0], parsed[1], is_remote=True, trace_flags=TraceFlags(parsed[2] & 0xFF))
    return _trace.set_span_in_context(NonRecordingSpan(span_ctx), _otel_context.Context())


@contextlib.contextmanager
def client_span(name: str, attributes: dict[str, Any]) -> Iterator[str | None]:
    """A PRODUCER span around a client call, child of the active span; yields its ``traceparent``."""
    if not ENABLED:
        yield None
        return
    with _tracer().start_as_current_span(name, kind=SpanKind.PRODUCER, attributes=attributes) as span:
        ctx = span.get_span_context()
        yield format_traceparent(ctx.trace_id, ctx.span_id, int(ctx.trace_flags)) if ctx.is_valid else None


def capture() -> Any:
    """The calling thread's OpenTelemetry context (to carry to another thread), or None."""
    return _otel_context.get_current() if ENABLED else None


@contextlib.contextmanager
def attached(captured: Any) -> Iterator[None]:
    """Make a context from :func:`capture` the current one for the duration."""
    if captured is None:
        yield
        return
    token = _otel_context.attach(captured)
    try:
        yield
    finally:
        _otel_context.detach(token)


@contextlib.contextmanager
def remote_parent(traceparent: str | None) -> Iterator[None]:
    """Make a remote ``traceparent`` (an HTTP request's header) the active span context."""
    if not ENABLED or parse_traceparent(traceparent) is None:
        yield
        return
    token = _otel_context.attach(_parent_context(traceparent))
    try:
        yield
    finally:
        _otel_context.detach(token)


def _ns(ms: int) -> int:
    return int(ms) * 1_000_000


def _set_ids(span: Any, trace_id: int, span_id: int) -> None:
    """Give an SDK span the derived ids (it was started with generated ones). Spans of other
    providers keep theirs (their children's links then point nowhere, nothing breaks)."""
    old = span.get_span_context()
    if not hasattr(span, "_context") or not old.is_valid:
        return
    span._context = SpanContext(
        trace_id, span_id, is_remote=False, trace_flags=old.trace_flags, trace_state=old.trace_state
    )


def emit_orchestration_span(
    *,
    name: str,
    instance_id: str,
    execution_id: str,
    incoming: Any,
    version: Any,
    start_ms: int,
    end_ms: int,
    status: str,
    failure: FailureDetails | None,
    timers: list[tuple[int, int, Any]],
) -> None:
    """Emit the span of one finished execution (after the commit that finished it)."""
    if not ENABLED:
        return
    trace_id, span_id, _ = orchestration_ids(instance_id, execution_id, incoming)
    attributes = {
        "durable.instance_id": instance_id,
        "durable.orchestration.name": name,
        "durable.orchestration.version": "" if version is None else str(version),
        "durable.orchestration.status": status,
    }
    span = _tracer().start_span(
        f"orchestration:{name}",
        context=_parent_context(incoming),
        kind=SpanKind.SERVER,
        attributes=attributes,
        start_time=_ns(start_ms),
    )
    _set_ids(span, trace_id, span_id)
    for fired_ms, task_id, fire_at in timers:
        span.add_event(
            "timer",
            {"durable.task_id": task_id, "durable.timer.fire_at_ms": int(fire_at or 0)},
            _ns(fired_ms),
        )
    if failure is not None:
        span.set_status(Status(StatusCode.ERROR, f"{failure.error_type}: {failure.message}"))
    elif status == "COMPLETED":
        span.set_status(Status(StatusCode.OK))
    span.end(end_time=_ns(max(end_ms, start_ms)))


class WorkSpan:
    """A span started when work starts (an activity attempt, an entity operation) and ended --
    emitted -- only once the work's outcome is stored; a span never ended is never exported."""

    def __init__(
        self, name: str, traceparent: Any, attributes: dict[str, Any], start_ms: int | None = None
    ) -> None:
        self.span = _tracer().start_span(
            name,
            context=_parent_context(traceparent),
            kind=SpanKind.SERVER,
            attributes=attributes,
            start_time=None if start_ms is None else _ns(start_ms),
        )
        self._end_ns: int | None = None

    def derive_ids(self, traceparent: Any, *key: str) -> None:
        """Give the span the ids of :func:`work_ids` (the ones handed to the SDK worker)."""
        trace_id, span_id, _ = work_ids(traceparent, *key)
        _set_ids(self.span, trace_id, span_id)

    @property
    def traceparent(self) -> str | None:
        ctx = self.span.get_span_context()
        return format_traceparent(ctx.trace_id, ctx.span_id, int(ctx.trace_flags)) if ctx.is_valid else None

    def done(self, error: BaseException | FailureDetails | None) -> None:
        """Record the outcome and the end time (the span is not emitted yet)."""
        self._end_ns = time.time_ns()
        if isinstance(error, BaseException):
            self.span.record_exception(error)
            self.span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        elif isinstance(error, FailureDetails):
            self.span.set_status(Status(StatusCode.ERROR, f"{error.error_type}: {error.message}"))

    def emit(self) -> None:
        self.span.end(end_time=self._end_ns)

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        """This span as the active one (for an ``async def`` activity)."""
        token = _otel_context.attach(_trace.set_span_in_context(self.span))
        try:
            yield
        finally:
            _otel_context.detach(token)

    def bind(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` run with this span as the active one (on whatever thread runs it)."""
        ctx = _trace.set_span_in_context(self.span)

        def run(*args: Any) -> Any:
            token = _otel_context.attach(ctx)
            try:
                return fn(*args)
            finally:
                _otel_context.detach(token)

        return run


def activity_span(
    name: str, traceparent: Any, attributes: dict[str, Any], start_ms: int | None = None
) -> WorkSpan | None:
    """The span of one activity attempt (None without the extra or without a trace context)."""
    if traceparent is None or not recording():
        return None
    return WorkSpan(f"activity:{name}", traceparent, attributes, start_ms)


class EntitySpans:
    """The entity operation spans of one partition step (an observer of the entity executor):
    started as each operation begins, emitted after the step commits."""

    def __init__(self) -> None:
        self.spans: list[WorkSpan] = []
        self._current: WorkSpan | None = None

    def _start(self, entity_id: str, operation: str, msg: dict[str, Any], start_ms: int | None) -> WorkSpan:
        name = entity_id[1:].partition("@")[0]
        span = WorkSpan(
            f"entity:{name}:{operation}",
            msg.get("traceparent"),
            {
                "durable.entity.id": entity_id,
                "durable.entity.name": name,
                "durable.entity.operation": operation,
            },
            start_ms,
        )
        self.spans.append(span)
        return span

    def begin(self, entity_id: str, operation: str, msg: dict[str, Any]) -> str | None:
        self._current = self._start(entity_id, operation, msg, None)
        return self._current.traceparent

    def ran(
        self,
        entity_id: str,
        operation: str,
        msg: dict[str, Any],
        item: tuple[str, int],
        started_ms: int,
        failure: FailureDetails | None,
    ) -> None:
        """An operation a remote executor ran: its span, from the hand-out of its work item to
        now, with the ids the work item's operation carried to the executor."""
        span = self._start(entity_id, operation, msg, started_ms or None)
        span.derive_ids(msg.get("traceparent"), *remote_operation_key(*item))
        span.done(failure)

    def end(self, failure: FailureDetails | None) -> None:
        if self._current is not None:
            self._current.done(failure)
            self._current = None

    def emit(self) -> None:
        for span in self.spans:
            span.emit()
        self.spans.clear()


def recording() -> bool:
    """Whether spans go anywhere: OpenTelemetry is installed and the application has set a tracer
    provider (until then the API's default provider records nothing, and starting a span per
    entity operation only costs CPU)."""
    if not ENABLED:
        return False
    return not isinstance(
        _trace.get_tracer_provider(), _trace.ProxyTracerProvider | _trace.NoOpTracerProvider
    )


def entity_spans() -> EntitySpans | None:
    """The observer of one step's entity operations (None when no span would be recorded: the
    executor then passes each message's trace context on to the messages it sends as is)."""
    return EntitySpans() if recording() else None


def run_after_commit(callbacks: list[Callable[[], None]]) -> None:
    """Run what a committed step left to do (emit spans and log lines); never raises."""
    for callback in callbacks:
        try:
            callback()
        except Exception:
            log.exception("emitting telemetry after a commit failed")
