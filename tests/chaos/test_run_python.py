"""Which Python ``ops/chaos/run`` and ``ops/bench/run`` run with: ``$DURABLE_CHAOS_PYTHON`` /
``$DURABLE_BENCH_PYTHON``, else the virtualenv (``$DURABLE_VENV``, default the repository's
``.venv``), else the ``python3`` on PATH when it can import durable; one line on stderr says which.

Each case runs the script with ``--help`` (the cheapest thing it does), so the usage on stdout
shows that the chosen interpreter really ran it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = [("chaos", "DURABLE_CHAOS_PYTHON"), ("bench", "DURABLE_BENCH_PYTHON")]


def _run(
    kind: str, cwd: Path, path_first: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """``ops/<kind>/run --help`` with ``env`` (and ``path_first`` first on PATH)."""
    ignored = ("DURABLE_CHAOS_PYTHON", "DURABLE_BENCH_PYTHON", "DURABLE_VENV")
    full = {k: v for k, v in os.environ.items() if k not in ignored}
    full.update(env)
    if path_first is not None:
        full["PATH"] = f"{path_first}{os.pathsep}{full.get('PATH', '')}"
    return subprocess.run(
        ["bash", str(REPO / "ops" / kind / "run"), "--help"],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _python_script(path: Path, body: str) -> Path:
    """An executable stand-in for an interpreter (a wrapper keeps the real one's virtualenv)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def _ran(proc: subprocess.CompletedProcess[str], kind: str) -> None:
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: ops/{kind}/run"), proc.stdout


@pytest.mark.parametrize(("kind", "var"), SCRIPTS)
def test_the_interpreter_from_the_environment_variable(kind: str, var: str, tmp_path: Path) -> None:
    proc = _run(kind, REPO, **{var: sys.executable, "DURABLE_VENV": str(tmp_path / "none")})
    _ran(proc, kind)
    assert proc.stderr.splitlines() == [f"ops/{kind}/run: running with {sys.executable} (from {var})"]
    # a relative path is taken relative to where the script is called from, not the repository
    relative = os.path.relpath(sys.executable, tmp_path)
    proc = _run(kind, tmp_path, **{var: relative})
    _ran(proc, kind)
    assert proc.stderr.splitlines() == [f"ops/{kind}/run: running with {tmp_path / relative} (from {var})"]
    proc = _run(kind, REPO, **{var: str(tmp_path / "missing" / "python")})
    assert proc.returncode == 2
    assert f"{var}=" in proc.stderr and "not an executable" in proc.stderr


@pytest.mark.parametrize(("kind", "var"), SCRIPTS)
def test_the_virtualenv_without_the_variable(kind: str, var: str, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    python = _python_script(venv / "bin" / "python", f'exec "{sys.executable}" "$@"')
    proc = _run(kind, REPO, DURABLE_VENV=str(venv))
    _ran(proc, kind)
    assert proc.stderr.splitlines() == [f"ops/{kind}/run: running with {python} (the virtualenv {venv})"]
    if (REPO / ".venv" / "bin" / "python").exists():  # by default: the repository's .venv
        proc = _run(kind, REPO)
        _ran(proc, kind)
        assert proc.stderr.splitlines() == [
            f"ops/{kind}/run: running with {REPO}/.venv/bin/python (the virtualenv {REPO}/.venv)"
        ]


@pytest.mark.parametrize(("kind", "var"), SCRIPTS)
def test_python3_on_path_without_a_virtualenv(kind: str, var: str, tmp_path: Path) -> None:
    no_venv = str(tmp_path / "no-venv")
    good = _python_script(tmp_path / "good" / "python3", f'exec "{sys.executable}" "$@"')
    proc = _run(kind, REPO, path_first=good.parent, DURABLE_VENV=no_venv)
    _ran(proc, kind)
    assert proc.stderr.splitlines() == [
        f"ops/{kind}/run: running with {good} (python3 on PATH, which can import durable)"
    ]
    # a python3 that cannot import durable is not used: the script says what to do instead
    bad = _python_script(tmp_path / "bad" / "python3", "exit 1")
    proc = _run(kind, REPO, path_first=bad.parent, DURABLE_VENV=no_venv)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "no Python to run with" in proc.stderr and var in proc.stderr and ".venv" in proc.stderr
