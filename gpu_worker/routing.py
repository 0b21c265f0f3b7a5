"""``GPUQ_ROUTES``: which analyzers each worker of this host serves.

A route gives a set of workers their own ``GPUQ_ANALYZERS``::

    GPUQ_ROUTES="0-1:embed;2-3:digits,simulate"

Routes are separated by ``;``. Before the first ``:`` come the workers: GPU
ids and ranges (``0``, ``0-1``, ``0,2``, or an id as ``GPUQ_GPUS`` spells it),
or CPU workers by index (``cpu0``, ``cpu0-1``). After it come the analyzers,
written as in ``GPUQ_ANALYZERS`` (built-in names, ``package.module:Class``).
A worker no route names serves ``GPUQ_ANALYZERS``.

A route that cannot be followed (a GPU this host does not have, a worker
named twice, an unknown built-in, bad syntax) stops the launcher before any
worker starts: a mistyped route must not become a fleet that silently lacks
an analyzer.
"""

from __future__ import annotations

import re

from gpu_worker.registry import BUILTINS
from tasks.settings import SettingsError

__all__ = ["RouteError", "route_analyzers"]

_RANGE = re.compile(r"^(cpu)?(\d+)(?:-(\d+))?$")


class RouteError(SettingsError):
    """Raised when ``GPUQ_ROUTES`` is malformed or names workers this host does not run."""


def route_analyzers(routes: str, workers: list[str]) -> dict[str, str]:
    """Map worker keys (``gpu0``, ``cpu1``: ``workers`` lists this host's) to their ``GPUQ_ANALYZERS``.

    Only routed workers appear in the answer.
    """
    assigned: dict[str, str] = {}
    for part in routes.split(";"):
        part = part.strip()
        if not part:
            continue  # tolerate a trailing ';'
        selector, sep, analyzers = part.partition(":")
        if not sep or not selector.strip():
            raise RouteError(f"GPUQ_ROUTES: {part!r} is not 'workers:analyzers' (e.g. '0-1:embed' or 'cpu0:digits')")
        entries = [e.strip() for e in analyzers.split(",")]
        if not analyzers.strip() or not all(entries):
            raise RouteError(f"GPUQ_ROUTES: {part!r} needs a comma-separated list of analyzers after ':'")
        for entry in entries:
            if ":" not in entry and entry not in BUILTINS:
                raise RouteError(f"GPUQ_ROUTES: {entry!r} in {part!r} is neither a built-in analyzer "
                                 f"({', '.join(sorted(BUILTINS))}) nor an import path 'package.module:Class'")
        for key in _select(selector, part):
            if key not in workers:
                raise RouteError(f"GPUQ_ROUTES: {part!r} names worker {key}, but this host runs "
                                 f"{', '.join(workers) or 'none'} (see GPUQ_GPUS and GPUQ_CPU_WORKERS)")
            if key in assigned:
                raise RouteError(f"GPUQ_ROUTES: worker {key} is routed twice")
            assigned[key] = ",".join(entries)
    return assigned


def _select(selector: str, part: str) -> list[str]:
    keys: list[str] = []
    for token in selector.split(","):
        token = token.strip()
        if not token:
            raise RouteError(f"GPUQ_ROUTES: empty worker id in {part!r}")
        match = _RANGE.match(token)
        if match is None:
            # An id as GPUQ_GPUS or CUDA_VISIBLE_DEVICES may spell it (a GPU UUID, say).
            keys.append(f"gpu{token}")
            continue
        kind = "cpu" if match.group(1) else "gpu"
        low = int(match.group(2))
        high = int(match.group(3)) if match.group(3) is not None else low
        if high < low:
            raise RouteError(f"GPUQ_ROUTES: range {token!r} in {part!r} runs backwards")
        keys.extend(f"{kind}{n}" for n in range(low, high + 1))
    return keys
