"""Telling a broken GPU from a failed job, and never retrying on a broken one."""

from __future__ import annotations

import pytest
import torch

from gpu_worker import isolation
from gpu_worker.analyzer import AnalyzerError, Item
from gpu_worker.device_faults import DeviceFault, context_broken, is_device_fault
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


def test_a_sticky_error_met_while_handling_an_out_of_memory_error_is_a_device_fault():
    try:
        try:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        except RuntimeError:
            raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered") from None
    except RuntimeError as error:
        error.__context__ = torch.cuda.OutOfMemoryError("CUDA out of memory.")
        assert is_device_fault(error)


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


def test_the_context_is_asked_whether_it_is_broken(monkeypatch):
    assert context_broken()  # no CUDA context here: a sticky-looking error is taken at its word
    # A context that cannot run a tiny operation is broken (on this CPU build every CUDA call fails).
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert context_broken()


def test_a_cuda_error_the_context_survived_is_the_batch_s_own_failure(monkeypatch):
    # "invalid configuration argument" leaves the context usable: split and failed as any other error.
    monkeypatch.setattr(isolation, "context_broken", lambda: False)

    class BadLaunch(BrokenGpu):
        def predict(self, batch):
            if any(item.data.get("bad") for item in batch):
                raise torch.AcceleratorError("CUDA error: invalid configuration argument")
            return [{} for _ in batch]

    batch = [Item(job_id="a", data={}, media_type=None), Item(job_id="b", data={"bad": True}, media_type=None)]
    good, bad = predict_isolating(BadLaunch(), batch)
    assert good == {} and isinstance(bad, torch.AcceleratorError)


def test_a_device_fault_returned_in_an_item_s_slot_is_a_device_fault_too():
    class CatchesItsErrors(BrokenGpu):
        def predict(self, batch):
            return [torch.AcceleratorError(DEVICE_ASSERT) if item.data.get("bad") else {} for item in batch]

    batch = [Item(job_id="a", data={}, media_type=None), Item(job_id="b", data={"bad": True}, media_type=None)]
    with pytest.raises(DeviceFault, match="device-side assert"):
        predict_isolating(CatchesItsErrors(), batch)
