"""What keeping freed host memory (``gpu_worker.host_memory``) buys a CPU model process.

Runs the ``digits`` analyzer's ``predict`` on coarse jobs (256-frame HDF5
stacks) in fresh interpreters, in turn with glibc's default malloc
thresholds and with ``keep_freed_memory``: frames/s and page faults per job
of each, and the ratio of each round's two speeds. A fresh interpreter per
measurement, because the thresholds are the process's and move with what it
freed before; taking turns, because this machine's speed drifts.

    PYTHONPATH=. .venv/bin/python bench/host_memory.py [--rounds 3] [--seconds 3] [--core 0]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_MEASURE = """
import json, os, resource, sys, time
core, seconds, kept = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "kept"
if core >= 0:
    os.sched_setaffinity(0, {core})
from gpu_worker.devices import limit_torch_threads
from gpu_worker.host_memory import keep_freed_memory
limit_torch_threads(1)
applied = keep_freed_memory() if kept else False
from bench.workloads import build_workload
from gpu_worker.analyzers.digits import DigitsAnalyzer
workload = build_workload("digits", "coarse")
items = [workload.item(n) for n in range(32)]
analyzer = DigitsAnalyzer()
analyzer.setup("cpu")
analyzer.predict(items)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
began, calls = time.perf_counter(), 0
while time.perf_counter() - began < seconds:
    analyzer.predict(items)
    calls += 1
elapsed = time.perf_counter() - began
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
jobs = calls * len(items)
print(json.dumps({"applied": applied, "frames_per_s": jobs * workload.items_per_job / elapsed,
                  "faults_per_job": faults / jobs}))
"""


def measure(mode: str, seconds: float, core: int) -> dict:
    # Without the caller's MALLOC_* variables, which would make keep_freed_memory stand aside.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(core), str(seconds), mode], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True, timeout=seconds + 120).stdout
    return json.loads(out.splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time of each process")
    parser.add_argument("--core", type=int, default=0, help="core to run on (-1: any)")
    args = parser.parse_args(argv)
    ratios = []
    for round_number in range(1, args.rounds + 1):
        default = measure("default", args.seconds, args.core)
        kept = measure("kept", args.seconds, args.core)
        if not kept["applied"]:
            print("keep_freed_memory did not apply here (not glibc?)", file=sys.stderr)
            return 1
        ratios.append(kept["frames_per_s"] / default["frames_per_s"])
        print(f"round {round_number}: default {default['frames_per_s']:,.0f} frames/s, "
              f"{default['faults_per_job']:,.0f} page faults a job; kept {kept['frames_per_s']:,.0f} frames/s, "
              f"{kept['faults_per_job']:,.1f} page faults a job; kept/default {ratios[-1]:.2f}", flush=True)
    print(f"kept/default, median of {len(ratios)} rounds: {statistics.median(ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
