"""Timestamps on the wire: ISO 8601 in UTC with milliseconds."""

from __future__ import annotations

from datetime import datetime, timezone


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
