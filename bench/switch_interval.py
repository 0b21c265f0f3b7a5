"""What a shorter switch interval (``gpu_worker.switch_interval``) buys a model thread beside a busy helper thread.

The ``digits`` analyzer's ``predict`` on coarse jobs (256-frame HDF5 stacks)
in a tight loop on one core, in turn: alone; beside a helper thread that,
like the runner's recorder, spends a share of each 50 ms running Python (it
JSON-encodes the batch's results) on another core, with CPython's default
switch interval; and beside the same helper with ``SWITCH_INTERVAL``. For
each: frames/s, and the share of the loop's time its thread was on its
core (the rest it waited, for the GIL); then the median ratio of the
shortened interval's speed to the default's. Taking turns, because this
machine's speed drifts.

    PYTHONPATH=. .venv/bin/python bench/switch_interval.py [--rounds 5] [--seconds 2] [--busy-share 0.1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.pinned_digits import pin_digits, print_medians  # noqa: E402
from gpu_worker.switch_interval import SWITCH_INTERVAL  # noqa: E402

PERIOD = 0.05  # seconds: about a coarse batch's predict on this machine
MODES = ("alone", "default", "shortened")


@dataclass(frozen=True)
class Measured:
    frames_per_s: float
    #: Share of the loop's wall time its thread ran on a core.
    on_core: float


class Helper:
    """A thread that runs Python for ``busy_share`` of every ``PERIOD`` while started, on ``cores``."""

    def __init__(self, results: list, busy_share: float, cores: set[int] | None):
        self.results, self.busy, self.cores = results, busy_share * PERIOD, cores
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="helper", daemon=True)

    def __enter__(self) -> Helper:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        if self.cores:
            os.sched_setaffinity(0, self.cores)
        while not self._stop.is_set():
            began = time.perf_counter()
            while time.perf_counter() - began < self.busy:
                for result in self.results:
                    json.dumps(result)
            self._stop.wait(max(0.0, PERIOD - (time.perf_counter() - began)))


def measure(analyzer, items: list, frames_per_call: int, seconds: float) -> Measured:
    analyzer.predict(items)
    calls, cpu_began, began = 0, time.thread_time(), time.perf_counter()
    while time.perf_counter() - began < seconds or calls < 3:
        analyzer.predict(items)
        calls += 1
    elapsed = time.perf_counter() - began
    return Measured(calls * frames_per_call / elapsed, (time.thread_time() - cpu_began) / elapsed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time of each mode in a round")
    parser.add_argument("--busy-share", type=float, default=0.1, help="share of each 50 ms the helper runs Python")
    parser.add_argument("--jobs", type=int, default=14, help="coarse jobs per predict call")
    args = parser.parse_args(argv)
    if not 0 < args.busy_share < 1 or min(args.rounds, args.jobs) < 1:
        parser.error("--busy-share must lie between 0 and 1, --rounds and --jobs be positive")
    model = pin_digits(args.jobs)
    analyzer, items, helper_cores = model.analyzer, model.items, model.other_cores
    results = analyzer.predict(items)
    default_interval = sys.getswitchinterval()
    print(f"digits, {args.jobs} coarse jobs per call; model on core {model.model_core}, helper busy "
          f"{args.busy_share:.0%} of each {PERIOD * 1000:.0f} ms on {sorted(helper_cores or {model.model_core})}; "
          f"switch interval {default_interval * 1000:g} ms (default) against {SWITCH_INTERVAL * 1000:g} ms",
          flush=True)
    rounds: list[dict[str, Measured]] = []
    for round_number in range(1, args.rounds + 1):
        measured: dict[str, Measured] = {}
        for mode in MODES:
            sys.setswitchinterval(SWITCH_INTERVAL if mode == "shortened" else default_interval)
            if mode == "alone":
                measured[mode] = measure(analyzer, items, model.frames_per_call, args.seconds)
            else:
                with Helper(results, args.busy_share, helper_cores):
                    measured[mode] = measure(analyzer, items, model.frames_per_call, args.seconds)
        sys.setswitchinterval(default_interval)
        rounds.append(measured)
        print(f"round {round_number}: " + "; ".join(
            f"{mode} {m.frames_per_s:,.0f} frames/s, on its core {m.on_core:.0%}" for mode, m in measured.items())
            + f"; shortened/default {measured['shortened'].frames_per_s / measured['default'].frames_per_s:.2f}",
            flush=True)
    print_medians(rounds, MODES, compared=("shortened", "default"), places=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
