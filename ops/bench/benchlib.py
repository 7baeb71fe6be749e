"""Small helpers shared by the benchmark driver and the peer scripts.

Standard library only: the peer scripts import this module from their own virtualenvs, where
neither ``durable`` nor its dependencies are installed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

RESULT_PREFIX = "BENCH-RESULT "


# -- statistics ---------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    frac = pos - lo
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * frac)


def median(values: Iterable[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(statistics.median(vals)) if vals else math.nan


# -- processes and ports ------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(
    port: int, timeout: float, host: str = "127.0.0.1", proc: subprocess.Popen[Any] | None = None
) -> None:
    """Wait until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with code {proc.returncode} before listening")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            try:
                sock.connect((host, port))
                return
            except OSError:
                pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:g}s")
        time.sleep(0.05)


def spawn(
    args: Sequence[str],
    log_path: Path,
    *,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    stdin: Any = subprocess.DEVNULL,
    stdout: Any = None,
) -> subprocess.Popen[Any]:
    """Start a process in its own session (so it and its children can be stopped together)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
    try:
        return subprocess.Popen(
            list(args),
            env=env,
            cwd=cwd,
            stdin=stdin,
            stdout=stdout if stdout is not None else log,
            stderr=log,
            start_new_session=True,
        )
    finally:
        log.close()


def stop(proc: subprocess.Popen[Any] | None, timeout: float = 15.0, sig: int = signal.SIGTERM) -> None:
    """Signal the process group of a process started by :func:`spawn`, then kill it if it lingers."""
    if proc is None or proc.poll() is not None:
        if proc is not None:
            proc.wait()
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# -- the result protocol between a peer script and the driver ----------------------------------
class Results:
    """Per-workload metric samples (one value per repetition) plus notes and versions."""

    def __init__(self) -> None:
        self.results: dict[str, dict[str, list[float]]] = {}
        self.notes: dict[str, str] = {}
        self.versions: dict[str, str] = {}
        self.setup = ""

    def add(self, workload: str, metric: str, value: float) -> None:
        self.results.setdefault(workload, {}).setdefault(metric, []).append(float(value))

    def note(self, workload: str, text: str) -> None:
        self.notes[workload] = text

    def to_dict(self) -> dict[str, Any]:
        return {"results": self.results, "notes": self.notes, "versions": self.versions, "setup": self.setup}

    def emit(self) -> None:
        print(RESULT_PREFIX + json.dumps(self.to_dict()), flush=True)


def parse_result(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            data: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            return data
    return None


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def versions_of(*dists: str) -> dict[str, str]:
    from importlib import metadata

    out: dict[str, str] = {}
    for d in dists:
        try:
            out[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            out[d] = "?"
    return out


def latency_stats(latencies_s: Sequence[float]) -> tuple[float, float]:
    """(p50, p99) in milliseconds."""
    return percentile(latencies_s, 50) * 1000, percentile(latencies_s, 99) * 1000
