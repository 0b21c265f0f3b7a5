"""Finding GPUs: which ids get a worker, and when a host meant to have GPUs must not fall back to its CPU.

A stand-in ``nvidia-smi`` (tests/fixtures/nvidia_smi.py), a real executable first on PATH, plays
a GPU machine, a machine whose driver is broken, and one where it hangs; a PATH without it plays a
machine without NVIDIA's tools.
"""

from __future__ import annotations

import logging
import time

import pytest

from gpu_worker.devices import GpuDiscoveryError, discover_gpus, named_gpus
from tests.fixtures.nvidia_smi import HANGS, NO_DEVICE, NO_DRIVER, TWO_GPUS, path_with, runs


@pytest.fixture
def no_smi(tmp_path) -> str:
    """A PATH without nvidia-smi."""
    empty = tmp_path / "empty"
    empty.mkdir()
    return str(empty)


def test_gpus_none_means_cpu_workers_on_purpose_without_asking_nvidia_smi(tmp_path, caplog):
    path = path_with(tmp_path / "bin", TWO_GPUS)
    with caplog.at_level(logging.WARNING, logger="gpuq.devices"):
        for variable in ("GPUQ_GPUS", "CUDA_VISIBLE_DEVICES"):
            for value in ("none", " NONE ", "", "-1"):
                assert discover_gpus({"PATH": path, variable: value}) == []
    assert runs(tmp_path / "bin") == 0
    assert caplog.records == []


def test_without_nvidia_smi_or_named_gpus_cpu_workers_start_with_one_warning(no_smi, caplog):
    with caplog.at_level(logging.WARNING, logger="gpuq.devices"):
        assert discover_gpus({"PATH": no_smi}) == []
    [warning] = caplog.records
    assert warning.levelno == logging.WARNING
    assert "no GPU found" in warning.getMessage() and "GPUQ_GPUS=none" in warning.getMessage()


def test_every_gpu_nvidia_smi_lists_gets_a_worker(tmp_path):
    assert discover_gpus({"PATH": path_with(tmp_path / "bin", TWO_GPUS)}) == ["0", "1"]


def test_a_broken_driver_stops_a_host_that_has_nvidia_smi_with_its_message(tmp_path):
    with pytest.raises(GpuDiscoveryError) as stopped:
        discover_gpus({"PATH": path_with(tmp_path / "bin", NO_DRIVER)})
    message = str(stopped.value)
    assert "GPUs are expected (nvidia-smi is installed at " in message
    assert "failed with status 9: NVIDIA-SMI has failed because it couldn't communicate" in message
    assert message.endswith("set GPUQ_GPUS=none to run CPU workers on purpose")


def test_no_device_listed_stops_the_host(tmp_path):
    with pytest.raises(GpuDiscoveryError, match="failed with status 6: No devices were found"):
        discover_gpus({"PATH": path_with(tmp_path / "bin", NO_DEVICE)})
    empty_list = "#!/bin/sh\nexit 0\n"
    with pytest.raises(GpuDiscoveryError, match="lists no GPU"):
        discover_gpus({"PATH": path_with(tmp_path / "quiet", empty_list)})


def test_a_hanging_nvidia_smi_stops_the_host_after_the_timeout(tmp_path):
    started = time.monotonic()
    with pytest.raises(GpuDiscoveryError, match=r"did not answer within 0.5 s; set GPUQ_GPUS=none"):
        discover_gpus({"PATH": path_with(tmp_path / "bin", HANGS)}, timeout=0.5)
    assert time.monotonic() - started < 10


def test_named_gpus_need_nvidia_smi(no_smi):
    with pytest.raises(GpuDiscoveryError) as stopped:
        discover_gpus({"PATH": no_smi, "GPUQ_GPUS": "0,3"})
    assert str(stopped.value) == ("GPUs are expected (GPUQ_GPUS=0,3) but none can be listed: nvidia-smi is not on "
                                  "PATH; set GPUQ_GPUS=none to run CPU workers on purpose")
    with pytest.raises(GpuDiscoveryError, match=r"\(CUDA_VISIBLE_DEVICES=1\).*not on PATH"):
        discover_gpus({"PATH": no_smi, "CUDA_VISIBLE_DEVICES": "1"})


def test_named_gpus_are_checked_by_index_or_uuid(tmp_path):
    path = path_with(tmp_path / "bin", TWO_GPUS)
    assert discover_gpus({"PATH": path, "GPUQ_GPUS": "1"}) == ["1"]
    uuid = "GPU-77aa0b1c-0000-4000-8000-000000000001"
    assert discover_gpus({"PATH": path, "GPUQ_GPUS": f"0, {uuid}"}) == ["0", uuid]
    assert discover_gpus({"PATH": path, "CUDA_VISIBLE_DEVICES": "GPU-8f2c"}) == ["GPU-8f2c"]  # CUDA takes a prefix
    # GPUQ_GPUS wins over CUDA_VISIBLE_DEVICES, which is then not checked.
    assert discover_gpus({"PATH": path, "GPUQ_GPUS": "0", "CUDA_VISIBLE_DEVICES": "7"}) == ["0"]


def test_a_named_gpu_nvidia_smi_does_not_list_stops_the_host_naming_it(tmp_path):
    path = path_with(tmp_path / "bin", TWO_GPUS)
    with pytest.raises(GpuDiscoveryError) as stopped:
        discover_gpus({"PATH": path, "GPUQ_GPUS": "0,3,GPU-dead"})
    message = str(stopped.value)
    assert message.startswith("GPUQ_GPUS names 3, GPU-dead, which nvidia-smi does not list (it lists 0 GPU-8f2c")
    with pytest.raises(GpuDiscoveryError, match="CUDA_VISIBLE_DEVICES names 2,"):
        discover_gpus({"PATH": path, "CUDA_VISIBLE_DEVICES": "2"})
    with pytest.raises(GpuDiscoveryError, match="names GPU-, which"):  # a prefix of both UUIDs names neither
        discover_gpus({"PATH": path, "GPUQ_GPUS": "GPU-"})


def test_named_gpus_are_read_without_running_anything():
    assert named_gpus({}) is None
    assert named_gpus({"GPUQ_GPUS": " 0, 2 ,", "CUDA_VISIBLE_DEVICES": "5"}) == ("GPUQ_GPUS", ["0", "2"])
    assert named_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == ("CUDA_VISIBLE_DEVICES", [])
