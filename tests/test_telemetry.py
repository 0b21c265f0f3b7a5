"""GPU telemetry: a probe per GPU worker, silent where NVML is missing, real numbers where a GPU exists."""

from __future__ import annotations

import pytest

from gpu_worker.telemetry import GpuProbe


def test_only_gpu_workers_get_a_probe_for_their_own_gpu():
    assert GpuProbe.for_worker("cpu", {"CUDA_VISIBLE_DEVICES": ""}) is None
    assert GpuProbe.for_worker("cuda:0", {"CUDA_VISIBLE_DEVICES": "3"}).device_id == "3"
    assert GpuProbe.for_worker("cuda:0", {"CUDA_VISIBLE_DEVICES": "GPU-8f2c"}).device_id == "GPU-8f2c"


def test_a_probe_without_nvml_reports_nothing_and_warns_once(caplog):
    probe = GpuProbe("99")  # no such GPU, or no NVML at all
    assert probe.sample() is None
    assert probe.sample() is None
    assert caplog.text.count("GPU telemetry for device 99 is unavailable") == 1


@pytest.mark.gpu
def test_a_probe_reads_a_real_gpu():
    sample = GpuProbe("0").sample()
    assert sample is not None, "NVML could not read GPU 0"
    assert sample["memory_total_bytes"] > 0 and 0 <= sample["memory_used_bytes"] <= sample["memory_total_bytes"]
    assert 0.0 <= sample["utilization"] <= 1.0
