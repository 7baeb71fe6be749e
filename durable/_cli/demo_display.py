"""The live view of ``durable demo``: each case's row (what happened to it so far), the engine's
counters, and the table redrawn while the demo runs."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .._core.model import OrchestrationState, OrchestrationStatus
from .._embedded import embedded_redis_status
from .demo_cases import (
    _SCHEDULED,
    Case,
    OrchestrationCase,
    Outcome,
    ScriptCase,
)

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
