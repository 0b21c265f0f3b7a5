"""The built-in ``digits`` analyzer: which digit (0-9) a handwritten image shows.

Accepts a PNG/JPEG image, a .npy array (2-D: one image, 3-D: a stack of
frames) or an HDF5 file (a 2-D or 3-D dataset: always a stack). Inputs of any
size are normalised to scikit-learn's 8x8 digits by ``gpu_worker.decoding``.
Importing this module does not touch CUDA; ``setup`` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from gpu_worker.analyzer import Analyzer, AnalyzerError, Item, OutOfMemory
from gpu_worker.analyzers.digits_model import WEIGHTS_PATH, DigitsCNN, load_model
from gpu_worker.decoding import MEDIA_TYPES, decode_frames
from gpu_worker.weights import file_sha256

__all__ = ["CHUNK_FRAMES", "DigitsAnalyzer"]

#: Frames per forward pass: bounds device memory whatever the stack size.
CHUNK_FRAMES = 256


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

    def __init__(self, weights_path: str | Path = WEIGHTS_PATH) -> None:
        self.weights_path = Path(weights_path)
        self.model: DigitsCNN | None = None
        self.device = torch.device("cpu")

    def setup(self, device: str) -> None:
        """Load the shipped weights onto ``device`` and run one warm-up pass.

        Raises ``WeightsError`` (a ``RuntimeError``) if the weights file is
        missing or corrupt: the worker should not start without a model.
        """
        self.device = torch.device(device)
        self.model = load_model(self.weights_path, self.device)
        self.weights_sha256 = file_sha256(self.weights_path)
        # The first pass pays for kernel selection and allocator growth; do it
        # now rather than inside the first job.
        with torch.inference_mode():
            self.model(torch.zeros(1, 8, 8, device=self.device))

    def predict(self, batch: list[Item]) -> list[Any]:
        """One result per item, in order; an item's slot may hold an AnalyzerError instance.

        A bad input fails only its own job: decoding errors are returned in that
        item's slot (as ``InvalidInput``) instead of raised. Running out of
        device memory raises ``OutOfMemory`` for the whole batch.

        All items' frames go through the model together (that is what batching
        buys), in chunks of ``CHUNK_FRAMES``; items that are stacks get
        ``progress(done, total, "frames")`` as their frames are classified.
        """
        if self.model is None:
            raise RuntimeError("DigitsAnalyzer.setup() must be called before predict()")
        results: list[Any] = [None] * len(batch)
        decoded: list[tuple[int, np.ndarray, bool]] = []  # (slot, frames, is_stack)
        for slot, item in enumerate(batch):
            try:
                frames, is_stack = decode_frames(item.data, item.media_type, item.params)
            except AnalyzerError as exc:
                results[slot] = exc
                continue
            except MemoryError:
                results[slot] = OutOfMemory("not enough host memory to decode this input")
                continue
            decoded.append((slot, frames, is_stack))
        if not decoded:
            return results

        probs = self._classify(batch, decoded)
        start = 0
        for slot, frames, is_stack in decoded:
            p = probs[start : start + len(frames)]
            start += len(frames)
            results[slot] = _stack_result(p) if is_stack else _image_result(p[0])
        return results

    def _classify(self, batch: list[Item], decoded: list[tuple[int, np.ndarray, bool]]) -> np.ndarray:
        """Softmax probabilities (total frames, 10) for all decoded items, in order."""
        assert self.model is not None
        everything = np.concatenate([frames for _, frames, _ in decoded])
        total = len(everything)
        # Where each stack's frames lie in ``everything``, for progress reports.
        spans: list[tuple[Item, int, int]] = []
        offset = 0
        for slot, frames, is_stack in decoded:
            if is_stack:
                spans.append((batch[slot], offset, len(frames)))
            offset += len(frames)

        out = np.empty((total, 10), np.float32)
        try:
            with torch.inference_mode():
                for lo in range(0, total, CHUNK_FRAMES):
                    hi = min(lo + CHUNK_FRAMES, total)
                    x = torch.from_numpy(everything[lo:hi]).to(self.device)
                    out[lo:hi] = torch.softmax(self.model(x).float(), dim=1).cpu().numpy()
                    for item, first, n in spans:
                        if first < hi and lo < first + n:  # this chunk covered some of its frames
                            item.progress(min(hi - first, n), n, "frames")
        except torch.cuda.OutOfMemoryError as exc:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()  # leave the device usable for the next batch
            raise OutOfMemory(f"the device ran out of memory classifying {total} frames") from exc
        return out


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
