"""What encoding results with orjson (``gpu_worker.fast_json``) buys the model thread beside the recorder.

The ``digits`` analyzer's ``predict`` on coarse jobs (256-frame HDF5 stacks)
in a tight loop on one core, as the worker runs on: after each call, a
recorder thread on another core encodes that call's results with
``gpu_worker.results.encode_result``, while the model thread runs the next
call. In turn: alone (nothing encoded); the recorder with Celery's backend
encoder (the standard library's C encoder, which holds the GIL for a whole
result); the recorder with ``encode_result`` as the worker has it. The
switch interval is the worker's (``SWITCH_INTERVAL``). For each: frames/s,
the share of the loop's time the model thread was on its core (the rest it
waited for the GIL) and the recorder's time per result; then the median
ratios. Taking turns, because this machine's speed drifts.

    PYTHONPATH=. .venv/bin/python bench/result_encoding.py [--rounds 5] [--seconds 2] [--jobs 14]
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# The backend only encodes here; it never connects.
os.environ.setdefault("GPUQ_REDIS_URL", "redis://127.0.0.1:1/0")

from bench.pinned_digits import pin_digits, print_medians  # noqa: E402
from gpu_worker.results import encode_result, result_meta  # noqa: E402
from gpu_worker.switch_interval import hand_back_the_gil_sooner  # noqa: E402

MODES = ("alone", "backend", "fast")


@dataclass(frozen=True)
class Measured:
    frames_per_s: float
    #: Share of the loop's wall time the model thread ran on a core.
    on_core: float
    #: Recorder's wall time per result encoded, in microseconds (0 alone).
    us_per_result: float


class Recorder:
    """A thread on ``cores`` that encodes each call's results it is handed, one result at a time."""

    def __init__(self, encode, cores: set[int] | None):
        self.encode, self.cores = encode, cores
        self.calls: queue.Queue = queue.Queue()
        self.encoded, self.seconds = 0, 0.0
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if self.cores:
            os.sched_setaffinity(0, self.cores)
        while (results := self.calls.get()) is not None:
            began = time.perf_counter()
            for number, result in enumerate(results):
                self.encode(f"job-{number}", result)
            self.seconds += time.perf_counter() - began
            self.encoded += len(results)

    def close(self) -> None:
        self.calls.put(None)
        self._thread.join()


def measure(analyzer, items: list, frames_per_call: int, seconds: float, encode, cores) -> Measured:
    recorder = Recorder(encode, cores) if encode else None
    analyzer.predict(items)
    calls, cpu_began, began = 0, time.thread_time(), time.perf_counter()
    while time.perf_counter() - began < seconds or calls < 3:
        results = analyzer.predict(items)
        if recorder:
            recorder.calls.put(results)
        calls += 1
    elapsed = time.perf_counter() - began
    on_core = (time.thread_time() - cpu_began) / elapsed
    us = 0.0
    if recorder:
        recorder.close()
        us = recorder.seconds / max(1, recorder.encoded) * 1e6
    return Measured(calls * frames_per_call / elapsed, on_core, us)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time of each mode in a round")
    parser.add_argument("--jobs", type=int, default=14, help="coarse jobs per predict call")
    args = parser.parse_args(argv)
    if min(args.rounds, args.jobs) < 1 or args.seconds <= 0:
        parser.error("--rounds, --jobs and --seconds must be positive")
    model = pin_digits(args.jobs)
    hand_back_the_gil_sooner()
    from tasks.celery_app import app

    backend = app.backend
    encoders = {"alone": None,
                "backend": lambda job_id, result: backend.encode(result_meta(backend, job_id, result)),
                "fast": lambda job_id, result: encode_result(backend, job_id, result)}
    print(f"digits, {args.jobs} coarse jobs per call; model on core {model.model_core}, recorder on "
          f"{sorted(model.other_cores or {model.model_core})}", flush=True)
    rounds: list[dict[str, Measured]] = []
    for round_number in range(1, args.rounds + 1):
        measured = {mode: measure(model.analyzer, model.items, model.frames_per_call, args.seconds, encoders[mode],
                                  model.other_cores)
                    for mode in MODES}
        rounds.append(measured)
        print(f"round {round_number}: " + "; ".join(
            f"{mode} {m.frames_per_s:,.0f} frames/s, on its core {m.on_core:.0%}"
            + (f", {m.us_per_result:.0f} us a result" if m.us_per_result else "") for mode, m in measured.items())
            + f"; fast/backend {measured['fast'].frames_per_s / measured['backend'].frames_per_s:.3f}", flush=True)
    print_medians(rounds, MODES, compared=("fast", "backend"), places=3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
