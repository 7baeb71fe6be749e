"""A two-minute chaos run (``ops/chaos/run --minutes 2 --seed 7``) as a subprocess.

Worker SIGKILL and SIGSTOP, redis-server kill -9 (appendfsync always), forced split-brain and
graceful scale changes under a seeded workload; every oracle of the harness must hold. The
harness prints one table and, last, ``safety violations: N``; on failure it keeps its work folder
(worker logs, Redis data, report.json) and names it on stderr.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUN = REPO / "ops" / "chaos" / "run"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_minute_chaos_run_has_no_violations() -> None:
    env = dict(os.environ, DURABLE_CHAOS_PYTHON=sys.executable)
    proc = subprocess.run(
        [str(RUN), "--minutes", "2", "--seed", "7"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    report = f"stdout:\n{proc.stdout}\nstderr (tail):\n{proc.stderr[-4000:]}"
    lines = proc.stdout.strip().splitlines()
    assert lines, report
    assert lines[-1] == "safety violations: 0", report
    assert proc.returncode == 0, report
    assert re.search(r"^instances not finished\s+0$", proc.stdout, re.M), report
    faults = dict(re.findall(r"^faults: (.+?)\s{2,}(\d+)$", proc.stdout, re.M))
    assert set(faults) >= {
        "worker SIGKILL",
        "worker SIGSTOP/SIGCONT",
        "split-brain (lease DEL)",
        "redis kill -9",
    }
    assert all(int(n) > 0 for n in faults.values()), faults  # every kind of fault was injected
