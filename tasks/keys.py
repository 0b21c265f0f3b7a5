"""Redis key names, in one place so that every process agrees on them."""

from __future__ import annotations

PREFIX = "gpuq:"


def job(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


def job_input(job_id: str) -> str:
    return f"{PREFIX}input:{job_id}"


def job_events(job_id: str) -> str:
    """Pub/sub channel announcing every change of one job's record."""
    return f"{PREFIX}events:{job_id}"


def job_lock(job_id: str) -> str:
    return f"{PREFIX}lock:{job_id}"


ANALYZERS = f"{PREFIX}analyzers"
WORKERS = f"{PREFIX}workers"


def worker(name: str) -> str:
    return f"{PREFIX}worker:{name}"


def metric(name: str) -> str:
    """Hash holding one metric's values, by label set (see tasks/metrics.py)."""
    return f"{PREFIX}metrics:{name}"
