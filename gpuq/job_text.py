"""A job as aligned lines for people (``gpuq status``, ``gpuq wait``); ``--json`` prints the raw object."""

from __future__ import annotations

import json
from typing import Any

from gpuq.client import Job

__all__ = ["job_lines"]


def job_lines(job: Job) -> list[str]:
    rows: list[tuple[str, str]] = [("id", job.id or "-"), ("analyzer", job.analyzer), ("status", job.status)]
    if job.queue_position is not None:
        rows.append(("position", f"{job.queue_position} ahead"))
    if job.eta_seconds is not None:
        rows.append(("eta", f"{job.eta_seconds:.1f}s ({job.eta})"))
    if job.progress and not job.done:
        rows.append(("progress", _progress(job.progress)))
    if job.worker:
        rows.append(("worker", f"{job.worker} ({job.device})"))
    for label, moment in (("created", job.created_at), ("finished", job.finished_at)):
        if moment:
            rows.append((label, moment))
    if job.timings:
        rows.append(("timings", _timings(job.timings)))
    if job.error:
        rows.append(("error", f"{job.error.get('code')}: {job.error.get('message')}"))
    lines = [f"{label + ':':<10} {value}" for label, value in rows]
    if job.succeeded:
        lines += _result(job.result)
    return lines


def _progress(progress: dict[str, Any]) -> str:
    """``37% simulate 74/200``: the fraction, the stage and the count, then anything else the analyzer said."""
    parts = []
    if isinstance(progress.get("fraction"), (int, float)):
        parts.append(f"{progress['fraction']:.0%}")
    if progress.get("stage"):
        parts.append(str(progress["stage"]))
    if "done" in progress and "total" in progress:
        parts.append(f"{progress['done']}/{progress['total']}")
    rest = {k: v for k, v in progress.items() if k not in ("fraction", "stage", "done", "total")}
    return " ".join(parts + _pairs(rest))


def _timings(timings: dict[str, Any]) -> str:
    """``queued 21 ms, run 79 ms, batch_size 1``."""
    return ", ".join(f"{key[:-3]} {value:.0f} ms" if key.endswith("_ms") and isinstance(value, (int, float))
                     else f"{key} {_scalar(value)}" for key, value in timings.items())


def _result(result: Any) -> list[str]:
    """A result object as one aligned line per member, each value as compact JSON; anything else on one line."""
    if not isinstance(result, dict) or not result:
        return [f"{'result:':<10} {_scalar(result)}"]
    width = max(len(key) for key in result)
    return ["result:"] + [f"  {key:<{width}}  {_scalar(value)}" for key, value in result.items()]


def _pairs(values: dict[str, Any]) -> list[str]:
    return [f"{key}={_scalar(value)}" for key, value in values.items()]


def _scalar(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)
