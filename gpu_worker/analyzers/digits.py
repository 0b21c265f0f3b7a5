"""The built-in ``digits`` analyzer: which digit (0-9) a handwritten image shows.

Accepts a PNG/JPEG image, a .npy array (2-D: one image, 3-D: a stack of
frames) or an HDF5 file (a 2-D or 3-D dataset: always a stack). Inputs of any
size are normalised to scikit-learn's 8x8 digits by ``gpu_worker.decoding``.
Importing this module does not touch CUDA; ``setup`` does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from gpu_worker import inference
from gpu_worker.analyzer import Analyzer, AnalyzerError, Item, OutOfMemory
from gpu_worker.analyzers.digits_model import WEIGHTS_PATH, DigitsCNN, load_model
from gpu_worker.decoding import MEDIA_TYPES, decode_frames
from gpu_worker.weights import file_sha256

__all__ = ["CHUNK_FRAMES", "DigitsAnalyzer"]

#: Frames per forward pass (``DigitsAnalyzer.items_per_pass``): bounds device
#: memory whatever the stack size, and is large enough that a GPU pass costs
#: about what its launch does.
CHUNK_FRAMES = 256


@dataclass
class _Span:
    """Where one decoded item's frames lie among all the batch's frames."""

    slot: int
    first: int
    count: int
    is_stack: bool


class DigitsAnalyzer(Analyzer):
    """Classify handwritten digits with a small CNN trained on scikit-learn's digits."""

    name: ClassVar[str] = "digits"
    description: ClassVar[str] = (
        "Handwritten digit (0-9) classifier. Upload a PNG/JPEG of one digit, a .npy array "
        "(H,W image or N,H,W stack) or an HDF5 file (params.dataset names the dataset; default "
        '"frames", else the first). One image returns {digit, confidence, probabilities}; '
        "a stack returns {frames: [{digit, confidence}], count}."
    )
    version: ClassVar[str] = "1"
    media_types: ClassVar[tuple[str, ...]] = MEDIA_TYPES
    input_schema: ClassVar[dict[str, Any] | None] = None
    params_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "dataset": {
                "type": "string",
                "minLength": 1,
                "maxLength": 1024,
                "description": "HDF5 only: path of the dataset to read.",
            }
        },
        "additionalProperties": False,
    }
    max_input_bytes: ClassVar[int] = 50 * 1024 * 1024
    max_batch_size: ClassVar[int] = 64
    max_wait_ms: ClassVar[int] = 5
    #: Frames per forward pass, whichever jobs they come from: a batch of many
    #: single images and one job with a long stack both run in passes of this size.
    items_per_pass: int = CHUNK_FRAMES
    #: A 10-way softmax over a tiny CNN: half precision should keep the argmax (the claim
    #: tests/test_gpu_inference.py and bench/gpu_first_session.py check on a GPU, not yet run
    #: on one), and the softmax itself runs in float32.
    autocast_dtype: ClassVar[str | None] = "float16"

    def __init__(self, weights_path: str | Path = WEIGHTS_PATH) -> None:
        self.weights_path = Path(weights_path)
        self.model: DigitsCNN | None = None
        self.device = torch.device("cpu")
        self.amp_dtype: torch.dtype | None = None
        self.staging = inference.HostStaging(self.device)

    def setup(self, device: str) -> None:
        """Load the shipped weights onto ``device`` and run one warm-up pass.

        Raises ``WeightsError`` (a ``RuntimeError``) if the weights file is
        missing or corrupt, and ``ValueError`` for a malformed ``GPUQ_PRECISION``:
        the worker should not start without a model it can run.
        """
        self.device = torch.device(device)
        self.amp_dtype = inference.amp_dtype(self.device, self.autocast_dtype)
        self.staging = inference.HostStaging(self.device)
        self.model = load_model(self.weights_path, self.device)
        self.weights_sha256 = file_sha256(self.weights_path)
        # The first pass pays for kernel selection, allocator growth and the
        # pinned buffer; a full-sized one, now rather than inside the first job.
        with torch.inference_mode():
            self._finish(self._launch(np.zeros((self.items_per_pass, 8, 8), np.float32)))

    def predict(self, batch: list[Item]) -> list[Any]:
        """One result per item, in order; an item's slot may hold an AnalyzerError instance.

        A bad input fails only its own job: decoding errors are returned in that
        item's slot (as ``InvalidInput``) instead of raised. Running out of
        device memory raises ``OutOfMemory`` for the whole batch.

        All items' frames go through the model together (that is what batching
        buys), ``items_per_pass`` at a time; items that are stacks get
        ``progress(done, total, "frames")`` as their frames are classified.
        Items are decoded as the passes need them, so the CPU decodes the
        next pass's inputs while the device runs the current one.
        """
        if self.model is None:
            raise RuntimeError("DigitsAnalyzer.setup() must be called before predict()")
        results: list[Any] = [None] * len(batch)
        spans: list[_Span] = []
        passes = self._frames_in_passes(batch, results, spans)
        probs = inference.run_or_out_of_memory(
            self.device, lambda: self._classify(batch, passes, spans),
            lambda: f"the device ran out of memory classifying {sum(span.count for span in spans)} frames")
        for span in spans:
            p = probs[span.first : span.first + span.count]
            results[span.slot] = _stack_result(p) if span.is_stack else _image_result(p[0])
        return results

    def _classify(self, batch: list[Item], passes: Iterator[np.ndarray], spans: list[_Span]) -> np.ndarray:
        """Softmax probabilities (all frames, 10), one pass in flight while the next is decoded."""
        probs: list[np.ndarray] = []
        done = 0
        with torch.inference_mode():
            for p in inference.one_ahead(passes, self._launch, self._finish):
                probs.append(p)
                done += len(p)
                _report_progress(batch, spans, done - len(p), done)
        return np.concatenate(probs) if probs else np.empty((0, 10), np.float32)

    def _frames_in_passes(self, batch: list[Item], results: list[Any], spans: list[_Span]) -> Iterator[np.ndarray]:
        """Decode items one by one and yield their frames in passes of ``items_per_pass``.

        A bad input's error goes into its slot of ``results``; each decoded
        item's place among the frames is appended to ``spans``.
        """
        held: list[np.ndarray] = []  # decoded frames not yet yielded
        held_count = 0
        first = 0
        for slot, item in enumerate(batch):
            try:
                frames, is_stack = decode_frames(item.data, item.media_type, item.params)
            except AnalyzerError as exc:
                results[slot] = exc
                continue
            except MemoryError:
                results[slot] = OutOfMemory("not enough host memory to decode this input")
                continue
            spans.append(_Span(slot, first, len(frames), is_stack))
            first += len(frames)
            held.append(frames)
            held_count += len(frames)
            while held_count >= self.items_per_pass:
                pending = np.concatenate(held) if len(held) > 1 else held[0]
                yield pending[: self.items_per_pass]
                held, held_count = [pending[self.items_per_pass :]], held_count - self.items_per_pass
        if held_count:
            yield np.concatenate(held)

    def _launch(self, frames: np.ndarray) -> torch.Tensor:
        """Queue one pass on the device: softmax probabilities (frames, 10), float32, still on the device."""
        assert self.model is not None
        x = self.staging.to_device(torch.from_numpy(frames), "frames")
        with inference.autocast(self.device, self.amp_dtype):
            logits = self.model(x)
        return torch.softmax(logits.float(), dim=1)  # float32: probabilities are reported to 6 places

    @staticmethod
    def _finish(probs: torch.Tensor) -> np.ndarray:
        """Wait for a pass and bring its probabilities to the host."""
        return probs.cpu().numpy()


def _report_progress(batch: list[Item], spans: list[_Span], lo: int, hi: int) -> None:
    """Tell each stack whose frames lie in [lo, hi) how many of its frames are done."""
    for span in spans:
        if span.is_stack and span.first < hi and lo < span.first + span.count:
            batch[span.slot].progress(min(hi - span.first, span.count), span.count, "frames")


def _image_result(p: np.ndarray) -> dict[str, Any]:
    digit = int(p.argmax())
    return {
        "digit": digit,
        "confidence": round(float(p[digit]), 6),
        "probabilities": [round(float(v), 6) for v in p],
    }


def _stack_result(p: np.ndarray) -> dict[str, Any]:
    digits = p.argmax(1)
    frames = [{"digit": int(d), "confidence": round(float(row[d]), 6)} for d, row in zip(digits, p, strict=True)]
    return {"frames": frames, "count": len(frames)}
