"""The drain of ``bench/drain.py``, this checkout against another, in turns, in one run.

A change to what a worker does per job shows in how fast one worker empties a
queue of 5,000 no-op jobs. This machine's speed drifts from one minute to the
next, so the two versions take turns, each on a stack of its own, and the
medians and their ratio are printed. The other version is any checkout, e.g. a
worktree of the commit before: ``git worktree add /tmp/before HEAD~1``.

    .venv/bin/python bench/drain_versions.py /tmp/before [--rounds 3] [--jobs 5000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Run in the version's own checkout, so that its stack runs its own code.
_ONE_DRAIN = r'''
import json, os, sys, tempfile
from pathlib import Path
sys.path.insert(0, ".")
from bench.bench_stack import BenchStack
from bench.drain import drain
with tempfile.TemporaryDirectory() as work:
    stack = BenchStack(Path(work), "cpu")
    os.environ["GPUQ_REDIS_URL"] = stack.redis_url
    try:
        result = drain(stack, int(sys.argv[1]), batching=True)
        print(json.dumps({"jobs_per_s": result.jobs_per_s, "succeeded": result.succeeded}))
    finally:
        stack.close()
'''


def drain_in(checkout: Path, jobs: int) -> float:
    done = subprocess.run([sys.executable, "-c", _ONE_DRAIN, str(jobs)], cwd=checkout, capture_output=True,
                          text=True, timeout=900, env={"PYTHONPATH": str(checkout), "PATH": "/usr/bin:/bin"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"the drain in {checkout} failed:\n{done.stderr[-3000:]}")
    result = json.loads(lines[-1])
    if result["succeeded"] != jobs:
        raise RuntimeError(f"the drain in {checkout}: {result['succeeded']} of {jobs} succeeded")
    return result["jobs_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("other", type=Path, help="the checkout to compare this one with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=5000)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"other": [], "this": []}
    for round_ in range(1, args.rounds + 1):
        for name, checkout in (("other", args.other.resolve()), ("this", ROOT)):
            rates[name].append(drain_in(checkout, args.jobs))
            print(f"round {round_}: {name} {rates[name][-1]:,.0f} jobs/s", flush=True)
    other, this = statistics.median(rates["other"]), statistics.median(rates["this"])
    print(f"drain, batching on, {args.jobs} no-op jobs: this {this:,.0f} jobs/s, other {other:,.0f} "
          f"(medians of {args.rounds}); this / other {this / other:.2f}")


if __name__ == "__main__":
    main()
