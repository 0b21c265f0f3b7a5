"""Telling a broken GPU from a failed job, and never retrying on a broken one."""

from __future__ import annotations

import pytest
import torch

from gpu_worker.analyzer import AnalyzerError, Item
from gpu_worker.device_faults import DeviceFault, is_device_fault
from gpu_worker.device_health import DeviceHealth
from gpu_worker.isolation import predict_isolating
from tests.fixtures.device_faults import DEVICE_ASSERT, BrokenGpu


@pytest.mark.parametrize("error", [
    torch.AcceleratorError(DEVICE_ASSERT),
    torch.AcceleratorError("CUDA error: an illegal memory access was encountered"),
    RuntimeError("CUDA error: unspecified launch failure"),
    RuntimeError("CUDA error: uncorrectable ECC error encountered"),
    RuntimeError("CUDA error: CUDA-capable device(s) is/are busy or unavailable"),
    RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm( handle, opa, opb, m, n, k, ...)`"),
    RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"),
], ids=lambda e: str(e)[:40])
def test_sticky_cuda_errors_are_device_faults(error):
    assert is_device_fault(error)


def test_a_wrapped_sticky_error_is_found_through_its_cause():
    try:
        try:
            raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered")
        except RuntimeError as cuda:
            raise AnalyzerError("the model failed") from cuda
    except AnalyzerError as error:
        assert is_device_fault(error)


@pytest.mark.parametrize("error", [
    ValueError("illegal memory access pattern in the input"),  # the words, but not from CUDA
    AnalyzerError("the image is unreadable", code="invalid_input"),
    RuntimeError("Expected all tensors to be on the same device, but found at least two devices"),
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
], ids=lambda e: str(e)[:40])
def test_a_job_s_own_failures_are_not_device_faults(error):
    assert not is_device_fault(error)


def test_a_batch_whose_gpu_broke_is_not_split_or_retried():
    analyzer = BrokenGpu()
    calls = []
    original = analyzer.predict
    analyzer.predict = lambda batch: calls.append(len(batch)) or original(batch)
    batch = [Item(job_id=f"j{i}", data={"n": i}, media_type=None, params={"break_gpu": i == 3}) for i in range(8)]
    try:
        with pytest.raises(DeviceFault, match="device-side assert triggered") as raised:
            predict_isolating(analyzer, batch)
    finally:
        BrokenGpu.broken = False
    # One attempt: splitting on a broken device would fail every half (93 failed passes for 48 jobs before).
    assert calls == [8]
    assert isinstance(raised.value.__cause__, torch.AcceleratorError)


def test_the_fault_count_outlives_the_process_and_resets_after_a_batch(tmp_path):
    health = DeviceHealth.beside(tmp_path / "gpu0.ready")
    assert health.faults_in_a_row() == 0
    assert health.record_fault("CUDA error: device-side assert triggered") == 1
    assert DeviceHealth.beside(tmp_path / "gpu0.ready").record_fault("again") == 2  # a fresh process reads it
    health.record_batch_run()
    assert health.faults_in_a_row() == 0
    health.record_stop("its GPU failed 3 times in a row")
    assert health.stopped_because() == "its GPU failed 3 times in a row" and health.faults_in_a_row() == 0


def test_without_the_launcher_the_count_lives_in_the_temporary_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    health = DeviceHealth.for_worker("gpu0@host/a", {})
    assert health.path.parent == tmp_path and "/" not in health.path.name


def test_a_broken_context_that_cannot_even_empty_its_cache_still_gives_a_device_fault(monkeypatch):
    # On a GPU every CUDA call after a sticky error fails, emptying the allocator's cache too.
    def empty_cache():
        raise torch.AcceleratorError(DEVICE_ASSERT)

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", empty_cache)
    analyzer = BrokenGpu()
    BrokenGpu.broken = True
    try:
        with pytest.raises(DeviceFault):
            predict_isolating(analyzer, [Item(job_id="j", data={}, media_type=None)])
    finally:
        BrokenGpu.broken = False


def test_a_device_fault_returned_in_an_item_s_slot_is_a_device_fault_too():
    class CatchesItsErrors(BrokenGpu):
        def predict(self, batch):
            return [torch.AcceleratorError(DEVICE_ASSERT) if item.data.get("bad") else {} for item in batch]

    batch = [Item(job_id="a", data={}, media_type=None), Item(job_id="b", data={"bad": True}, media_type=None)]
    with pytest.raises(DeviceFault, match="device-side assert"):
        predict_isolating(CatchesItsErrors(), batch)
