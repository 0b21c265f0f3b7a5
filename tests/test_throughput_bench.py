"""bench/throughput.py: its verdicts, and a short run of every phase through a real stack (no timing asserted)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.core_layout import CoreLayout
from bench.load import LoadResult, combine_loads
from bench.raw_model import RawResult, combine
from bench.stats import percentile
from bench.throughput_report import MET, NOT_MEASURED, NOT_MET, Results, verdicts
from bench.workloads import build_workload

ROOT = Path(__file__).resolve().parent.parent


def _load(items_per_s: float) -> LoadResult:
    return LoadResult(items_per_s=items_per_s, jobs=10, items=10, window_s=1.0, mean_batch_size=1.0, predict_share=0.5,
                      latency_p50_ms=1.0, latency_p99_ms=2.0)


def _results(kind: str, device: str, raw_ms_per_job: float = 10.0) -> Results:
    results = Results(workload=build_workload("digits", kind), device=device, clients=4, cores=2)
    results.raw = RawResult(items_per_s=1000.0, items_per_call=64, ms_per_call=64.0, ms_per_job=raw_ms_per_job,
                            calls=10)
    results.batching_on, results.batching_off = _load(950.0), _load(100.0)
    return results


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile([5.0], 99) == 5.0


def test_gpu_targets_on_a_cpu_run_show_the_cpu_figure_but_no_verdict():
    by_target = {v.target: v for v in verdicts(_results("single", "cpu"))}
    gain = by_target["batching / no batching, single-item jobs, GPU >= 3"]
    assert gain.state == NOT_MEASURED and gain.figure == "9.50 on the CPU"
    assert by_target["end-to-end / raw, coarse jobs >= 0.9"].state == NOT_MEASURED


def test_gpu_targets_are_judged_on_a_gpu_run():
    by_target = {v.target: v for v in verdicts(_results("single", "cuda"))}
    assert by_target["end-to-end / raw, single-item jobs, batching on, GPU >= 0.6"].state == MET
    assert by_target["batching / no batching, single-item jobs, GPU >= 3"].state == MET
    assert by_target["no-op job overhead p50 <= 2 x plain Celery round trip"].state == NOT_MEASURED


def test_coarse_ratio_is_judged_only_for_jobs_with_enough_model_time():
    coarse = {v.target: v for v in verdicts(_results("coarse", "cpu"))}["end-to-end / raw, coarse jobs >= 0.9"]
    assert coarse.state == MET
    results = _results("coarse", "cpu", raw_ms_per_job=1.0)
    results.batching_on = _load(500.0)
    too_fine = {v.target: v for v in verdicts(results)}["end-to-end / raw, coarse jobs >= 0.9"]
    assert too_fine.state == NOT_MEASURED and "under the 5 ms" in too_fine.note
    results.raw = RawResult(items_per_s=1000.0, items_per_call=256, ms_per_call=9.0, ms_per_job=9.0, calls=5)
    assert {v.target: v for v in verdicts(results)}["end-to-end / raw, coarse jobs >= 0.9"].state == NOT_MET


def test_raw_windows_combine_into_items_over_seconds():
    windows = [RawResult(items_per_s=1000.0, items_per_call=64, ms_per_call=64.0, ms_per_job=64.0, calls=15,
                         cpu={"bench process": 1.0}, elapsed_s=1.0, jobs_per_call=1),
               RawResult(items_per_s=2000.0, items_per_call=64, ms_per_call=32.0, ms_per_job=32.0, calls=94,
                         cpu={"bench process": 0.6}, elapsed_s=3.0, jobs_per_call=1)]
    both = combine(windows)
    assert both.items_per_s == pytest.approx(1750.0) and both.calls == 109 and both.elapsed_s == 4.0
    assert both.ms_per_call == pytest.approx(4000 / 109) and both.cpu["bench process"] == pytest.approx(0.7)


def test_load_windows_combine_their_jobs_latencies_and_shares():
    first = LoadResult(items_per_s=10.0, jobs=10, items=10, window_s=1.0, mean_batch_size=2.0, predict_share=0.5,
                       latency_p50_ms=1.0, latency_p99_ms=1.0, errors=["one"], cpu={"redis": 0.2},
                       latencies_ms=[1.0] * 10)
    second = LoadResult(items_per_s=30.0, jobs=30, items=30, window_s=1.0, mean_batch_size=4.0, predict_share=0.9,
                        latency_p50_ms=5.0, latency_p99_ms=9.0, cpu={"redis": 0.4},
                        latencies_ms=[5.0] * 29 + [9.0])
    both = combine_loads([first, second])
    assert both.items_per_s == 20.0 and both.jobs == 40 and both.mean_batch_size == pytest.approx(3.5)
    assert both.predict_share == pytest.approx(0.7) and both.cpu["redis"] == pytest.approx(0.3)
    assert both.latency_p50_ms == 5.0 and both.latency_p99_ms == 9.0 and both.errors == ["one"]


def test_batching_gain_sets_each_phase_against_the_raw_windows_beside_it():
    results = _results("single", "cuda")
    results.raw_beside_on = RawResult(items_per_s=1000.0, items_per_call=64, ms_per_call=64.0, ms_per_job=1.0,
                                      calls=10)
    results.raw_beside_off = RawResult(items_per_s=500.0, items_per_call=64, ms_per_call=128.0, ms_per_job=2.0,
                                       calls=10)
    results.batching_on, results.batching_off = _load(900.0), _load(150.0)
    # The machine ran at half speed during (c): 900/150 would say 6, the drift included.
    assert results.batching_gain == pytest.approx(3.0)
    assert results.e2e_over_raw == pytest.approx(0.9)


def test_a_cpu_run_gives_the_model_a_core_of_its_own_unless_told_to_share():
    cores = sorted(os.sched_getaffinity(0))
    layout = CoreLayout.choose("cpu", shared=False)
    if len(cores) < 2:
        assert not layout.reserved
        return
    assert layout.model == {cores[0]} and layout.host == set(cores[1:])
    assert layout.worker_env() == {"GPUQ_WORKER_CPUS": str(cores[0])}
    assert "model on core" in layout.describe()
    for shared in (CoreLayout.choose("cpu", shared=True), CoreLayout.choose("cuda", shared=False)):
        assert not shared.reserved and shared.worker_env() == {}
    before = os.sched_getaffinity(0)
    try:
        layout.use_host_cores()
        with layout.on_model_cores():
            assert os.sched_getaffinity(0) == {cores[0]}
        assert os.sched_getaffinity(0) == set(cores[1:])
    finally:
        os.sched_setaffinity(0, before)


@pytest.mark.slow
def test_a_short_noop_run_measures_every_phase_and_cleans_up(tmp_path):
    out = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUQ_")}
    env["PYTHONPATH"] = str(ROOT)
    run = subprocess.run(
        [sys.executable, "bench/throughput.py", "--analyzer", "noop", "--seconds", "2", "--rounds", "2",
         "--warmup", "0.5", "--clients", "2", "--overhead-jobs", "20", "--drain-jobs", "50", "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "targets:" in run.stdout
    data = json.loads(out.read_text())
    assert data["errors"] == []
    assert data["batching_on"]["jobs"] > 0 and data["batching_off"]["jobs"] > 0
    assert len(data["round_ratios_on"]) == len(data["round_ratios_off"]) == 2
    assert data["raw_beside_on"]["calls"] > 0 and data["raw_beside_off"]["calls"] > 0
    assert ("model on core" in data["layout"]) == (len(os.sched_getaffinity(0)) >= 2)
    assert data["overhead"]["jobs"] == 20 and data["celery"]["p50"] > 0
    assert [(d["batching"], d["succeeded"]) for d in data["drains"]] == [(True, 50), (False, 50)]
    assert len(data["targets"]) == 5
    [redis_url] = re.findall(r"Redis (redis://\S+),", run.stdout)
    assert _processes_using(redis_url) == [], "the benchmark left processes of its stack running"


def _processes_using(redis_url: str) -> list[int]:
    """Processes whose environment or command line names this Redis: the stack's own."""
    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes()
            command = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"GPUQ_REDIS_URL={redis_url}".encode() in environ.split(b"\0") or (
                b"redis-server" in command[0] and port.encode() in command):
            found.append(int(proc.name))
    return found
