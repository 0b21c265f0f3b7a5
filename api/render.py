"""The job object of the HTTP contract, built from a job record."""

from __future__ import annotations

from typing import Any

from api.timefmt import iso
from tasks.jobs import JobRecord

__all__ = ["job_object"]


def job_object(record: JobRecord, result: Any = None) -> dict[str, Any]:
    return {
        "id": record.id,
        "analyzer": record.analyzer,
        "status": record.status,
        "created_at": iso(record.created_at),
        "started_at": iso(record.started_at),
        "finished_at": iso(record.finished_at),
        "expires_at": iso(record.expires_at),
        "queue_position": None,
        "progress": record.progress,
        "attempts": record.attempts,
        "worker": record.worker,
        "device": record.device,
        "params": record.params,
        "timings": record.timings,
        "result": result,
        "provenance": record.provenance,
        "error": record.error,
    }
