"""How long a stopping worker gets to finish its job: one rule for the launcher and ``gpuq up``.

A job that started just before the stop may run to its hard time limit, so by
default the grace is that limit and 30 s more; ``gpuq up`` waits as long for the
launcher, and keeps its Redis until then, instead of killing both sooner.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["stop_grace"]

#: ``GPUQ_JOB_TIME_LIMIT``'s default, in seconds (``tasks.settings.Settings.job_time_limit``).
DEFAULT_JOB_TIME_LIMIT = 3600.0
#: Seconds beyond the hard limit: the limit's own kill, the result's write, the worker's exit.
MARGIN = 30.0


def stop_grace(environ: Mapping[str, str]) -> float:
    """``GPUQ_STOP_GRACE`` seconds, by default ``GPUQ_JOB_TIME_LIMIT`` + 30; a malformed value stops the process."""
    raw = environ.get("GPUQ_STOP_GRACE", "").strip()
    if raw:
        return _seconds("GPUQ_STOP_GRACE", raw)
    limit = environ.get("GPUQ_JOB_TIME_LIMIT", "").strip()
    return (_seconds("GPUQ_JOB_TIME_LIMIT", limit) if limit else DEFAULT_JOB_TIME_LIMIT) + MARGIN


def _seconds(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0:  # NaN too
        raise SystemExit(f"{name}={raw!r}: expected a number of seconds above 0")
    return value
