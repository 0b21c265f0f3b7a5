"""The ``digits`` model on a core of its own, fed coarse jobs, as the in-process benches of one thread's speed use it.

A model process's setting (the switch interval, how results are encoded) is
measured by running ``predict`` in this process on its first allowed core,
with whatever helper thread the bench adds on the others.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass

from bench.workloads import build_workload
from gpu_worker.devices import limit_torch_threads
from gpu_worker.host_memory import keep_freed_memory

__all__ = ["PinnedDigits", "pin_digits", "print_medians"]


@dataclass(frozen=True)
class PinnedDigits:
    analyzer: object
    #: One predict call's items: ``jobs`` 256-frame HDF5 stacks.
    items: list
    frames_per_call: int
    model_core: int
    #: Cores left for helper threads (None on a one-core machine: they share the model's).
    other_cores: set[int] | None


def pin_digits(jobs: int) -> PinnedDigits:
    """Pin this process to its first core, set torch and the allocator up as a worker does, load ``digits``."""
    cores = sorted(os.sched_getaffinity(0))
    other_cores = set(cores[1:]) if len(cores) > 1 else None
    if other_cores:
        os.sched_setaffinity(0, {cores[0]})
    limit_torch_threads(1)
    keep_freed_memory()
    from gpu_worker.analyzers.digits import DigitsAnalyzer

    workload = build_workload("digits", "coarse")
    analyzer = DigitsAnalyzer()
    analyzer.setup("cpu")
    return PinnedDigits(analyzer, [workload.item(n) for n in range(jobs)], jobs * workload.items_per_job,
                        cores[0], other_cores)


def print_medians(rounds: list[dict], modes: tuple[str, ...], compared: tuple[str, str], places: int) -> None:
    """Per mode, the median share on core and speed against the first mode; then ``compared``'s median ratio.

    ``rounds`` holds, per round, each mode's measurement with ``frames_per_s`` and ``on_core``.
    """
    first, (over, under) = modes[0], compared
    width = max(len(mode) for mode in modes)
    for mode in modes:
        against_first = statistics.median(r[mode].frames_per_s / r[first].frames_per_s for r in rounds)
        print(f"{mode:>{width}}: on its core, median {statistics.median(r[mode].on_core for r in rounds):.1%}; "
              f"against {first}, median {against_first:.{places}f}")
    ratio = statistics.median(r[over].frames_per_s / r[under].frames_per_s for r in rounds)
    print(f"{over}/{under}, median of {len(rounds)} rounds: {ratio:.{places}f}")
