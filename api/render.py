"""The job object of the HTTP contract, built from a job record."""

from __future__ import annotations

from typing import Any

from api.timefmt import iso
from tasks.jobs import JobRecord

__all__ = ["job_object"]


def job_object(record: JobRecord, result: Any = None, standing: dict[str, Any] | None = None) -> dict[str, Any]:
    """``standing``: queue position and ETA (api/standing.py), for a job not yet ended."""
    standing = standing or {}
    return {
        "id": record.id,
        "analyzer": record.analyzer,
        "status": record.status,
        "created_at": iso(record.created_at),
        "started_at": iso(record.started_at),
        "finished_at": iso(record.finished_at),
        "expires_at": iso(record.expires_at),
        "queue_position": standing.get("queue_position"),
        "eta_seconds": standing.get("eta_seconds"),
        "eta": standing.get("eta"),
        "progress": record.progress,
        "attempts": record.attempts,
        "worker": record.worker,
        "device": record.device,
        "params": record.params,
        "timings": record.timings,
        "result": result,
        "provenance": record.provenance,
        "error": record.error,
        "webhook": record.webhook,
    }
