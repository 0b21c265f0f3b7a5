"""bench/submit.py: its arithmetic, and a short run of every phase against a real API (no timing asserted)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.submit import TARGET_B_RATIO, breakdown

ROOT = Path(__file__).resolve().parent.parent


def test_breakdown_splits_what_a_submit_adds_to_the_ceiling():
    # 1e6 / req/s: a 500 µs, p 600 µs, r 550 µs, b 800 µs.
    by = {label: {"rps": 1e6 / us} for label, us in {"a": 500, "p": 600, "r": 550, "b": 800}.items()}
    us = breakdown(by)
    assert us["ceiling"] == pytest.approx(500)
    assert us["parse_validate_render"] == pytest.approx(100)
    assert us["redis_round_trip"] == pytest.approx(50)
    assert us["submit_writes"] == pytest.approx(150)
    assert us["submit_total"] == pytest.approx(300)
    # b/a = 500 / (500 + x) >= 0.75 holds up to x = 500 / 3.
    assert us["allowed_by_target"] == pytest.approx(500 / TARGET_B_RATIO - 500)


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (.ci/run installs it)")
def test_a_short_run_measures_every_phase_and_checks_the_queued_jobs():
    finished = subprocess.run([sys.executable, "bench/submit.py", "--rounds", "1", "--duration", "1",
                               "--warmup", "0.5", "--breakdown", "--json"],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    result = json.loads(finished.stdout)
    assert list(result["phases"]) == ["a", "p", "r", "b", "c"]
    assert all(phase["rps"] > 0 for phase in result["phases"].values())
    assert result["failures"] == []
    assert set(result["breakdown_us"]) == {"ceiling", "parse_validate_render", "redis_round_trip",
                                           "submit_writes", "submit_total", "allowed_by_target"}
    assert result["workers"] and all(m["rss"] > 0 for m in result["workers"].values())
