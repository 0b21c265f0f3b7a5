"""gpu_worker.host_memory: a model process keeps its freed memory, so passes stop faulting their pages in."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpu_worker.host_memory import keep_freed_memory

ROOT = Path(__file__).resolve().parent.parent

# Runs in a fresh interpreter: malloc's thresholds are the process's, and move with what it freed before.
_FAULTS_PER_JOB = """
import json, resource, sys
import torch
torch.set_num_threads(1)
from gpu_worker.host_memory import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "kept" else None
from bench.workloads import build_workload
from gpu_worker.analyzers.digits import DigitsAnalyzer
workload = build_workload("digits", "coarse")
items = [workload.item(n) for n in range(8)]
analyzer = DigitsAnalyzer()
analyzer.setup("cpu")
analyzer.predict(items)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(15):
    analyzer.predict(items)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"kept": kept, "faults_per_job": faults / (15 * len(items))}))
"""


def _faults_per_job(mode: str) -> dict:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}  # no MALLOC_* variables of the caller's
    out = subprocess.run([sys.executable, "-c", _FAULTS_PER_JOB, mode], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    return json.loads(out.splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc: Linux only")
def test_a_model_process_that_keeps_freed_memory_stops_faulting_its_pages_in():
    kept, default = _faults_per_job("kept"), _faults_per_job("default")
    assert kept["kept"] is True
    # 256-frame digits jobs: about a thousand faults each with malloc's defaults, about one kept.
    assert kept["faults_per_job"] < 20, kept
    assert default["faults_per_job"] > 10 * max(kept["faults_per_job"], 1), (default, kept)


@pytest.mark.parametrize("environ", [
    {"MALLOC_MMAP_THRESHOLD_": "131072"},
    {"MALLOC_TRIM_THRESHOLD_": "0"},
    {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"},
])
def test_an_operators_own_allocator_settings_are_left_alone(environ):
    assert keep_freed_memory(environ) is False


def test_other_preloaded_libraries_do_not_stop_it():
    assert keep_freed_memory({"LD_PRELOAD": "/opt/lib/libfaketime.so"}) is True
