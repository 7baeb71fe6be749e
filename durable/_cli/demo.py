"""``durable demo``: run the sample patterns with an in-process worker, live progress, a summary.

The samples live in the repository's ``orchestrations/`` folder (not in the installed package);
they are found from the current directory or, for an editable install, next to this package.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import anyio

from .._client import AsyncClient
from .._config import ENV_REDIS_URL, WorkerConfig, resolve_url
from .._core.model import OrchestrationState, OrchestrationStatus
from .._worker import Worker
from .common import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, leaf_exceptions, redact_url, signal_receiver

_SAMPLES_PACKAGE = "orchestrations"
_SAMPLES_MODULE = "orchestrations.patterns"
_REFRESH_S = 0.1
_APPROVER_DELAY_S = 0.5

#: What a row of the live view and of the summary shows while an instance has no state yet.
_SCHEDULED = "SCHEDULED"


class DemoError(Exception):
    """The demo cannot run (samples not found, Redis unreachable, ...)."""


@dataclass
class DemoOptions:
    """Options of :func:`run_demo` (the ``durable demo`` command line)."""

    redis_url: str | None = None
    hub: str | None = "demo"
    fan_out: int = 200
    quiet: bool = False
    keep: bool = False
    timeout: float = 120.0
    out: TextIO | None = None


# ------------------------------------------------------------------------------------------------
# finding the samples


def _sample_roots() -> list[Path]:
    """Folders that may hold the ``orchestrations`` package: the cwd, then the source checkout."""
    roots = [Path.cwd(), Path(__file__).resolve().parent.parent]
    return [r for r in roots if (r / _SAMPLES_PACKAGE / "patterns.py").is_file()]


def load_patterns() -> Any:
    """Import ``orchestrations.patterns``, putting the folder that holds it on ``sys.path``."""
    for root in reversed(_sample_roots()):
        path = str(root)
        if path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)
    try:
        return importlib.import_module(_SAMPLES_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name not in (_SAMPLES_PACKAGE, _SAMPLES_MODULE):
            raise
        raise DemoError(
            "cannot find the sample orchestrations (the 'orchestrations/' folder of the durable "
            "repository). Run 'durable demo' from the root of the repository."
        ) from None


# ------------------------------------------------------------------------------------------------
# the cases


Check = Callable[[OrchestrationState], str | None]
Describe = Callable[[OrchestrationState], str]


@dataclass
class Case:
    """One orchestration instance the demo runs and checks."""

    key: str
    title: str
    orchestrator: Any
    input: Any
    check: Check
    describe: Describe
    expected_status: OrchestrationStatus = OrchestrationStatus.COMPLETED
    approve_event: str | None = None
    hint: str = ""
    children: list[str] = field(default_factory=list)
    instance_id: str = ""
    scheduled_at: float = 0.0
    finished_at: float | None = None
    state: OrchestrationState | None = None
    note: str | None = None
    problem: str | None = None

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    @property
    def status_text(self) -> str:
        return self.state.runtime_status.value if self.state is not None else _SCHEDULED

    def elapsed(self, now: float) -> float:
        if not self.instance_id:
            return 0.0
        end = self.finished_at if self.finished_at is not None else now
        return max(end - self.scheduled_at, 0.0)

    def verdict(self) -> str | None:
        """None when the instance ended as expected, else what is wrong."""
        if self.problem is not None:
            return self.problem
        st = self.state
        if st is None or not self.finished:
            return "did not finish"
        if st.runtime_status != self.expected_status:
            reason = f" ({st.failure_details.message})" if st.failure_details else ""
            return f"expected {self.expected_status.value}, got {st.runtime_status.value}{reason}"
        try:
            return self.check(st)
        except Exception as exc:  # a malformed output
            return f"unexpected output: {type(exc).__name__}: {exc}"


def _expect(condition: bool, message: str) -> str | None:
    return None if condition else message


def build_cases(patterns: Any, fan_out: int) -> list[Case]:
    """The demo's instances: every pattern once (human interaction twice, retries twice)."""
    order = patterns.sample_order(1)
    total_squares = sum(i * i for i in range(1, fan_out + 1))
    sub_count = 5
    monitor_input = {"job": "nightly-export", "interval_s": 0.4, "max_checks": 10, "ready_after": 4}
    retry_input = {"fail_times": 2, "max_attempts": 4, "first_retry_s": 0.2}
    give_up_input = {"fail_times": 5, "max_attempts": 2, "first_retry_s": 0.2}

    def chaining_text(st: OrchestrationState) -> str:
        out = st.output
        return f"order {out['order']} {out['status']}, total {out['total']}, {out['tracking']}"

    def fan_text(st: OrchestrationState) -> str:
        return f"{st.output['items']} results aggregated, total {st.output['total']}"

    def monitor_text(st: OrchestrationState) -> str:
        out = st.output
        return f"job {out['job']} {out['status']} after {out['checks']} checks (continue-as-new)"

    def sub_text(st: OrchestrationState) -> str:
        return f"{st.output['orders']} child orchestrations, revenue {st.output['revenue']}"

    def retry_text(st: OrchestrationState) -> str:
        return str(st.output["result"])

    def failure_text(st: OrchestrationState) -> str:
        details = st.failure_details
        return f"gave up: {details.message}" if details else "failed"

    return [
        Case(
            "chaining",
            "function chaining",
            patterns.function_chaining,
            order,
            check=lambda st: _expect(st.output["status"] == "shipped", "order not shipped"),
            describe=chaining_text,
        ),
        Case(
            "fan-out",
            f"fan-out/fan-in ({fan_out})",
            patterns.fan_out_fan_in,
            {"count": fan_out},
            check=lambda st: _expect(
                st.output == {"items": fan_out, "total": total_squares}, f"wrong aggregate {st.output!r}"
            ),
            describe=fan_text,
        ),
        Case(
            "approved",
            "human interaction: approved",
            patterns.human_interaction,
            {"subject": "new laptop", "approver": "alice", "timeout_s": 30},
            check=lambda st: _expect(st.output == "approved", f"got {st.output!r}"),
            describe=lambda st: str(st.output),
            approve_event=patterns.APPROVAL_EVENT,
        ),
        Case(
            "timeout",
            "human interaction: timeout",
            patterns.human_interaction,
            {"subject": "conference trip", "approver": "bob", "timeout_s": 2},
            check=lambda st: _expect(st.output == "timed out", f"got {st.output!r}"),
            describe=lambda st: f"{st.output} (no approval within 2s)",
        ),
        Case(
            "monitor",
            "monitor",
            patterns.monitor,
            monitor_input,
            check=lambda st: _expect(
                st.output == {"job": "nightly-export", "status": "done", "checks": 4}, f"got {st.output!r}"
            ),
            describe=monitor_text,
        ),
        Case(
            "sub",
            f"sub-orchestrations ({sub_count})",
            patterns.sub_orchestrations,
            {"count": sub_count},
            check=lambda st: _expect(
                st.output["orders"] == sub_count and len(st.output["tracking"]) == sub_count,
                f"got {st.output!r}",
            ),
            describe=sub_text,
        ),
        Case(
            "retry",
            "retry: recovers",
            patterns.retry_with_backoff,
            retry_input,
            check=lambda st: _expect(st.output["attempts"] == 3, f"got {st.output!r}"),
            describe=retry_text,
            hint="calling a flaky service: fails twice, up to 4 attempts with backoff",
        ),
        Case(
            "give-up",
            "retry: gives up",
            patterns.retry_with_backoff,
            give_up_input,
            check=lambda st: _expect(
                st.failure_details is not None and "attempt 2" in st.failure_details.message,
                "missing failure details",
            ),
            describe=failure_text,
            hint="calling a flaky service: fails 5 times, only 2 attempts allowed",
            expected_status=OrchestrationStatus.FAILED,
        ),
    ]


# ------------------------------------------------------------------------------------------------
# metrics (the in-process worker counts its activities and orchestrations)


def _counter_total(counter_name: str, **labels: str) -> float | None:
    try:
        from .._runtime import metrics as _metrics

        counter = getattr(_metrics, counter_name)
        total = 0.0
        for metric in counter.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total") and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    total += sample.value
        return total
    except Exception:
        return None


@dataclass
class Counters:
    """Activities and orchestrations finished by this process since :meth:`snapshot`."""

    activities: float | None
    orchestrations: float | None

    @classmethod
    def snapshot(cls) -> Counters:
        return cls(_counter_total("ACTIVITY_EXECUTIONS"), _counter_total("ORCHESTRATIONS_FINISHED"))

    def since(self, earlier: Counters) -> Counters:
        def delta(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else a - b

        return Counters(
            delta(self.activities, earlier.activities), delta(self.orchestrations, earlier.orchestrations)
        )


# ------------------------------------------------------------------------------------------------
# output


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 3, 0)] + "..."


def _compact(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and {"check", "status"} <= value.keys():
        return f"check {value['check']}: {value['status']}"
    return json.dumps(value, separators=(", ", ": "), default=str)


class Display:
    """Live progress: redrawn in place on a terminal, one line per change otherwise."""

    def __init__(self, out: TextIO, quiet: bool) -> None:
        self.out = out
        self.quiet = quiet
        term = os.environ.get("TERM", "")
        try:
            tty = out.isatty()
        except (AttributeError, ValueError):
            tty = False
        self.tty = tty and term != "dumb" and not quiet
        self._drawn = 0
        self._last: dict[str, tuple[str, str]] = {}
        self._t0 = time.monotonic()

    def print(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def info(self, text: str = "") -> None:
        """A progress message (not shown with --quiet)."""
        if not self.quiet:
            self.print(text)

    def begin(self) -> None:
        self._t0 = time.monotonic()
        if self.tty:
            self.print(f"  {'PATTERN':<30} {'STATUS':<10} {'TIME':>6}  DETAIL")

    def _detail(self, case: Case, progress: str | None) -> str:
        if case.finished and case.state is not None:
            try:
                return case.describe(case.state) if case.verdict() is None else str(case.verdict())
            except Exception:
                return _compact(case.state.output)
        custom = _compact(case.state.custom_status) if case.state is not None else ""
        parts = [progress or custom or case.hint]
        if case.note:
            parts.append(case.note)
        return "; ".join(p for p in parts if p)

    def update(self, cases: list[Case], progress: dict[str, str]) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if self.tty:
            width = shutil.get_terminal_size((100, 24)).columns - 1
            lines = []
            for case in cases:
                detail = self._detail(case, progress.get(case.key))
                line = f"  {case.title:<30} {case.status_text:<10} {case.elapsed(now):5.1f}s  {detail}"
                lines.append("\x1b[2K" + _short(line, width))
            up = f"\x1b[{self._drawn}A\r" if self._drawn else ""
            self.out.write(up + "\n".join(lines) + "\n")
            self.out.flush()
            self._drawn = len(lines)
            return
        for case in cases:
            # without a terminal: one line whenever status or custom status changes
            shown = (case.status_text, self._detail(case, None))
            if self._last.get(case.key) == shown:
                continue
            self._last[case.key] = shown
            status, detail = shown
            suffix = f" - {detail}" if detail else ""
            self.print(f"  [{now - self._t0:5.1f}s] {case.title}: {status}{suffix}")

    def summary(
        self,
        cases: list[Case],
        ended: float,
        counters: Counters,
        wall: float,
        fan_out: int,
        hub: str,
        url: str,
        interrupted: bool = False,
    ) -> None:
        self.print()
        self.print(f"Summary (hub {hub!r} on {url})")
        header = f"  {'PATTERN':<30} {'STATUS':<10} {'RESULT':<10} {'TIME':>7}  OUTPUT"
        self.print(header)
        self.print("  " + "-" * (len(header) - 2))
        for case in cases:
            problem = case.verdict()
            result = "ok" if problem is None else "UNEXPECTED"
            if problem is None and case.state is not None:
                try:
                    output = case.describe(case.state)
                except Exception:
                    output = _compact(case.state.output)
            else:
                output = problem or ""
            took = case.elapsed(ended)
            line = f"  {case.title:<30} {case.status_text:<10} {result:<10} {took:6.2f}s  {output}"
            self.print(line)  # static text: long lines may wrap
        self.print()
        acts, orchs = counters.activities, counters.orchestrations
        wall = max(wall, 1e-6)
        if acts is not None and orchs is not None:
            self.print(
                f"Throughput: {int(acts)} activities and {int(orchs)} orchestrations in {wall:.2f}s "
                f"= {acts / wall:.1f} activities/s, {orchs / wall:.1f} orchestrations/s"
            )
            self.print("  (over the whole run, the patterns' deliberate timers and timeouts included)")
        else:
            self.print(f"Throughput: (metrics unavailable); all patterns ran in {wall:.2f}s")
        fan = next((c for c in cases if c.key == "fan-out"), None)
        if fan is not None and fan.finished and fan.verdict() is None:
            took = max(fan.elapsed(ended), 1e-6)
            self.print(
                f"Fan-out/fan-in: {fan_out} parallel activities in {took:.2f}s "
                f"= {fan_out / took:.1f} activities/s"
            )
        bad = [c for c in cases if c.verdict() is not None]
        if interrupted:
            self.print(f"Interrupted: {len(cases) - len(bad)} of {len(cases)} patterns had finished.")
        elif bad:
            self.print(f"{len(bad)} of {len(cases)} patterns did not behave as expected.")
        else:
            self.print(f"All {len(cases)} patterns behaved as expected.")


# ------------------------------------------------------------------------------------------------
# running


def run_demo(options: DemoOptions) -> int:
    """Run the demo; returns the exit code (0: every pattern behaved as expected)."""
    out = options.out or sys.stdout
    display = Display(out, options.quiet)
    try:
        patterns = load_patterns()
    except DemoError as exc:
        print(f"durable demo: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    hub = options.hub or "demo"
    url = options.redis_url or os.environ.get(ENV_REDIS_URL, "").strip()
    if url:
        where = "the given Redis"
    else:
        display.info("Starting the embedded Redis (data in ./.durable/redis) ...")
        where = "the embedded Redis"
    try:
        url = resolve_url(url or None)
    except Exception as exc:
        print(f"durable demo: cannot start the embedded Redis: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    shown_url = redact_url(url)
    display.info(f"durable demo: hub {hub!r} on {where} at {shown_url}")
    try:
        return anyio.run(_run, patterns, url, hub, options, display, shown_url)
    except Exception as exc:
        message = "; ".join(f"{type(e).__name__}: {e}" for e in leaf_exceptions(exc))
        print(f"durable demo: failed: {message}", file=sys.stderr)
        return EXIT_FAILURE


async def _run(
    patterns: Any, url: str, hub: str, options: DemoOptions, display: Display, shown_url: str
) -> int:
    config = WorkerConfig(balance_interval_ms=200, poll_ms=250, drain_timeout=10.0)
    worker: Worker = patterns.register(Worker(url, hub, config=config))
    cases = build_cases(patterns, options.fan_out)
    run_id = uuid.uuid4().hex[:6]
    interrupted = False
    before = Counters.snapshot()
    async with worker, AsyncClient(url, hub) as client:
        display.info(
            f"Worker {worker.worker_id} started in this process ({worker.config.concurrency} activity slots)"
        )
        display.info(f"Starting {len(cases)} orchestrations (run {run_id}) ...")
        display.info()
        display.begin()
        started = time.monotonic()
        with signal_receiver() as signals:
            async with anyio.create_task_group() as tg:

                async def watch_signals() -> None:
                    nonlocal interrupted
                    async for _ in signals:
                        interrupted = True
                        tg.cancel_scope.cancel()

                tg.start_soon(watch_signals)
                with anyio.move_on_after(options.timeout):
                    await _schedule(client, patterns, cases, run_id)
                    async with anyio.create_task_group() as inner:
                        for case in cases:
                            inner.start_soon(_follow, client, case, options.timeout)
                            if case.approve_event:
                                inner.start_soon(_approve, client, case, case.approve_event)
                        inner.start_soon(_refresh, client, cases, display, options.fan_out)
                tg.cancel_scope.cancel()
        ended = max([c.finished_at or time.monotonic() for c in cases if c.instance_id] or [started])
        wall = ended - started
        display.update(cases, {})
        after = Counters.snapshot()
        for case in cases:
            if not case.finished and case.problem is None:
                case.problem = "interrupted" if interrupted else f"did not finish within {options.timeout:g}s"
        with anyio.CancelScope(shield=True):
            await _clean_up(client, cases, keep=options.keep)
    display.summary(cases, ended, after.since(before), wall, options.fan_out, hub, shown_url, interrupted)
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if all(c.verdict() is None for c in cases) else EXIT_FAILURE


async def _schedule(client: AsyncClient, patterns: Any, cases: list[Case], run_id: str) -> None:
    """Start every case's orchestration, with instance ids unique to this run."""
    for case in cases:
        case.scheduled_at = time.monotonic()
        case.instance_id = await client.schedule_new_orchestration(
            case.orchestrator, input=case.input, instance_id=f"demo-{run_id}-{case.key}"
        )
        if case.key == "sub":
            case.children = [
                patterns.child_instance_id(case.instance_id, patterns.sample_order(i))
                for i in range(1, int(case.input["count"]) + 1)
            ]


async def _follow(client: AsyncClient, case: Case, timeout: float) -> None:
    """Wait for the instance to finish (woken by its status notifications)."""
    state = await client.wait_for_orchestration_completion(case.instance_id, timeout=timeout + 5)
    case.finished_at = time.monotonic()
    case.state = state


async def _approve(client: AsyncClient, case: Case, event: str) -> None:
    """Play the approver: answer once the orchestration is waiting for approval."""
    while True:
        state = await client.get_orchestration_state(case.instance_id)
        if state is not None and state.custom_status == "waiting for approval":
            break
        if state is not None and state.runtime_status.is_terminal:
            return
        await anyio.sleep(0.05)
    case.note = "approver is reading the request"
    await anyio.sleep(_APPROVER_DELAY_S)
    await client.raise_orchestration_event(case.instance_id, event, data={"approved": True, "by": "demo"})
    case.note = "'approval' event raised"


async def _refresh(client: AsyncClient, cases: list[Case], display: Display, fan_out: int) -> None:
    """Redraw the progress until every instance finished."""
    fan_base = _counter_total("ACTIVITY_EXECUTIONS", name="process_item")
    while True:
        for case in cases:
            if not case.finished:
                state = await client.get_orchestration_state(case.instance_id)
                if state is not None and not case.finished:
                    case.state = state
        progress: dict[str, str] = {}
        fan_done = _counter_total("ACTIVITY_EXECUTIONS", name="process_item")
        if fan_done is not None and fan_base is not None:
            progress["fan-out"] = f"{min(int(fan_done - fan_base), fan_out)}/{fan_out} activities done"
        display.update(cases, progress)
        if all(c.finished for c in cases):
            return
        await anyio.sleep(_REFRESH_S)


async def _clean_up(client: AsyncClient, cases: list[Case], *, keep: bool) -> None:
    """Terminate the demo's instances that still run; purge them all unless ``keep``."""
    ids = [iid for case in cases for iid in [case.instance_id, *case.children] if iid]
    for iid in ids:
        try:
            state = await client.get_orchestration_state(iid)
            if state is not None and not state.runtime_status.is_terminal:
                await client.terminate_orchestration(iid, output="demo ended")
                with anyio.move_on_after(5):
                    await client.wait_for_orchestration_completion(iid, timeout=5)
            if not keep:
                await client.purge_orchestration(iid)
        except Exception:  # best effort: a leftover instance is harmless
            continue
