"""The README's example runs as written (against the test Redis)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_readme_example_runs(redis_url: str, hub: str, tmp_path: Path) -> None:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    example = next(b for b in blocks if "schedule_new_orchestration" in b)
    script = tmp_path / "example.py"
    script.write_text(example)
    env = dict(os.environ, DURABLE_REDIS_URL=redis_url, DURABLE_HUB=hub, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert "'approved': True" in out.stdout and "charged 42" in out.stdout
