"""``durable demo``: run the sample applications with an in-process worker, live progress, a summary.

The samples are the top-level packages ``orchestrations`` and ``entities`` (the repository's
folders of those names, shipped in the wheel beside ``durable``). Each one owns its demo: its
``demo`` module has

* ``GROUP``: the name of its group of patterns in the summary (``"Orchestrations"``),
* ``register(worker)``: registers its orchestrators, activities and entities,
* ``cases(settings)``: the :data:`Case` list to run (:class:`OrchestrationCase`: one
  orchestration instance, scheduled and followed; :class:`ScriptCase`: an async script that
  drives entities through a :class:`DemoRun`).

They are imported from the current directory (a checkout) or from beside this package (a
checkout's editable install, or the wheel's site-packages).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

import anyio

from .._client import AsyncClient
from .._config import ENV_REDIS_URL, WorkerConfig, resolve_url
from .._core.entities import EntityId
from .._core.model import OrchestrationState, OrchestrationStatus
from .._embedded import DEFAULT_DATA_DIR, embedded_redis_status
from .._worker import Worker
from .common import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, leaf_exceptions, redact_url, signal_receiver

#: The sample packages, in the order their patterns are shown.
SAMPLE_PACKAGES = ("orchestrations", "entities")
_REFRESH_S = 0.1
_APPROVER_DELAY_S = 0.5
_POLL_S = 0.05
_CLEANUP_S = 5.0

#: What a row of the live view and of the summary shows while a case has not started.
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
# what the samples' demo modules build


@dataclass(frozen=True)
class DemoSettings:
    """What the command line lets a sample's ``cases()`` adapt to."""

    fan_out: int = 200


@dataclass(frozen=True)
class Outcome:
    """How a case ended, as its ``check`` and ``describe`` see it."""

    status: OrchestrationStatus
    output: Any = None
    #: the failure message (a failed orchestration or script)
    failure: str | None = None

    @classmethod
    def of(cls, state: OrchestrationState) -> Outcome:
        details = state.failure_details
        return cls(state.runtime_status, state.output, details.message if details else None)


Check = Callable[[Outcome], str | None]
Describe = Callable[[Outcome], str]


def expect(condition: bool, message: str) -> str | None:
    """A check's verdict: None when ``condition`` holds, else ``message``."""
    return None if condition else message


def _no_children(instance_id: str) -> list[str]:
    return []


@dataclass(frozen=True)
class OrchestrationCase:
    """One orchestration instance the demo schedules, follows and checks."""

    key: str
    title: str
    orchestrator: Any
    input: Any
    check: Check
    describe: Describe
    expected_status: OrchestrationStatus = OrchestrationStatus.COMPLETED
    #: play the approver: raise this event once the custom status is "waiting for approval"
    approve_event: str | None = None
    #: shown while the instance runs and has no custom status
    hint: str = ""
    #: the instance ids of the children it starts (purged with it), from its own instance id
    children: Callable[[str], list[str]] = _no_children
    #: show "k/N activities done" while it runs: (activity name, N) ...
    progress_activity: tuple[str, int] | None = None
    #: ... and, under this label, the rate of those activities in the summary
    rate_label: str | None = None


@dataclass(frozen=True)
class ScriptCase:
    """A case driven by an async script (signals, entity reads, orchestrations, raw Redis): the
    script's return value is the case's output; an exception fails the case."""

    key: str
    title: str
    script: Callable[[DemoRun], Awaitable[Any]]
    check: Check
    describe: Describe
    hint: str = ""


Case = OrchestrationCase | ScriptCase


class DemoRun:
    """What a :class:`ScriptCase`'s script works with: the client, the Redis and hub, and helpers
    that keep the ids of one run apart from another's and clean up after it."""

    def __init__(self, client: AsyncClient, redis_url: str, hub: str, run_id: str, row: _Row) -> None:
        self.client = client
        self.redis_url = redis_url
        self.hub = hub
        self.run_id = run_id
        self._row = row

    def key(self, name: str) -> str:
        """A key (or instance id) unique to this run of the demo."""
        return f"demo-{self.run_id}-{name}"

    def entity(self, name: str, key: str) -> EntityId:
        """The id of entity ``name`` with a key unique to this run (deleted when the demo ends)."""
        entity_id = EntityId(name, self.key(key))
        self._row.entities.append(str(entity_id))
        return entity_id

    def progress(self, text: str) -> None:
        """Show ``text`` in the live view while the script runs."""
        self._row.progress = text

    async def entity_state(self, entity_id: EntityId | str) -> Any:
        """The entity's state (None when it does not exist)."""
        state = await self.client.get_entity(entity_id)
        return None if state is None else state.state

    async def wait_for_entity(self, entity_id: EntityId | str, until: Callable[[Any], bool]) -> Any:
        """Poll the entity until ``until(state)`` holds (a signal has no completion to wait for);
        returns that state. The demo's timeout bounds the wait."""
        while True:
            state = await self.entity_state(entity_id)
            if until(state):
                return state
            await anyio.sleep(_POLL_S)

    async def run_orchestration(self, orchestrator: Any, input: Any, key: str) -> OrchestrationState:
        """Start an orchestration (instance id unique to this run, purged when the demo ends) and
        wait for it to finish."""
        instance_id = self.key(key)
        self._row.instances.append(instance_id)
        await self.client.schedule_new_orchestration(orchestrator, input=input, instance_id=instance_id)
        return await self.client.wait_for_orchestration_completion(instance_id, timeout=3600)


# ------------------------------------------------------------------------------------------------
# finding the samples


def _holds_samples(root: Path) -> bool:
    return all((root / package / "demo.py").is_file() for package in SAMPLE_PACKAGES)


def _sample_roots() -> list[Path]:
    """Folders holding the sample packages: the current directory, the folder beside this package
    (a checkout, or the site-packages of a wheel install), then wherever they are importable."""
    roots = [Path.cwd(), Path(__file__).resolve().parent.parent.parent]
    for package in SAMPLE_PACKAGES:
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.origin:
            roots.append(Path(spec.origin).resolve().parent.parent)
    unique = list(dict.fromkeys(roots))
    return [r for r in unique if _holds_samples(r)]


@dataclass
class Sample:
    """One sample package's demo module."""

    group: str
    module: ModuleType

    def register(self, worker: Worker) -> None:
        self.module.register(worker)

    def cases(self, settings: DemoSettings) -> list[Case]:
        return list(self.module.cases(settings))


def load_samples() -> list[Sample]:
    """Import the ``demo`` module of every sample package, putting the folder that holds them on
    ``sys.path``."""
    roots = _sample_roots()
    if not roots:
        raise DemoError(
            "cannot find the sample applications (the 'orchestrations/' and 'entities/' folders of "
            "the durable repository, which the durable wheel installs too). Run 'durable demo' "
            "from the root of the repository, or reinstall durable."
        )
    for root in reversed(roots):
        path = str(root)
        if path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)
    samples = []
    for package in SAMPLE_PACKAGES:
        module = importlib.import_module(f"{package}.demo")
        samples.append(Sample(str(getattr(module, "GROUP", package.capitalize())), module))
    return samples


# ------------------------------------------------------------------------------------------------
# a case while the demo runs


@dataclass
class _Row:
    """A case of the demo, and what happened to it so far."""

    case: Case
    group: str
    instance_id: str = ""
    children: list[str] = field(default_factory=list)
    #: entities and orchestration instances a script created (cleaned up at the end)
    entities: list[str] = field(default_factory=list)
    instances: list[str] = field(default_factory=list)
    started: bool = False
    scheduled_at: float = 0.0
    finished_at: float | None = None
    state: OrchestrationState | None = None
    outcome: Outcome | None = None
    progress: str | None = None
    note: str | None = None
    problem: str | None = None

    @property
    def key(self) -> str:
        return self.case.key

    @property
    def title(self) -> str:
        return self.case.title

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    @property
    def expected_status(self) -> OrchestrationStatus:
        if isinstance(self.case, OrchestrationCase):
            return self.case.expected_status
        return OrchestrationStatus.COMPLETED

    @property
    def status_text(self) -> str:
        if self.outcome is not None:
            return self.outcome.status.value
        if self.state is not None:
            return self.state.runtime_status.value
        if self.started and isinstance(self.case, ScriptCase):
            return OrchestrationStatus.RUNNING.value
        return _SCHEDULED

    def elapsed(self, now: float) -> float:
        if not self.started:
            return 0.0
        end = self.finished_at if self.finished_at is not None else now
        return max(end - self.scheduled_at, 0.0)

    def verdict(self) -> str | None:
        """None when the case ended as expected, else what is wrong."""
        if self.problem is not None:
            return self.problem
        outcome = self.outcome
        if outcome is None or not self.finished:
            return "did not finish"
        if outcome.status != self.expected_status:
            reason = f" ({outcome.failure})" if outcome.failure else ""
            return f"expected {self.expected_status.value}, got {outcome.status.value}{reason}"
        try:
            return self.case.check(outcome)
        except Exception as exc:  # a malformed output
            return f"unexpected output: {type(exc).__name__}: {exc}"

    def described(self) -> str:
        """The summary's text for a finished case: its description, or what is wrong."""
        problem = self.verdict()
        if problem is not None or self.outcome is None:
            return problem or ""
        try:
            return self.case.describe(self.outcome)
        except Exception:
            return _compact(self.outcome.output)


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

    def _detail(self, row: _Row, progress: str | None) -> str:
        if row.finished and row.outcome is not None:
            return row.described()
        custom = _compact(row.state.custom_status) if row.state is not None else ""
        parts = [progress or row.progress or custom or row.case.hint]
        if row.note:
            parts.append(row.note)
        return "; ".join(p for p in parts if p)

    def update(self, rows: list[_Row], progress: dict[str, str]) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if self.tty:
            width = shutil.get_terminal_size((100, 24)).columns - 1
            lines = []
            for row in rows:
                detail = self._detail(row, progress.get(row.key))
                line = f"  {row.title:<30} {row.status_text:<10} {row.elapsed(now):5.1f}s  {detail}"
                lines.append("\x1b[2K" + _short(line, width))
            up = f"\x1b[{self._drawn}A\r" if self._drawn else ""
            self.out.write(up + "\n".join(lines) + "\n")
            self.out.flush()
            self._drawn = len(lines)
            return
        for row in rows:
            # without a terminal: one line whenever status or detail changes
            shown = (row.status_text, self._detail(row, None))
            if self._last.get(row.key) == shown:
                continue
            self._last[row.key] = shown
            status, detail = shown
            suffix = f" - {detail}" if detail else ""
            self.print(f"  [{now - self._t0:5.1f}s] {row.title}: {status}{suffix}")

    def summary(
        self,
        rows: list[_Row],
        ended: float,
        counters: Counters,
        wall: float,
        hub: str,
        url: str,
        interrupted: bool = False,
    ) -> None:
        self.print()
        self.print(f"Summary (hub {hub!r} on {url})")
        header = f"  {'PATTERN':<30} {'STATUS':<10} {'RESULT':<10} {'TIME':>7}  OUTPUT"
        self.print(header)
        self.print("  " + "-" * (len(header) - 2))
        for row in rows:
            result = "ok" if row.verdict() is None else "UNEXPECTED"
            took = row.elapsed(ended)
            line = f"  {row.title:<30} {row.status_text:<10} {result:<10} {took:6.2f}s  {row.described()}"
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
        for row in rows:
            case = row.case
            if not isinstance(case, OrchestrationCase) or not case.rate_label or not case.progress_activity:
                continue
            if row.finished and row.verdict() is None:
                count = case.progress_activity[1]
                took = max(row.elapsed(ended), 1e-6)
                self.print(
                    f"{case.rate_label}: {count} parallel activities in {took:.2f}s "
                    f"= {count / took:.1f} activities/s"
                )
        bad = [r for r in rows if r.verdict() is not None]
        if interrupted:
            self.print(f"Interrupted: {len(rows) - len(bad)} of {len(rows)} patterns had finished.")
            return
        for group in dict.fromkeys(r.group for r in rows):
            members = [r for r in rows if r.group == group]
            failed = [r for r in members if r.verdict() is not None]
            if failed:
                self.print(f"{group}: {len(failed)} of {len(members)} patterns did not behave as expected.")
            else:
                self.print(f"{group}: All {len(members)} patterns behaved as expected.")

    def embedded_note(self, data_dir: Path) -> None:
        """Where the embedded Redis keeps its data, that it keeps running, and how to stop it."""
        status = embedded_redis_status(data_dir)
        if not status.running:
            return
        self.print()
        self.print(
            f"Embedded Redis: still running at {status.url} (pid {status.pid}), data in {status.data_dir}"
        )
        self.print("  It keeps running for the durable commands and the dashboard ('durable serve').")
        self.print("  Stop it with 'durable redis stop' from this folder ('durable redis status' shows it).")


# ------------------------------------------------------------------------------------------------
# running


def run_demo(options: DemoOptions) -> int:
    """Run the demo; returns the exit code (0: every pattern behaved as expected)."""
    out = options.out or sys.stdout
    display = Display(out, options.quiet)
    try:
        samples = load_samples()
    except DemoError as exc:
        print(f"durable demo: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    hub = options.hub or "demo"
    url = options.redis_url or os.environ.get(ENV_REDIS_URL, "").strip()
    embedded = not url
    if url:
        where = "the given Redis"
    else:
        display.info(f"Starting the embedded Redis (data in ./{DEFAULT_DATA_DIR}) ...")
        where = "the embedded Redis"
    try:
        url = resolve_url(url or None)
    except Exception as exc:
        print(f"durable demo: cannot start the embedded Redis: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    shown_url = redact_url(url)
    display.info(f"durable demo: hub {hub!r} on {where} at {shown_url}")
    try:
        code = anyio.run(_run, samples, url, hub, options, display, shown_url)
    except Exception as exc:
        message = "; ".join(f"{type(e).__name__}: {e}" for e in leaf_exceptions(exc))
        print(f"durable demo: failed: {message}", file=sys.stderr)
        code = EXIT_FAILURE
    if embedded:
        display.embedded_note(DEFAULT_DATA_DIR)
    return code


async def _run(
    samples: list[Sample], url: str, hub: str, options: DemoOptions, display: Display, shown_url: str
) -> int:
    config = WorkerConfig(balance_interval_ms=200, poll_ms=250, drain_timeout=10.0)
    worker = Worker(url, hub, config=config)
    settings = DemoSettings(fan_out=options.fan_out)
    rows: list[_Row] = []
    for sample in samples:
        sample.register(worker)
        rows.extend(_Row(case, sample.group) for case in sample.cases(settings))
    run_id = uuid.uuid4().hex[:6]
    interrupted = False
    before = Counters.snapshot()
    async with worker, AsyncClient(url, hub) as client:
        display.info(
            f"Worker {worker.worker_id} started in this process ({worker.config.concurrency} activity slots)"
        )
        orchestrations = sum(isinstance(r.case, OrchestrationCase) for r in rows)
        display.info(
            f"Starting {orchestrations} orchestrations and {len(rows) - orchestrations} entity scenarios "
            f"(run {run_id}) ..."
        )
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
                    await _schedule(client, rows, run_id)
                    async with anyio.create_task_group() as inner:
                        for row in rows:
                            case = row.case
                            if isinstance(case, ScriptCase):
                                run = DemoRun(client, url, hub, run_id, row)
                                inner.start_soon(_script, row, case, run)
                                continue
                            inner.start_soon(_follow, client, row, options.timeout)
                            if case.approve_event:
                                inner.start_soon(_approve, client, row, case.approve_event)
                        inner.start_soon(_refresh, client, rows, display)
                tg.cancel_scope.cancel()
        ended = max([r.finished_at or time.monotonic() for r in rows if r.started] or [started])
        wall = ended - started
        display.update(rows, {})
        after = Counters.snapshot()
        for row in rows:
            if not row.finished and row.problem is None:
                row.problem = "interrupted" if interrupted else f"did not finish within {options.timeout:g}s"
        with anyio.CancelScope(shield=True):
            await _clean_up(client, rows, keep=options.keep)
    display.summary(rows, ended, after.since(before), wall, hub, shown_url, interrupted)
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if all(r.verdict() is None for r in rows) else EXIT_FAILURE


async def _schedule(client: AsyncClient, rows: list[_Row], run_id: str) -> None:
    """Start every orchestration case's instance, with instance ids unique to this run."""
    for row in rows:
        case = row.case
        if not isinstance(case, OrchestrationCase):
            continue
        row.scheduled_at = time.monotonic()
        row.started = True
        row.instance_id = await client.schedule_new_orchestration(
            case.orchestrator, input=case.input, instance_id=f"demo-{run_id}-{case.key}"
        )
        row.children = case.children(row.instance_id)


async def _follow(client: AsyncClient, row: _Row, timeout: float) -> None:
    """Wait for the instance to finish (woken by its status notifications)."""
    state = await client.wait_for_orchestration_completion(row.instance_id, timeout=timeout + 5)
    row.finished_at = time.monotonic()
    row.state = state
    row.outcome = Outcome.of(state)


async def _script(row: _Row, case: ScriptCase, run: DemoRun) -> None:
    """Run a script case; its exception (not a cancellation) fails the case."""
    row.scheduled_at = time.monotonic()
    row.started = True
    try:
        output = await case.script(run)
    except Exception as exc:
        row.outcome = Outcome(OrchestrationStatus.FAILED, failure=f"{type(exc).__name__}: {exc}")
    else:
        row.outcome = Outcome(OrchestrationStatus.COMPLETED, output)
    row.finished_at = time.monotonic()


async def _approve(client: AsyncClient, row: _Row, event: str) -> None:
    """Play the approver: answer once the orchestration is waiting for approval."""
    while True:
        state = await client.get_orchestration_state(row.instance_id)
        if state is not None and state.custom_status == "waiting for approval":
            break
        if state is not None and state.runtime_status.is_terminal:
            return
        await anyio.sleep(_POLL_S)
    row.note = "approver is reading the request"
    await anyio.sleep(_APPROVER_DELAY_S)
    await client.raise_orchestration_event(row.instance_id, event, data={"approved": True, "by": "demo"})
    row.note = "'approval' event raised"


async def _refresh(client: AsyncClient, rows: list[_Row], display: Display) -> None:
    """Redraw the progress until every case finished."""
    counted = {
        row.key: row.case.progress_activity
        for row in rows
        if isinstance(row.case, OrchestrationCase) and row.case.progress_activity
    }
    bases = {key: _counter_total("ACTIVITY_EXECUTIONS", name=name) for key, (name, _) in counted.items()}
    while True:
        for row in rows:
            if row.instance_id and not row.finished:
                state = await client.get_orchestration_state(row.instance_id)
                if state is not None and not row.finished:
                    row.state = state
        progress: dict[str, str] = {}
        for key, (name, total) in counted.items():
            done, base = _counter_total("ACTIVITY_EXECUTIONS", name=name), bases[key]
            if done is not None and base is not None:
                progress[key] = f"{min(int(done - base), total)}/{total} activities done"
        display.update(rows, progress)
        if all(r.finished for r in rows):
            return
        await anyio.sleep(_REFRESH_S)


async def _clean_up(client: AsyncClient, rows: list[_Row], *, keep: bool) -> None:
    """Terminate the demo's instances that still run and, unless ``keep``, purge them and delete
    the entities the scripts used (best effort: a leftover is harmless)."""
    ids = [iid for row in rows for iid in [row.instance_id, *row.children, *row.instances] if iid]
    for iid in ids:
        try:
            state = await client.get_orchestration_state(iid)
            if state is not None and not state.runtime_status.is_terminal:
                await client.terminate_orchestration(iid, output="demo ended")
                with anyio.move_on_after(5):
                    await client.wait_for_orchestration_completion(iid, timeout=5)
            if not keep:
                await client.purge_orchestration(iid)
        except Exception:
            continue
    if not keep:
        await _delete_entities(client, [e for row in rows for e in row.entities])


async def _delete_entities(client: AsyncClient, entities: Iterable[str]) -> None:
    remaining = list(dict.fromkeys(entities))
    try:
        for entity in remaining:
            await client.signal_entity(entity, "delete")
        with anyio.move_on_after(_CLEANUP_S):
            while remaining:
                remaining = [e for e in remaining if await client.get_entity(e) is not None]
                if remaining:
                    await anyio.sleep(_POLL_S)
    except Exception:
        return
