"""Activity execution: competing consumers on the hub's task stream."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import inspect
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import anyio
from redis.exceptions import RedisError

from .._core import events as ev
from .._core.convert import input_type, rebuild
from .._core.model import ActivityTimeoutError, FailureDetails, OrchestrationStatus, is_interrupt
from .._core.registry import ActivityContext, capability
from .._core.serialization import decode, encode, is_blob_ref, pack_record, unpack_record
from .._store import lifecycle
from . import tracing
from .attempts import Attempt, AttemptWatch

if TYPE_CHECKING:
    from .._config import WorkerConfig
    from .._core.registry import Registry
    from .._store.store import Store
    from .capabilities import CapabilityView
    from .clock import Clock
    from .telemetry import Telemetry

log = logging.getLogger("durable.activities")

#: statuses of an orchestration whose activities are still wanted
_ALIVE = (OrchestrationStatus.RUNNING.value, OrchestrationStatus.SUSPENDED.value)

_P = ParamSpec("_P")
_T = TypeVar("_T")
_Work = tuple["concurrent.futures.Future[Any] | None", Callable[[], Any]]


class _DaemonThreadPool(concurrent.futures.Executor):
    """The threads that run plain-function activities: up to ``max_workers`` daemon threads.

    ThreadPoolExecutor joins its threads when the interpreter exits, so one activity that hangs
    would keep a stopping worker alive after its drain timeout, until the activity returned. The
    interpreter does not wait for daemon threads: once the drain timeout has passed, the process
    exits, and the task that was still running has been handed back to be delivered again.
    """

    def __init__(self, max_workers: int, thread_name_prefix: str) -> None:
        self._max_workers = max_workers
        self._prefix = thread_name_prefix
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def submit(
        self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> concurrent.futures.Future[_T]:
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()
        self._put((future, functools.partial(fn, *args, **kwargs)))
        return future

    def post(self, call: Callable[[], None]) -> None:
        """Run ``call`` on a pool thread, with no future: ``call`` reports its own outcome (the
        hot path of plain-function activities, which hands results back to the loop in batches).
        Dropped unrun when the pool shuts down with ``cancel_futures``."""
        self._put((None, call))

    def _put(self, item: _Work) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the activity threads were shut down")
            self._work.put(item)
            if not self._idle.acquire(blocking=False) and len(self._threads) < self._max_workers:
                thread = threading.Thread(
                    target=self._serve, name=f"{self._prefix}_{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()

    def _serve(self) -> None:
        while (item := self._work.get()) is not None:
            _run(*item)
            del item
            self._idle.release()
        self._work.put(None)  # the stop marker: pass it on to the next thread

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                if cancel_futures:
                    with contextlib.suppress(queue.Empty):
                        while True:
                            item = self._work.get_nowait()
                            if item is not None and item[0] is not None:
                                item[0].cancel()
                self._work.put(None)
        if wait:
            for thread in self._threads:
                thread.join()


def _run(future: concurrent.futures.Future[Any] | None, call: Callable[[], Any]) -> None:
    if future is None:
        call()
        return
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = call()
    except BaseException as exc:  # SystemExit too: on this thread it can only be the activity's own
        future.set_exception(exc)
    else:
        future.set_result(result)


def _worker_cancelled(exc: BaseException) -> bool:
    """Whether ``exc`` is the worker cancelling the current task (so it must propagate), rather
    than a cancellation exception the activity raised or leaked while nobody cancelled it."""
    if not isinstance(exc, anyio.get_cancelled_exc_class()):
        return False
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


class ActivityRunner:
    """Reads activity work items, runs them with bounded concurrency, returns results in batches."""

    def __init__(
        self,
        *,
        store: Store,
        registry: Registry,
        config: WorkerConfig,
        metrics: Telemetry,
        clock: Clock,
        consumer: str,
        caps: CapabilityView,
    ) -> None:
        self.store = store
        self.registry = registry
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.consumer = consumer
        self.caps = caps
        #: this worker's activities: it also reads their work streams (tasks others left for it)
        self.names = sorted(registry.activities)
        self.concurrency = config.concurrency
        self.in_flight: dict[str, float] = {}
        # A thread cannot be killed: a sync attempt that timed out keeps its thread until it
        # returns, while its slot is given back at once. The headroom lets the slots' new
        # attempts start meanwhile (threads are only created when needed).
        self._pool = _DaemonThreadPool(
            max_workers=2 * self.concurrency, thread_name_prefix="durable-activity"
        )
        self.watch = AttemptWatch(self._time_out)
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by run()
        self._results: list[tuple[str, str, bytes]] = []
        #: the span of each running attempt, emitted once its result is stored (tracing extra)
        self._spans: dict[str, tracing.WorkSpan] = {}
        self._results_ready = anyio.Event()
        self._changed = anyio.Event()  # set (and replaced) whenever a slot frees or reading stops
        self._waiting = 0  # tasks waiting on _changed (no new event per release when none is)
        #: outcomes of plain-function attempts, appended by pool threads and handed to the loop
        #: in batches: one wake-up of the loop for all that finished meanwhile
        self._finished: collections.deque[tuple[Any, ...]] = collections.deque()
        self._drain_scheduled = False
        #: redelivered tasks run one at a time with nothing else in flight, so a task that kills
        #: its process takes no innocent tasks with it (their delivery counts would grow too)
        self._isolating = False
        self._reading = True
        self._read_scope: anyio.CancelScope | None = None
        self._done = anyio.Event()

    @property
    def slots_used(self) -> int:
        return len(self.in_flight)

    def _notify(self) -> None:
        if self._waiting:
            self._waiting = 0
            changed, self._changed = self._changed, anyio.Event()
            changed.set()

    async def _wait_change(self) -> None:
        self._waiting += 1
        await self._changed.wait()

    def stop_reading(self) -> None:
        self._reading = False
        self._notify()
        if self._read_scope is not None:
            self._read_scope.cancel()

    async def run(self, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        self._loop = asyncio.get_running_loop()
        await self.store.ensure_task_group(self.names)
        task_status.started()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._flush_loop)
                tg.start_soon(self.watch.run)
                tg.start_soon(self._maintenance_loop, tg)
                tg.start_soon(self._read_loop, tg)
                await self._done.wait()
                tg.cancel_scope.cancel()
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)

    #: how many unfinished tasks the last :meth:`drain` handed back for redelivery
    handed_back = 0

    async def drain(self, timeout: float) -> None:
        """Stop taking tasks; wait for in-flight ones; hand back what did not finish.

        The hand-back also happens when the caller's own deadline (or a second stop signal)
        cuts the wait short. A task handed back may still be running on its thread: it is left
        behind, its result is not delivered, and the task runs again elsewhere."""
        self.stop_reading()
        try:
            with anyio.move_on_after(timeout):
                while self.in_flight:
                    await self._wait_change()
        finally:
            with anyio.move_on_after(5, shield=True):
                await self._flush()
                leftover = list(self.in_flight)
                self.handed_back = len(leftover)
                if leftover:
                    log.warning(
                        "%d activity task(s) did not finish before the worker stopped: handed "
                        "back for redelivery",
                        len(leftover),
                    )
                    with contextlib.suppress(RedisError, OSError):
                        await self.store.hand_back_tasks(leftover, self.config.activity_visibility_ms)
            self._done.set()

    async def _read_loop(self, tg: anyio.abc.TaskGroup) -> None:
        failures = 0
        while self._reading:
            free = self.concurrency - len(self.in_flight)
            if free <= 0 or self._isolating:
                await self._wait_change()
                continue
            entries: list[Any] = []
            with anyio.CancelScope() as scope:
                self._read_scope = scope
                try:
                    entries = await self.store.read_tasks(
                        self.consumer, min(free, 100), self.config.poll_ms, self.names
                    )
                    failures = 0
                except (RedisError, OSError) as exc:
                    failures += 1
                    log.warning("reading activity tasks failed: %s", exc)
                    await anyio.sleep(min(0.05 * 2**failures, 2.0))
                    if "NOGROUP" in str(exc):
                        await self.store.ensure_task_group(self.names)
            self._read_scope = None
            for eid, fields in entries:
                self.in_flight[eid] = time.monotonic()
                self._dispatch(tg, eid, fields, 1)

    async def _maintenance_loop(self, tg: anyio.abc.TaskGroup) -> None:
        """Keep our in-flight tasks fresh and reclaim tasks of consumers that went quiet."""
        vis = self.config.activity_visibility_ms
        while True:
            await anyio.sleep(max(vis / 3000, 0.05))
            try:
                if self.in_flight:
                    await self.store.touch_tasks(self.consumer, list(self.in_flight))
                await self._cancel_ended(tg)
                if not self._reading or self._isolating:
                    continue
                free = self.concurrency - len(self.in_flight)
                if free <= 0:
                    continue
                # one stale task at a time: see _run_isolated
                claimed = await self._claim_stale(vis)
            except (RedisError, OSError) as exc:
                log.warning("activity maintenance failed: %s", exc)
                continue
            if claimed:
                self._isolating = True
                tg.start_soon(self._run_isolated, tg, claimed[0])

    async def _run_isolated(
        self, tg: anyio.abc.TaskGroup, first: tuple[str, dict[bytes, bytes], int]
    ) -> None:
        """Run tasks reclaimed from consumers that went quiet, one at a time and each with nothing
        else in flight. A task that kills its process then takes no innocent task with it, so
        only its own delivery count grows until it is dead-lettered; the others stay pending on
        the dead consumer until they are reclaimed, one by one, and simply run."""
        item: tuple[str, dict[bytes, bytes], int] | None = first
        vis = self.config.activity_visibility_ms
        try:
            while item is not None and self._reading:
                eid, fields, delivered = item
                if eid not in self.in_flight:
                    self.metrics.redelivery("activity")
                    if delivered > self.config.max_deliveries:
                        await self._dead_letter(eid, fields, delivered)
                    else:
                        self.in_flight[eid] = time.monotonic()  # kept fresh by the maintenance loop
                        while self._reading and not set(self.in_flight) <= {eid}:
                            await self._wait_change()
                        if not self._reading:  # stopping: hand it back at once
                            self.in_flight.pop(eid, None)
                            with anyio.CancelScope(shield=True), contextlib.suppress(RedisError, OSError):
                                await self.store.hand_back_tasks([eid], vis)
                            break
                        self._dispatch(tg, eid, fields, delivered)
                        while eid in self.in_flight:
                            await self._wait_change()
                claimed = await self._claim_stale(vis)
                item = claimed[0] if claimed else None
        except (RedisError, OSError) as exc:
            log.warning("reclaiming activity tasks failed: %s", exc)
        finally:
            self._isolating = False
            self._notify()

    async def _claim_stale(self, vis: int) -> list[tuple[str, dict[bytes, bytes], int]]:
        """One task a quiet consumer left: from the task stream, else from our activities' streams."""
        claimed = await self.store.claim_stale_tasks(self.consumer, vis, 1)
        for name in self.names:
            if claimed:
                break
            claimed = await self.store.claim_stale_tasks(self.consumer, vis, 1, name)
        return claimed

    async def _dead_letter(self, eid: str, fields: dict[bytes, bytes], delivered: int) -> None:
        reason = f"activity task delivered {delivered} times without completing (poison); dead-lettered"
        try:
            msg = unpack_record(fields[b"m"])
            reply = {
                "kind": ev.MSG_TASK_FAILED,
                "target": msg["target"],
                "exec": msg.get("exec"),
                "tid": msg["tid"],
                "failure": FailureDetails(reason, "ActivityDeadLetteredError").to_record(),
            }
            await self.store.dead_letter_task(eid, fields, reason)
            self._results.append((str(msg["target"]), eid, pack_record(reply)))
            self._results_ready.set()
            self.metrics.dead_lettered("activity")
        except Exception as exc:
            log.error("cannot dead-letter task %s: %s", eid, exc)

    def _dispatch(
        self, tg: anyio.abc.TaskGroup, eid: str, fields: dict[bytes, bytes], delivered: int
    ) -> None:
        """Start one work item: plain functions go straight to the thread pool (no task per
        activity), coroutines and the rare cases that need I/O first run as tasks."""
        started = time.monotonic()
        try:
            msg = unpack_record(fields[b"m"])
            target, tid, name = str(msg["target"]), int(msg["tid"]), str(msg["name"])
        except Exception as exc:
            tg.start_soon(self._reject_malformed, eid, fields, exc)
            return
        self.metrics.schedule_to_start("activity", eid, self.clock.now_ms())
        attempt = Attempt(eid, msg)
        self.watch.add(attempt)
        hb = msg.get("hb")
        ctx = ActivityContext(
            orchestration_id=target,
            task_id=tid,
            attempt=int(msg.get("attempt") or 1),
            # the call's first task id: the same key for every attempt and delivery of the call
            idempotency_key=f"{target}:{msg.get('exec')}:{msg.get('call', tid)}",
            name=name,
            delivery=delivered,
            heartbeat_details=hb if isinstance(hb, bytes) else None,
            monitor=attempt,
        )
        fn = self.registry.activities.get(name)
        raw = msg.get("input")
        if fn is None:  # another worker may have it: then the task waits for one (else it fails)
            tg.start_soon(self._leave_or_fail, eid, msg, fields, ctx, started)
            return
        traceparent = msg.get("traceparent")
        if traceparent is not None and tracing.recording():
            span = tracing.activity_span(
                name,
                traceparent,
                {
                    "durable.instance_id": target,
                    "durable.activity.name": name,
                    "durable.task_id": tid,
                    "durable.activity.attempt": ctx.attempt,
                    "durable.activity.delivery": delivered,
                },
            )
            if span is not None:
                self._spans[eid] = span
        if inspect.iscoroutinefunction(fn) or is_blob_ref(raw):
            tg.start_soon(self._execute_async, eid, msg, fn, ctx, started)
            return
        try:
            value = rebuild(decode(raw), input_type(fn), f"input of activity {name!r}")
        except Exception as exc:
            self._complete(eid, msg, ctx, started, None, exc)
            return
        self._pool.post(
            functools.partial(self._run_posted, eid, msg, ctx, started, attempt, self._bound(eid, fn), value)
        )

    def _run_posted(
        self,
        eid: str,
        msg: dict[str, Any],
        ctx: ActivityContext,
        started: float,
        attempt: Attempt,
        fn: Any,
        value: Any,
    ) -> None:
        """On a pool thread: run the attempt, queue its outcome, and wake the loop unless a
        wake-up is already on its way (the loop then takes this outcome with the others)."""
        result: Any = None
        error: BaseException | None = None
        try:
            result = self._run_sync(attempt, fn, ctx, value)
        except BaseException as exc:  # SystemExit too: on this thread it can only be the activity's own
            error = exc
        self._finished.append((eid, msg, ctx, started, result, error))
        if not self._drain_scheduled:
            self._drain_scheduled = True
            with contextlib.suppress(RuntimeError):  # the loop is closed: the worker has stopped
                self._loop.call_soon_threadsafe(self._drain_finished)

    def _drain_finished(self) -> None:
        """On the loop: complete every attempt the pool threads finished since the last drain."""
        self._drain_scheduled = False  # first: an outcome queued from now on schedules a drain
        finished = self._finished
        while finished:
            self._complete(*finished.popleft())

    def _run_sync(self, attempt: Attempt, fn: Any, ctx: ActivityContext, value: Any) -> Any:
        """On a pool thread: the attempt's time limits count from here (not while it queued)."""
        if attempt.abandoned:
            return None  # its orchestration ended while it waited for a thread
        attempt.start()
        if attempt.limited:
            self._loop.call_soon_threadsafe(self.watch.arm)
        return fn(ctx, value)

    def _bound(self, eid: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` run with the attempt's span active (when traced), so the code's spans nest in it."""
        span = self._spans.get(eid)
        return span.bind(fn) if span is not None else fn

    def _time_out(self, attempt: Attempt, reason: str) -> None:
        """An attempt passed its time limit: it fails now, and its slot is given back once the
        failure is delivered; whatever it returns later is discarded."""
        attempt.abandon()
        self.watch.remove(attempt.eid)
        failure = FailureDetails.of(ActivityTimeoutError, f"activity timed out: {reason}")
        reply: dict[str, Any] = {
            "kind": ev.MSG_TASK_FAILED,
            "target": attempt.target,
            "exec": attempt.exec,
            "tid": attempt.tid,
            "failure": failure.to_record(),
        }
        if attempt.details is not None:
            reply["details"] = attempt.details
        name = attempt.name
        log.warning("activity %r of %s timed out: %s", name, attempt.target, reason)
        self.metrics.activity_done(name, "failed", attempt.elapsed())
        span = self._spans.get(attempt.eid)
        if span is not None:
            span.done(failure)
        self._results.append((attempt.target, attempt.eid, pack_record(reply)))
        self._results_ready.set()

    async def _cancel_ended(self, tg: anyio.abc.TaskGroup) -> None:
        """Cancel the running attempts whose orchestration ended (or moved to another execution):
        their results would be dropped anyway. Their tasks are acknowledged without a reply."""
        running = self.watch.running()
        if not running:
            return
        execs = await lifecycle.instance_execs(self.store, sorted({a.target for a in running}))
        for attempt in running:
            status, current = execs.get(attempt.target, (None, None))
            alive = status in _ALIVE and current == attempt.exec
            if alive or attempt.abandoned or attempt.eid not in self.in_flight:
                continue
            log.info("activity task %s: its orchestration %s ended; cancelled", attempt.eid, attempt.target)
            attempt.abandon()
            self.watch.remove(attempt.eid)
            tg.start_soon(self._drop, attempt.eid)

    async def _drop(self, eid: str) -> None:
        try:
            await self.store.ack_tasks([eid])
        except (RedisError, OSError) as exc:  # delivered again later, and cancelled again
            log.warning("cannot acknowledge cancelled task %s: %s", eid, exc)
        finally:
            self._release(eid)

    async def _execute_async(
        self, eid: str, msg: dict[str, Any], fn: Any, ctx: ActivityContext, started: float
    ) -> None:
        result: Any = None
        error: BaseException | None = None
        raw = msg.get("input")
        failures = 0
        while is_blob_ref(raw):  # a large input lives beside the history: fetch it first
            try:
                raw = await self.store.resolve(raw)
            except (RedisError, OSError) as exc:
                # Redis trouble is not the activity's failure: retry, else leave the task pending
                # (unacknowledged) so it is delivered again after the visibility timeout
                failures += 1
                if not self._reading or failures > 10:
                    log.warning("cannot fetch the input of task %s (%s); it will be redelivered", eid, exc)
                    self._release(eid)
                    return
                await anyio.sleep(min(0.05 * 2**failures, 2.0))
            except LookupError as exc:
                raw, error = None, exc
        try:
            if error is not None:
                raise error
            if fn is None:
                raise LookupError(f"no activity named {ctx.name!r} is registered with this worker")
            value = rebuild(decode(raw), input_type(fn), f"input of activity {ctx.name!r}")
            attempt = self.watch.attempts.get(eid)
            with anyio.CancelScope() as scope:
                if attempt is not None:
                    attempt.scope = scope
                if inspect.iscoroutinefunction(fn):
                    if attempt is not None:
                        attempt.start()
                        if attempt.limited:
                            self.watch.arm()
                    span = self._spans.get(eid)
                    with span.activate() if span is not None else contextlib.nullcontext():
                        result = await fn(ctx, value)
                else:
                    result = await self._loop.run_in_executor(
                        self._pool,
                        self._run_sync,
                        attempt or Attempt(eid, {}),
                        self._bound(eid, fn),
                        ctx,
                        value,
                    )
            if scope.cancelled_caught:
                return  # timed out, or its orchestration ended: already answered for
        except BaseException as exc:  # SystemExit too: user code fails its task, not the worker
            if _worker_cancelled(exc) or is_interrupt(exc):
                raise
            error = exc
        self._complete(eid, msg, ctx, started, result, error)

    def _complete(
        self,
        eid: str,
        msg: dict[str, Any],
        ctx: ActivityContext,
        started: float,
        result: Any,
        error: BaseException | None,
    ) -> None:
        if ctx.is_cancelled:
            return  # a late result of an attempt that timed out or was cancelled: discarded
        attempt = self.watch.remove(eid)
        reply: dict[str, Any] = {"target": ctx.orchestration_id, "exec": msg.get("exec"), "tid": ctx.task_id}
        if error is None:
            try:
                reply["result"] = encode(result, what=f"result of activity {ctx.name!r}")
                reply["kind"] = ev.MSG_TASK_COMPLETED
            except Exception as exc:
                error = exc
        if error is not None:
            reply["kind"] = ev.MSG_TASK_FAILED
            reply["failure"] = FailureDetails.from_exception(error).to_record()
            if attempt is not None and attempt.details is not None:
                reply["details"] = attempt.details  # where the next attempt may resume
        status = "completed" if error is None else "failed"
        span = self._spans.get(eid)
        if span is not None:
            span.done(error)
        self.metrics.activity_done(ctx.name, status, time.monotonic() - started)
        self._results.append((ctx.orchestration_id, eid, pack_record(reply)))
        self._results_ready.set()

    async def _leave_or_fail(
        self,
        eid: str,
        msg: dict[str, Any],
        fields: dict[bytes, bytes],
        ctx: ActivityContext,
        started: float,
    ) -> None:
        """A task for an activity this worker lacks: if a worker had it within the grace period,
        move it to that activity's work stream, which only workers that registered it read (the
        sweeper fails it if none is left for too long); else fail it."""
        name = ctx.name
        try:
            if not await self.caps.confirm_recent(capability("a", name)):
                await self._execute_async(eid, msg, None, ctx, started)  # fails: nobody has it
                return
            await self.store.park_task(eid, fields, name, self.clock.now_ms())
        except (RedisError, OSError) as exc:  # it stays pending here, and is reclaimed later
            log.warning("cannot leave task %s for a worker that has activity %r: %s", eid, name, exc)
            self._release(eid)
            return
        self._release(eid)

    async def _reject_malformed(self, eid: str, fields: dict[bytes, bytes], exc: BaseException) -> None:
        log.error("malformed activity task %s dropped to the dead-letter stream: %s", eid, exc)
        try:
            await self.store.dead_letter_task(eid, fields, f"malformed task: {exc}")
            await self.store.ack_tasks([eid])
        finally:
            self._release(eid)

    def _release(self, eid: str) -> None:
        self._spans.pop(eid, None)  # no result stored: its span is never emitted
        self.in_flight.pop(eid, None)
        self.watch.remove(eid)
        self._notify()

    async def _flush_loop(self) -> None:
        while True:
            await self._results_ready.wait()
            self._results_ready = anyio.Event()
            await self._flush()

    async def _flush(self) -> None:
        failures = 0
        while self._results:
            batch, self._results = self._results, []
            try:
                await self.store.finish_tasks(batch)
            except (RedisError, OSError) as exc:
                self._results = batch + self._results
                failures += 1
                log.warning("delivering activity results failed: %s", exc)
                await anyio.sleep(min(0.05 * 2**failures, 2.0))
                continue
            for _, eid, _ in batch:
                span = self._spans.pop(eid, None)
                if span is not None:
                    span.emit()
                self._release(eid)
