"""gpu_worker.switch_interval: the model process's threads hand the GIL over sooner than CPython's default."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gpu_worker.switch_interval import SWITCH_INTERVAL, hand_back_the_gil_sooner


def test_it_sets_the_interval_and_says_what_it_was():
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        assert hand_back_the_gil_sooner() == 0.005
        assert sys.getswitchinterval() == SWITCH_INTERVAL < 0.005
    finally:
        sys.setswitchinterval(before)


def test_the_bench_measures_each_mode_beside_the_other():
    # In its own process: the bench pins itself to a core and sets torch's threads.
    root = Path(__file__).resolve().parent.parent
    command = [sys.executable, "bench/switch_interval.py", "--rounds", "1", "--seconds", "0.2", "--jobs", "2"]
    out = subprocess.run(command, cwd=root, capture_output=True, text=True, check=True, timeout=300).stdout
    assert f"against {SWITCH_INTERVAL * 1000:g} ms" in out
    assert "round 1: alone" in out and "; default " in out and "; shortened " in out
    assert "shortened/default, median of 1 rounds:" in out
