"""Facts about the machine and the code under test, for the report's "Machine" table."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def machine_facts() -> dict[str, str]:
    facts: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                facts["CPU"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        facts["CPU"] = platform.processor() or "?"
    facts["cores"] = str(os.cpu_count())
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        facts["RAM"] = f"{kb / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        facts["RAM"] = "?"
    facts["OS"] = f"{platform.system()} {platform.release()}"
    facts["Python"] = platform.python_version()
    try:
        from durable._embedded import find_redis_server

        out = subprocess.run([find_redis_server(), "--version"], capture_output=True, text=True).stdout
        facts["Redis"] = out.split("v=")[1].split()[0] if "v=" in out else out.strip()
    except Exception:
        facts["Redis"] = "?"
    try:
        import redis

        facts["redis-py"] = redis.__version__
    except Exception:
        pass
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "durable"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        facts["durable commit"] = rev + (" + uncommitted changes in durable/" if dirty else "")
    except OSError:
        pass
    return facts


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"
