"""Which CPU cores a worker's model process runs on (``GPUQ_WORKER_CPUS``).

A host's cores serve the API, Redis, the workers' Celery main processes and the
models' own host work (decoding inputs, launching kernels, copying results).
The scheduler moves a busy model process between cores and lets every wake-up
of the others interrupt it; giving each pool child cores of its own keeps its
caches warm and its passes uninterrupted, and on a host with several GPUs
lets each GPU's worker run on the cores near that GPU (its NUMA node).

The value is one core list in Linux's notation (``0-3,8``), for every worker
of the launcher, or one list per worker separated by ``;`` in the launcher's
order (GPU order, or ``cpu0``, ``cpu1``...): ``0-15;16-31``. Only the pool
child is pinned, in ``worker_process_init`` before it loads a model, so the
threads torch starts inherit the cores; the Celery main process keeps the
cores it was given, and so does the child's thread that records ended
batches (``gpu_worker.runner``): that is the service's work, not the model's.
"""

from __future__ import annotations

import os

from tasks.settings import SettingsError

__all__ = ["VARIABLE", "parse_core_list", "pin_to_cores", "worker_core_lists"]

VARIABLE = "GPUQ_WORKER_CPUS"


def parse_core_list(text: str) -> set[int]:
    """The cores ``0-3,8`` names; raises ``SettingsError`` for anything else."""
    cores: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise SettingsError(f"{VARIABLE}: {text!r} is not a list of cores such as 0-3,8")
        low, high = int(first), int(last) if dash else int(first)
        if high < low:
            raise SettingsError(f"{VARIABLE}: {part.strip()!r} runs backwards")
        cores.update(range(low, high + 1))
    return cores


def worker_core_lists(value: str, workers: int) -> list[str | None]:
    """Each worker's core list (``None``: not pinned), in the launcher's order.

    One list is shared by every worker; otherwise there must be one per worker.
    """
    lists = [entry.strip() for entry in value.split(";")] if value.strip() else []
    for entry in lists:
        parse_core_list(entry)
    if not lists:
        return [None] * workers
    if len(lists) == 1:
        return lists * workers
    if len(lists) != workers:
        raise SettingsError(f"{VARIABLE} gives {len(lists)} core lists for {workers} workers: "
                            "give one list for all of them, or one per worker")
    return list(lists)


def pin_to_cores(value: str | None) -> set[int] | None:
    """Pin this process (and the threads it starts from now on) to the cores ``value`` names.

    Returns the cores, or ``None`` when ``value`` is empty (nothing changes).
    Raises ``SettingsError`` if they are malformed or none of them is usable here.
    """
    if not value or not value.strip():
        return None
    cores = parse_core_list(value)
    try:
        os.sched_setaffinity(0, cores)
    except OSError as error:  # EINVAL: no core of the list is online (or allowed by the cgroup)
        usable = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
        raise SettingsError(f"{VARIABLE}={value!r}: cannot run on those cores ({error.strerror}); "
                            f"this process may use {usable}") from None
    return cores
