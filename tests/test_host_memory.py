"""gpu_worker.host_memory: a model process keeps its freed memory, so passes stop faulting their pages in."""

from __future__ import annotations

import sys

import pytest

from bench.host_memory import measure
from gpu_worker.host_memory import keep_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc: Linux only")
def test_a_model_process_that_keeps_freed_memory_stops_faulting_its_pages_in():
    # bench/host_memory.py's measurement: digits on coarse jobs, each setting in a fresh interpreter.
    kept, default = measure("kept", 1.0, core=-1), measure("default", 1.0, core=-1)
    assert kept["applied"] is True and default["applied"] is False
    # 256-frame digits jobs: about a thousand faults each with malloc's defaults, a few kept.
    assert kept["faults_per_job"] < 50, kept
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
