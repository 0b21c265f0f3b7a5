"""``gpu_worker.inference`` on the CPU: precision choice, the one-ahead pipeline, staging, model state.

What needs CUDA (autocast results, pinned copies) is in tests/test_gpu_inference.py.
"""

from __future__ import annotations

import threading

import pytest
import torch

from gpu_worker.analyzer import Analyzer, OutOfMemory
from gpu_worker.inference import (
    PRECISION_ENV,
    HostStaging,
    _new_buffer,
    amp_dtype,
    autocast,
    one_ahead,
    ready_for_inference,
    run_or_out_of_memory,
)

CPU, CUDA = torch.device("cpu"), torch.device("cuda:0")  # naming a CUDA device does not touch CUDA


def test_a_cpu_always_runs_float32():
    for allowed in (None, "float16", "bfloat16"):
        assert amp_dtype(CPU, allowed, {}) is None


def test_a_cpu_runs_float32_whatever_the_operator_asks():
    for precision in ("auto", "reduced", "fp32"):
        assert amp_dtype(CPU, "float16", {PRECISION_ENV: precision}, capability=(9, 0)) is None


def test_cuda_autocasts_only_where_the_analyzer_allows_and_the_operator_does_not_forbid():
    assert amp_dtype(CUDA, "float16", {}, capability=(8, 0)) is torch.float16
    assert amp_dtype(CUDA, "float16", {PRECISION_ENV: "auto"}, capability=(8, 0)) is torch.float16
    assert amp_dtype(CUDA, None, {}, capability=(8, 0)) is None
    assert amp_dtype(CUDA, None, {PRECISION_ENV: "reduced"}, capability=(8, 0)) is None
    assert amp_dtype(CUDA, "float16", {PRECISION_ENV: "fp32"}, capability=(8, 0)) is None
    assert amp_dtype(CUDA, "bfloat16", {PRECISION_ENV: " FP32 "}, capability=(9, 0)) is None


def test_auto_uses_half_precision_only_on_cards_that_compute_it_faster_than_float32():
    assert amp_dtype(CUDA, "float16", {}, capability=(6, 1)) is None  # Pascal: no tensor cores
    assert amp_dtype(CUDA, "float16", {}, capability=(7, 0)) is torch.float16  # Volta: tensor cores
    assert amp_dtype(CUDA, "bfloat16", {}, capability=(7, 5)) is None  # Turing: bfloat16 emulated
    assert amp_dtype(CUDA, "bfloat16", {}, capability=(8, 0)) is torch.bfloat16  # Ampere


def test_reduced_uses_the_analyzers_dtype_on_any_cuda_card():
    assert amp_dtype(CUDA, "float16", {PRECISION_ENV: "reduced"}, capability=(6, 1)) is torch.float16
    assert amp_dtype(CUDA, "bfloat16", {PRECISION_ENV: " Reduced "}, capability=(7, 5)) is torch.bfloat16


def test_malformed_precision_settings_stop_the_worker():
    with pytest.raises(ValueError, match="GPUQ_PRECISION='half'"):
        amp_dtype(CPU, "float16", {PRECISION_ENV: "half"})
    with pytest.raises(ValueError, match="GPUQ_PRECISION='fp16': expected one of auto, reduced, fp32"):
        amp_dtype(CUDA, "float16", {PRECISION_ENV: "fp16"}, capability=(9, 0))
    with pytest.raises(ValueError, match="autocast_dtype='fp8'"):
        amp_dtype(CUDA, "fp8", {})


def test_analyzers_allow_float32_only_unless_they_say_otherwise():
    assert Analyzer.autocast_dtype is None


def test_no_autocast_is_a_no_op_and_cpu_autocast_changes_the_compute_dtype():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast(CPU, None):
        assert (a @ b).dtype is torch.float32
    with autocast(CPU, torch.bfloat16):
        assert (a @ b).dtype is torch.bfloat16


def test_one_ahead_prepares_the_next_pass_before_finishing_the_current_one_and_hands_it_over_after():
    log: list[str] = []

    def prepared():
        for k in range(3):
            log.append(f"prepare {k}")
            yield k

    def launch(k: int) -> int:
        log.append(f"launch {k}")
        return k * 10

    def finish(k: int) -> int:
        log.append(f"finish {k // 10}")
        return k + 1

    used = []
    for result in one_ahead(prepared(), launch, finish):
        log.append(f"use {result}")  # the caller's work on a pass's output (results, progress)
        used.append(result)
    assert used == [1, 11, 21]
    # Pass k is handed over only once pass k+1 is launched: the device runs while the caller works.
    assert log == ["prepare 0", "launch 0", "prepare 1", "finish 0", "launch 1", "use 1",
                   "prepare 2", "finish 1", "launch 2", "use 11", "finish 2", "use 21"]


def test_one_ahead_of_nothing_and_of_one():
    assert list(one_ahead([], lambda x: x, lambda x: x)) == []
    assert list(one_ahead([2], lambda x: x * 3, lambda x: x + 1)) == [7]


def test_one_ahead_gives_the_same_results_as_running_each_pass_in_turn():
    model = ready_for_inference(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.5),
                                                    torch.nn.Linear(16, 3)), CPU)
    chunks = [torch.randn(n, 8) for n in (5, 1, 7, 3)]
    with torch.inference_mode():
        sequential = [model(c) for c in chunks]
        piped = list(one_ahead(iter(chunks), model, lambda t: t.clone()))
    assert all(torch.equal(s, p) for s, p in zip(sequential, piped, strict=True))


def test_a_model_made_ready_runs_in_eval_mode_without_gradients():
    model = ready_for_inference(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.9)), CPU)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x = torch.ones(2, 4)
    assert torch.equal(model(x), model(x))  # dropout off


def test_staging_on_the_cpu_is_a_plain_copy():
    x = torch.arange(12).reshape(3, 4)
    staged = HostStaging(CPU).to_device(x, "ids")
    assert torch.equal(staged, x) and staged.device == CPU


def test_a_staging_buffer_made_in_inference_mode_can_be_reused_outside_it_and_from_another_thread():
    # CPU-only torch cannot pin memory; whether a buffer is an inference tensor does not depend on pinning.
    with torch.inference_mode():
        buffer = _new_buffer(6, torch.int64, pin_memory=False)
    assert not buffer.is_inference()
    assert buffer.shape == (6,) and buffer.dtype is torch.int64
    buffer[:4].view(2, 2).copy_(torch.tensor([[1, 2], [3, 4]]))  # outside inference mode
    errors: list[BaseException] = []

    def write_from_another_thread():
        try:
            buffer.copy_(torch.arange(6))
        except RuntimeError as error:
            errors.append(error)

    thread = threading.Thread(target=write_from_another_thread)
    thread.start()
    thread.join()
    assert errors == []
    assert buffer.tolist() == [0, 1, 2, 3, 4, 5]


def test_cuda_out_of_memory_becomes_out_of_memory_with_both_messages():
    def work():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 PiB.\nmore detail")

    with pytest.raises(OutOfMemory) as raised:
        run_or_out_of_memory(CPU, work, lambda: "ran out doing 3 things")
    assert str(raised.value) == "ran out doing 3 things: CUDA out of memory. Tried to allocate 4.00 PiB."
    assert raised.value.code == "out_of_memory"
    assert run_or_out_of_memory(CPU, lambda: 5, lambda: "unused") == 5


def test_other_errors_pass_through():
    def work():
        raise RuntimeError("not memory")

    with pytest.raises(RuntimeError, match="not memory"):
        run_or_out_of_memory(CPU, work, lambda: "unused")
