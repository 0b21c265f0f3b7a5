"""The network behind the built-in ``digits`` analyzer, and loading its weights.

A deliberately tiny CNN for scikit-learn's 8x8 digits (values 0..16, ink high):
it trains in seconds on a laptop CPU and its weights ship in the repository
(``digits.safetensors``, written by ``scripts/train_digits.py``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from gpu_worker.inference import ready_for_inference

__all__ = ["ARCH", "WEIGHTS_PATH", "DigitsCNN", "WeightsError", "build_model", "load_model"]

#: Stored in the weights file's metadata so a file for another network is refused.
ARCH = "digits-cnn-v1"
#: The weights shipped next to this module.
WEIGHTS_PATH = Path(__file__).with_name("digits.safetensors")


class WeightsError(RuntimeError):
    """The weights file is missing, unreadable, or for a different network."""


class DigitsCNN(nn.Module):
    """8x8 single-channel image (0..16) -> 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 4x4 -> 2x2
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.25), nn.Linear(32 * 2 * 2, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Accept (N, 8, 8) as well as (N, 1, 8, 8): callers hold plain frames.
        if x.dim() == 3:
            x = x.unsqueeze(1)
        # Scaling lives in the model so every caller feeds the 0..16 digits range.
        return self.classifier(self.features(x / 16.0))


def build_model() -> DigitsCNN:
    """A freshly initialised network (seed torch first for reproducible weights)."""
    return DigitsCNN()


def load_model(path: str | Path = WEIGHTS_PATH, device: str | torch.device = "cpu") -> DigitsCNN:
    """Build the network, load ``path`` (safetensors) into it, make it ready for inference on ``device``.

    Raises ``WeightsError`` with the path and the reason when the file is
    missing, corrupt, or does not match the network.
    """
    # Imported here so importing this module stays as light as importing torch.
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"digits weights not found at {path}; run scripts/train_digits.py")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            state = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise WeightsError(f"digits weights at {path} are unreadable: {exc}") from exc
    if metadata.get("arch") != ARCH:
        raise WeightsError(f"digits weights at {path} are for {metadata.get('arch')!r}, expected {ARCH!r}")
    model = build_model()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"digits weights at {path} do not fit the network: {exc}") from exc
    return ready_for_inference(model, torch.device(device))
