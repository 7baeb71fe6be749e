"""User code that raises a BaseException (SystemExit, KeyboardInterrupt, GeneratorExit) fails its
instance, operation or task like any other exception; it never escapes into the worker. The one
exception is a KeyboardInterrupt that Ctrl-C may have delivered (see ``is_interrupt``)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest

from durable import EntityContext, EntityId, TaskFailedError
from durable._core import events as ev
from durable._core.entities import EntityRecord
from durable._core.entity_batch import EntityBatch
from durable._core.executor import OrchestrationExecutor, StepResult
from durable._core.model import OrchestrationStatus, is_interrupt
from durable._core.registry import name_of
from durable._core.serialization import decode, encode
from durable._runtime.activities import _DaemonThreadPool

NOW = 1_700_000_000_000


def _executor(fn: Any) -> OrchestrationExecutor:
    return OrchestrationExecutor("orch-1", {"fn": fn}.get, name_of)


def _start() -> list[dict[str, Any]]:
    return [
        {"k": ev.ORCHESTRATOR_STARTED, "ts": NOW},
        {"k": ev.EXECUTION_STARTED, "name": "fn", "input": encode(2), "exec": "e1", "parent": None},
    ]


def _completed(tid: int, value: Any) -> list[dict[str, Any]]:
    return [
        {"k": ev.ORCHESTRATOR_STARTED, "ts": NOW + 1},
        {"k": ev.TASK_COMPLETED, "tid": tid, "result": encode(value)},
    ]


def _assert_failed(result: StepResult, error_type: str, message: str) -> None:
    assert result.status == OrchestrationStatus.FAILED
    assert result.failure is not None
    assert (result.failure.error_type, result.failure.message) == (error_type, message)
    assert result.actions == []
    last = result.new_events[-1]
    assert last["k"] == ev.EXECUTION_COMPLETED and last["status"] == "FAILED"


# -- orchestrators ---------------------------------------------------------------------------------
def exits_at_once(ctx: Any, code: int) -> Any:
    raise SystemExit(code)  # as argparse does on bad input


def exits_before_yielding(ctx: Any, code: int) -> Any:
    if code:
        raise SystemExit(code)
    yield ctx.call_activity("never", input=None)


async def exits_async(ctx: Any, code: int) -> Any:
    raise SystemExit(code)


@pytest.mark.parametrize("fn", [exits_at_once, exits_before_yielding, exits_async])
def test_system_exit_on_start_fails_the_instance(fn: Callable[..., Any]) -> None:
    _assert_failed(_executor(fn).execute(_start()), "SystemExit", "2")


def exits_after_an_activity(ctx: Any, code: int) -> Any:
    value = yield ctx.call_activity("step", input=code)
    raise SystemExit(value)


def test_system_exit_after_a_completion_fails_the_instance_live_and_after_replay() -> None:
    live = _executor(exits_after_an_activity)
    first = live.execute(_start())
    assert first.status == OrchestrationStatus.RUNNING and [a["k"] for a in first.actions] == [
        ev.TASK_SCHEDULED
    ]
    history = list(live.history)
    _assert_failed(live.execute(_completed(0, 3)), "SystemExit", "3")
    # after a cache miss the executor is rebuilt from history and fails the same way
    rebuilt = _executor(exits_after_an_activity)
    rebuilt.replay(history)
    _assert_failed(rebuilt.execute(_completed(0, 3)), "SystemExit", "3")


def catches_system_exit(ctx: Any, code: int) -> Any:
    try:
        raise SystemExit(code)
    except SystemExit as exc:
        value = yield ctx.call_activity("step", input=exc.code)
    return value


def test_system_exit_the_code_catches_is_not_a_failure() -> None:
    executor = _executor(catches_system_exit)
    assert executor.execute(_start()).status == OrchestrationStatus.RUNNING
    result = executor.execute(_completed(0, "done"))
    assert result.status == OrchestrationStatus.COMPLETED and decode(result.output) == "done"


def raises_in_finally(ctx: Any, _: Any) -> Any:
    try:
        yield ctx.call_activity("step", input=None)
    finally:
        raise SystemExit(5)  # runs when a termination closes the generator


def test_system_exit_while_the_code_is_closed_is_ignored() -> None:
    executor = _executor(raises_in_finally)
    executor.execute(_start())
    result = executor.execute(
        [
            {"k": ev.ORCHESTRATOR_STARTED, "ts": NOW + 1},
            {"k": ev.EXECUTION_TERMINATED, "output": encode("bye")},
        ]
    )
    assert result.status == OrchestrationStatus.TERMINATED and decode(result.output) == "bye"


def interrupts(ctx: Any, _: Any) -> Any:
    yield ctx.call_activity("step", input=None)
    raise KeyboardInterrupt


def _run_interrupting() -> StepResult:
    executor = _executor(interrupts)
    executor.execute(_start())
    return executor.execute(_completed(0, None))


def _contained(run: Callable[[], Any]) -> Any:
    """``run()``, failing the test (not ending the session) if a KeyboardInterrupt escapes it."""
    try:
        return run()
    except KeyboardInterrupt:
        pytest.fail("the KeyboardInterrupt the code raised escaped into the worker")


@pytest.fixture
def sigint_default() -> Iterator[None]:
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def test_keyboard_interrupt_on_another_thread_is_the_codes_failure(sigint_default: None) -> None:
    results: list[StepResult] = []
    thread = threading.Thread(target=lambda: results.append(_run_interrupting()))
    thread.start()
    thread.join()
    [result] = results  # with the old code the thread died and appended nothing
    _assert_failed(result, "KeyboardInterrupt", "KeyboardInterrupt")


def test_keyboard_interrupt_under_a_signal_receiver_is_the_codes_failure(sigint_default: None) -> None:
    """``durable worker`` routes SIGINT to an anyio signal receiver: Ctrl-C cannot raise there."""

    async def main() -> StepResult:
        with anyio.open_signal_receiver(signal.SIGINT):
            return _contained(_run_interrupting)  # type: ignore[no-any-return]

    _assert_failed(anyio.run(main), "KeyboardInterrupt", "KeyboardInterrupt")


def test_keyboard_interrupt_with_sigint_ignored_is_the_codes_failure(sigint_default: None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _assert_failed(_contained(_run_interrupting), "KeyboardInterrupt", "KeyboardInterrupt")


def test_keyboard_interrupt_that_ctrl_c_may_have_delivered_stops_the_process(sigint_default: None) -> None:
    """On the main thread with Python's SIGINT handler it cannot be told from Ctrl-C: it goes on."""
    with pytest.raises(KeyboardInterrupt):
        _run_interrupting()
    assert is_interrupt(KeyboardInterrupt())
    assert not is_interrupt(SystemExit(2)) and not is_interrupt(GeneratorExit())


def raises_generator_exit(ctx: Any, _: Any) -> Any:
    yield ctx.call_activity("step", input=None)
    raise GeneratorExit("odd, but user code")


def test_generator_exit_raised_by_the_code_fails_the_instance() -> None:
    executor = _executor(raises_generator_exit)
    executor.execute(_start())
    _assert_failed(executor.execute(_completed(0, None)), "GeneratorExit", "odd, but user code")


def test_a_failed_activity_carrying_system_exit_is_a_task_failure() -> None:
    """What the orchestration sees when an activity raised SystemExit: a TaskFailedError."""

    def orchestrator(ctx: Any, _: Any) -> Any:
        try:
            yield ctx.call_activity("exits", input=None)
        except TaskFailedError as exc:
            return [exc.details.error_type, exc.details.message]
        return None

    executor = _executor(orchestrator)
    executor.execute(_start())
    failure = {"message": "2", "error_type": "SystemExit", "stack_trace": None}
    result = executor.execute(
        [{"k": ev.ORCHESTRATOR_STARTED, "ts": NOW + 1}, {"k": ev.TASK_FAILED, "tid": 0, "failure": failure}]
    )
    assert result.status == OrchestrationStatus.COMPLETED and decode(result.output) == ["SystemExit", "2"]


# -- entities --------------------------------------------------------------------------------------
def exiting_counter(ctx: EntityContext, value: Any) -> Any:
    if ctx.operation == "add":
        ctx.set_state(ctx.get_state(0) + value)
    elif ctx.operation == "exit":
        ctx.set_state(-1)
        ctx.signal_entity("@counter@other", "add", input=1)
        raise SystemExit(value)
    elif ctx.operation == "interrupt":
        raise KeyboardInterrupt
    return ctx.get_state(0)


def _msg(kind: str, op: str, value: Any, rid: str = "") -> dict[str, Any]:
    msg = {"kind": kind, "target": "@counter@k", "op": op, "input": encode(value)}
    if kind == ev.MSG_CALL:
        msg.update(rid=rid, orch="o1")
    return msg


def test_entity_operation_raising_system_exit_fails_that_operation_only() -> None:
    rec = EntityRecord()
    msgs = [
        _msg(ev.MSG_SIGNAL, "add", 2),
        _msg(ev.MSG_CALL, "exit", 2, rid="c1"),
        _msg(ev.MSG_SIGNAL, "exit", 4),
        _msg(ev.MSG_CALL, "get", None, rid="c2"),
    ]
    result = EntityBatch(EntityId("counter", "k"), exiting_counter, rec, NOW).run(msgs)
    assert decode(rec.state) == 2  # the failed operations left no trace
    assert result.completed == 2 and result.failed == 2
    failed, answered = result.out  # the failed operation's signal was discarded
    assert failed["rid"] == "c1" and failed["failure"]["error_type"] == "SystemExit"
    assert failed["failure"]["message"] == "2"
    assert answered["rid"] == "c2" and decode(answered["result"]) == 2
    [(op, details)] = result.signal_failures
    assert (op, details.error_type, details.message) == ("exit", "SystemExit", "4")


def test_entity_keyboard_interrupt_follows_the_same_rule(sigint_default: None) -> None:
    def batch() -> EntityBatch:
        return EntityBatch(EntityId("counter", "k"), exiting_counter, EntityRecord(), NOW)

    with pytest.raises(KeyboardInterrupt):
        batch().run([_msg(ev.MSG_CALL, "interrupt", None, rid="i")])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    result = _contained(lambda: batch().run([_msg(ev.MSG_CALL, "interrupt", None, rid="i")]))
    assert result.out[0]["failure"]["error_type"] == "KeyboardInterrupt"


# -- the threads of plain-function activities ------------------------------------------------------
def test_activity_threads_pass_base_exceptions_to_the_future_and_are_daemons() -> None:
    pool = _DaemonThreadPool(max_workers=2, thread_name_prefix="test-activity")
    threads: list[threading.Thread] = []

    def exits(code: int) -> None:
        threads.append(threading.current_thread())
        raise SystemExit(code)

    def interrupts() -> None:
        raise KeyboardInterrupt

    try:
        exited = pool.submit(exits, 2)
        interrupted = pool.submit(interrupts)
        assert isinstance(exited.exception(timeout=30), SystemExit)
        assert isinstance(interrupted.exception(timeout=30), KeyboardInterrupt)
        assert pool.submit(lambda: 42).result(timeout=30) == 42  # the threads survived
        assert threads[0].daemon  # the interpreter does not wait for it at exit
    finally:
        pool.shutdown(wait=True)
    with pytest.raises(RuntimeError):
        pool.submit(lambda: None)


def test_activity_threads_shutdown_cancels_what_has_not_started() -> None:
    pool = _DaemonThreadPool(max_workers=1, thread_name_prefix="test-activity")
    started, release = threading.Event(), threading.Event()

    def blocks() -> bool:
        started.set()
        return release.wait(30)

    running = pool.submit(blocks)
    queued = pool.submit(lambda: "never")
    assert started.wait(30)
    pool.shutdown(wait=False, cancel_futures=True)
    assert queued.cancelled()
    release.set()
    assert running.result(timeout=30) is True
