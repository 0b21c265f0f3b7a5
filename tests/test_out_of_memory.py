"""Running out of device memory, answered by memory: smaller passes first, then smaller batches.

The fixture analyzer raises torch's own CUDA out-of-memory error above a pass size, from a
frame that holds the failed pass's tensor, as CUDA's allocator does.
"""

from __future__ import annotations

import gc

import pytest
import requests
import torch

from gpu_worker.analyzer import Item
from gpu_worker.device_faults import is_device_fault, is_out_of_memory
from gpu_worker.isolation import predict_isolating
from tests.fixtures.device_faults import PASS_FITS, MemoryBound
from tests.stack import Stack, wait_until


def numbers(count: int) -> list[Item]:
    return [Item(job_id=f"job{i}", data=i, media_type=None) for i in range(count)]


@pytest.fixture(autouse=True)
def no_automatic_collection():
    # Reference counting alone must free a failed pass: a cycle left to the collector keeps the
    # device's memory until it happens to run, which is what the test must catch.
    gc.collect()
    gc.disable()
    yield
    gc.enable()


def test_the_pass_size_is_halved_until_it_fits_and_every_job_gets_its_result():
    analyzer = MemoryBound(fits=4)
    assert predict_isolating(analyzer, numbers(32)) == [2 * i for i in range(32)]
    assert analyzer.items_per_pass == 4
    # 16 fails, 8 fails, then eight passes of 4: no batch was split by jobs.
    assert analyzer.passes == [16, 8, *[4] * 8]


def test_the_smaller_pass_size_is_kept_for_the_next_batches():
    analyzer = MemoryBound(fits=4)
    predict_isolating(analyzer, numbers(8))
    analyzer.passes.clear()
    assert predict_isolating(analyzer, numbers(12)) == [2 * i for i in range(12)]
    assert analyzer.passes == [4, 4, 4]  # no failed pass: the size that worked is remembered


def test_no_tensor_of_a_failed_pass_is_alive_when_the_next_attempt_starts():
    analyzer = MemoryBound(fits=1)
    predict_isolating(analyzer, numbers(16))
    assert max(analyzer.alive_at_start) == 0
    assert len(analyzer.alive_at_start) == 5  # passes of 16, 8, 4, 2, then 1


def test_no_tensor_of_a_failed_batch_is_alive_when_its_halves_run():
    class Whole(MemoryBound):
        items_per_pass = None

        def predict(self, batch):
            self.alive_at_start.append(sum(ref() is not None for ref in self._watched))
            return self._pass(batch)

    analyzer = Whole(fits=1)
    assert predict_isolating(analyzer, numbers(16)) == [2 * i for i in range(16)]
    assert len(analyzer.alive_at_start) == 31 and max(analyzer.alive_at_start) == 0


def test_a_job_too_large_even_in_passes_of_one_fails_alone_and_the_others_run():
    class OneTooLarge(MemoryBound):
        def _pass(self, items):
            if any(item.data == 5 for item in items):
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 90.00 GiB.")
            return super()._pass(items)

    analyzer = OneTooLarge(fits=64)
    outputs = predict_isolating(analyzer, numbers(8))
    assert analyzer.passes[-1] == 1  # halved down to one item before any job was failed
    assert analyzer.items_per_pass == 16  # then back: the job, not the passes, was too large
    assert [o for i, o in enumerate(outputs) if i != 5] == [2 * i for i in range(8) if i != 5]
    assert is_out_of_memory(outputs[5]) and "90.00 GiB" in str(outputs[5])
    assert outputs[5].__traceback__ is not None  # still names where it happened, for the log


def test_an_analyzer_without_passes_is_split_by_jobs_as_before():
    class Whole(MemoryBound):
        items_per_pass = None

        def predict(self, batch):
            return self._pass(batch)

    analyzer = Whole(fits=2)
    assert predict_isolating(analyzer, numbers(8)) == [2 * i for i in range(8)]
    assert analyzer.passes == [8, 4, 2, 2, 4, 2, 2]


def test_out_of_memory_is_never_taken_for_a_broken_gpu():
    error = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert is_out_of_memory(error) and not is_device_fault(error)
    launch = torch.AcceleratorError("CUDA error: out of memory")
    assert is_out_of_memory(launch) and not is_device_fault(launch)


def test_a_worker_falls_back_to_passes_that_fit_and_reports_their_size(tmp_path):
    stack = Stack(tmp_path, analyzers="tests.fixtures.device_faults:MemoryBound", **{PASS_FITS: "4"}).start()
    try:
        jobs = [stack.submit("memorybound", input=n) for n in range(12)]
        for n, job in enumerate(jobs):
            done = stack.wait(job["id"])
            assert done["status"] == "succeeded" and done["result"] == 2 * n and done["attempts"] == 1, done
        assert "passes of 4 from now on" in stack.workers.output()
        gauge = 'gpuq_analyzer_pass_size{analyzer="memorybound",worker="cpu0@'
        wait_until(lambda: any(line.startswith(gauge) and line.endswith(" 4.0")
                               for line in requests.get(f"{stack.url}/metrics", timeout=10).text.splitlines()),
                   10, "the pass size in the metrics")
    finally:
        stack.stop()
