"""bench/gpu_first_session.py: its CPU dry run end to end, and the pieces that judge a GPU run.

Not marked ``gpu``: the dry run is what a machine without CUDA can check of the
script before a GPU session spends its few minutes on it. The throughput check
is left out of the dry run here (it starts a whole stack twice, about 50 s on
the 2-core machine); its reading of bench/throughput.py's JSON is tested below.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench import gpu_first_session as session
from bench.load import LoadResult
from bench.raw_model import RawResult
from bench.throughput_report import Results, as_json
from bench.workloads import build_workload

ROOT = Path(__file__).resolve().parent.parent
SKIPPED_HERE = "throughput-digits"


def test_cpu_dry_run_passes_what_a_cpu_runs_and_says_cuda_is_absent_for_the_rest(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "bench/gpu_first_session.py", "--device", "cpu", "--skip", SKIPPED_HERE,
                           "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for check in session.CHECKS:
        [line] = [line for line in lines if line.split(":")[0].split(" ")[-1] == check.name]
        if check.name == SKIPPED_HERE:
            assert line == f"SKIP {check.name}: skipped on request (--skip)"
        elif check.gpu_only:
            assert line == f"SKIP {check.name}: no CUDA device: skipped"
        else:
            assert line.startswith(f"PASS {check.name}: "), line
            assert "no CUDA device: skipped" in line, line  # the part of it that needs a GPU says so
    skips = sum(check.gpu_only or check.name == SKIPPED_HERE for check in session.CHECKS)
    assert lines[-1].startswith(f"summary: {len(session.CHECKS) - skips} PASS, 0 FAIL, {skips} SKIP"), lines[-1]

    written = json.loads((tmp_path / "verdicts.json").read_text())
    assert written["device"] == "cpu"
    assert [(c["name"], c["state"]) for c in written["checks"]] == [
        (check.name, "PASS" if check.name != SKIPPED_HERE and not check.gpu_only else "SKIP")
        for check in session.CHECKS]
    precision = next(c for c in written["checks"] if c["name"] == "mixed-batch-precision")["figures"]["cpu"]
    assert precision["frames"] > 400 and precision["texts"] > 100
    assert (tmp_path / "verdicts.txt").read_text().splitlines()[-1] == written["summary"]


def test_a_forked_child_reports_its_value_its_error_its_death_or_its_silence():
    assert session.in_forked_child(lambda: {"digit": 7}, 30) == {"ok": True, "value": {"digit": 7}}
    raised = session.in_forked_child(lambda: int("seven"), 30)
    assert not raised["ok"] and raised["error"].startswith("ValueError: invalid literal")
    died = session.in_forked_child(lambda: os._exit(3), 30)
    assert not died["ok"] and "died without answering" in died["error"]
    started = time.monotonic()
    silent = session.in_forked_child(lambda: time.sleep(60), 0.5)
    assert not silent["ok"] and "did not answer within 0.5 s" in silent["error"]
    assert time.monotonic() - started < 10


def test_a_command_past_its_limit_is_stopped_and_reported_as_such(tmp_path):
    started = time.monotonic()
    code = session.run_bounded(["sleep", "60"], 0.5, tmp_path / "log", dict(os.environ))
    assert code is None and time.monotonic() - started < 10
    assert session.run_bounded(["sh", "-c", "echo said; exit 4"], 30, tmp_path / "log", dict(os.environ)) == 4
    assert (tmp_path / "log").read_text() == "said\n"


def _image(digit: int, probabilities: list[float]) -> dict:
    return {"digit": digit, "confidence": max(probabilities), "probabilities": probabilities}


def _split(first: float) -> list[float]:
    """Probabilities of digit 0 and 1 only."""
    return [first, 1 - first] + [0.0] * 8


def test_digits_comparison_allows_a_flip_only_where_the_cpu_was_near_a_tie():
    reference = [_image(0, _split(0.505)), _image(0, _split(0.9)), {"frames": [{"digit": 3, "confidence": 0.8}]}]
    margins = [[0.01], [0.8], [0.7]]
    close = [_image(1, _split(0.49)), _image(0, _split(0.89)), {"frames": [{"digit": 3, "confidence": 0.805}]}]
    found = session._compare_digits(close, reference, margins, tolerance=0.02)
    assert found["near_ties"] == 1 and found["flip_count"] == 0
    assert abs(found["worst_probability"] - 0.01) < 1e-9

    sure_flip = [_image(0, _split(0.505)), _image(1, _split(0.3)), reference[2]]
    found = session._compare_digits(sure_flip, reference, margins, tolerance=0.02)
    assert found["flip_count"] == 1 and "job 1 frame 0: 1 against the CPU's 0" in found["flips"][0]
    problems = session._precision_problems("float16", {**found, "least_cosine": 0.99, "amp": {"digits": "None"}},
                                           session.TOLERANCES["float16"])
    assert len(problems) == 3  # float32 where float16 was asked, the sure flip, the embed vector's cosine


def test_embed_comparison_finds_the_least_cosine_over_single_texts_and_lists():
    reference = [{"embedding": [1.0, 0.0]}, {"embeddings": [[0.0, 1.0], [0.6, 0.8]]}]
    got = [{"embedding": [1.0, 0.0]}, {"embeddings": [[0.0, 1.0], [0.8, 0.6]]}]
    least, texts = session._least_cosine(got, reference)
    assert texts == 3 and abs(least - 0.96) < 1e-12


def _load(jobs: int, items: int) -> LoadResult:
    return LoadResult(items_per_s=items / 2.0, jobs=jobs, items=items, window_s=2.0, mean_batch_size=4.0,
                      predict_share=0.9, latency_p50_ms=5.0, latency_p99_ms=9.0)


def test_throughput_figures_are_read_from_what_bench_throughput_writes():
    results = Results(workload=build_workload("digits", "coarse"), device="cuda", clients=32, cores=16)
    results.raw = RawResult(items_per_s=100_000.0, items_per_call=2048, ms_per_call=20.0, ms_per_job=2.5, calls=50)
    results.raw_beside_on = results.raw_beside_off = results.raw
    results.batching_on, results.batching_off = _load(300, 76_800), _load(100, 25_600)
    figures = session._throughput_figures(json.loads(json.dumps(as_json(results), default=str)))
    assert figures["unit"] == "frames" and figures["on_jobs_per_s"] == 150.0 and figures["off_jobs_per_s"] == 50.0
    assert abs(figures["b_over_a"] - 0.384) < 1e-9 and abs(figures["b_over_c"] - 3.0) < 1e-9
    text = session._throughput_text("coarse", figures)
    assert text == ("coarse: (a) 100,000 frames/s, (b) 150.0 jobs/s (38,400 frames/s), (c) 50.0 jobs/s, "
                    "b/a 0.38, b/c 3.00")


def test_nvml_and_torch_uuids_compare_by_their_hex_digits():
    nvml, torch_form = "GPU-58b2c0a1-7d3e-4f21-9a0b-1c2d3e4f5a6b", "58B2C0A1-7D3E-4F21-9A0B-1C2D3E4F5A6B"
    assert session._uuid_digits(nvml) == session._uuid_digits(torch_form) == "58b2c0a17d3e4f219a0b1c2d3e4f5a6b"
    assert session._uuid_digits(nvml) != session._uuid_digits(torch_form.replace("58", "59"))
