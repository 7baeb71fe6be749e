"""Where a worker or client finds its Redis and hub when none is given."""

from __future__ import annotations

import os

DEFAULT_HUB = "default"


def resolve_hub(hub: str | None) -> str:
    """``hub``, else ``$DURABLE_HUB``, else ``"default"``; validated for use in key names."""
    value = hub or os.environ.get("DURABLE_HUB") or DEFAULT_HUB
    if not value or any(c in value for c in "{}: \t\n"):
        raise ValueError(f"invalid hub name {value!r}: use letters, digits, '-', '_' or '.'")
    return value


def resolve_url(url: str | None) -> str:
    """``url``, else ``$DURABLE_REDIS_URL``, else an embedded Redis started on demand."""
    from ._embedded import resolve_redis_url

    return resolve_redis_url(url)
