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
import os
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TextIO

import anyio

from .._client import AsyncClient
from .._config import ENV_REDIS_URL, WorkerConfig, resolve_url
from .._core.model import OrchestrationStatus
from .._embedded import DEFAULT_DATA_DIR
from .._worker import Worker
from .common import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, leaf_exceptions, redact_url, signal_receiver
from .demo_cases import (
    _POLL_S,
    Case,
    DemoRun,
    DemoSettings,
    OrchestrationCase,
    Outcome,
    ScriptCase,
)
from .demo_display import Counters, Display, _counter_total, _Row

#: The sample packages, in the order their patterns are shown.
SAMPLE_PACKAGES = ("orchestrations", "entities")
_REFRESH_S = 0.1
_APPROVER_DELAY_S = 0.5
_CLEANUP_S = 5.0


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
            f"Starting {orchestrations} orchestrations and {len(rows) - orchestrations} scripted scenarios "
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
