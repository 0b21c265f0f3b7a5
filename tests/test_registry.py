"""Which analyzers a worker accepts at start-up: one that initialises CUDA when imported is refused by name."""

from __future__ import annotations

import sys

import pytest
import torch

from gpu_worker.registry import AnalyzerConfigError, resolve_analyzers

CUDA_AT_IMPORT = "tests.fixtures.cuda_at_import"


@pytest.fixture
def real_cuda_state():
    """Puts back what tests/fixtures/cuda_at_import.py replaces, and forgets the module so it runs again."""
    real = torch.cuda.is_initialized
    yield
    torch.cuda.is_initialized = real
    sys.modules.pop(CUDA_AT_IMPORT, None)


def test_an_analyzer_module_that_initialises_cuda_at_import_is_refused_by_name(real_cuda_state):
    assert not torch.cuda.is_initialized()
    with pytest.raises(AnalyzerConfigError) as refused:
        resolve_analyzers(f"{CUDA_AT_IMPORT}:CudaAtImport")
    message = str(refused.value)
    assert f"importing '{CUDA_AT_IMPORT}'" in message and "initialised CUDA" in message
    assert "touch CUDA only in setup(device)" in message


def test_analyzers_that_leave_cuda_alone_are_accepted(real_cuda_state):
    classes = resolve_analyzers("digits,tests.fixtures.analyzers:Echo")
    assert [cls.name for cls in classes] == ["digits", "echo"]
    assert not torch.cuda.is_initialized()


def test_cuda_initialised_before_an_import_is_not_blamed_on_it(real_cuda_state):
    # A process that already uses CUDA (a test run on a GPU machine) can still check analyzers.
    torch.cuda.is_initialized = lambda: True
    assert [cls.name for cls in resolve_analyzers("tests.fixtures.analyzers:Echo")] == ["echo"]
