"""Bootstrap shared by the peer scripts: config loading and the import of benchlib.

The peer scripts run in the peers' own virtualenvs (never the project's), so they import only
the standard library, their peer's packages and ``benchlib`` (standard library only).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchlib import Results, latency_stats, log, spawn, stop  # noqa: F401


def load_config() -> dict[str, Any]:
    return json.loads(Path(sys.argv[1]).read_text())  # type: ignore[no-any-return]
