"""The wire format other languages use to signal entities and raise events (see docs/wire-format.md)."""

from __future__ import annotations

from typing import Any


class MalformedMessage(ValueError):
    """An inbox entry that cannot be understood; it is dead-lettered with the reason."""


def parse_wire(fields: dict[bytes, bytes]) -> dict[str, Any]:
    """Parse a flat-field stream entry into an internal message dict."""
    raise MalformedMessage("entry has no 'm' field and the wire format is not supported yet")
