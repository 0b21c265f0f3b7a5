"""A user's own model served by gpuq: one analyzer class, one setting.

``Segmenter`` finds the stretches of a 1-D signal that stay above a
threshold once smoothed by a small PyTorch network. Serve it with::

    PYTHONPATH=examples GPUQ_ANALYZERS=digits,my_models.models:Segmenter make up
    curl -s localhost:8000/v1/jobs -H 'Content-Type: application/json' \\
         -d '{"analyzer": "segmenter", "input": {"signal": [0, 0, 1, 1, 1, 1, 0, 0]}}'

The worker imports this module at start-up and checks the class (a name,
``predict``, valid schemas) before it takes a job; ``setup`` runs once per
worker process, so the network is built and moved to the GPU once, not per job.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gpu_worker.analyzer import Analyzer, InvalidInput, Item
from gpu_worker.weights import state_dict_sha256

__all__ = ["Segmenter", "SmoothingNet"]


class SmoothingNet(nn.Module):
    """A moving average as a 1-D convolution: the stand-in for your trained network."""

    def __init__(self, window: int = 5):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel_size=window, padding=window // 2, bias=False)
        with torch.no_grad():
            self.conv.weight.fill_(1.0 / window)

    def forward(self, signal: torch.Tensor) -> torch.Tensor:  # (batch, length) -> (batch, length)
        return self.conv(signal.unsqueeze(1)).squeeze(1)


class Segmenter(Analyzer):
    # What the API shows in /v1/analyzers and checks requests against; the
    # API never imports this module, the worker publishes these for it.
    name = "segmenter"
    description = ("Stretches of a 1-D signal above a threshold after smoothing. input: {signal: [numbers]}; "
                   "returns {segments: [{start, end}], count, length} (end exclusive).")
    version = "1"
    input_schema = {
        "type": "object",
        "required": ["signal"],
        "additionalProperties": False,
        "properties": {"signal": {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 100_000}},
    }
    params_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {"threshold": {"type": "number", "default": 0.5}},
    }
    max_input_bytes = 4 * 1024 * 1024

    def setup(self, device: str) -> None:
        # Load real weights here (safetensors.torch.load_file, then
        # gpu_worker.weights.file_sha256 of that file); this example builds them in code.
        self.device = torch.device(device)
        self.net = SmoothingNet().to(self.device).eval()
        self.weights_sha256 = state_dict_sha256(self.net)

    @torch.inference_mode()
    def predict(self, batch: list[Item]) -> list[Any]:
        results: list[Any] = []
        for item in batch:
            signal = torch.tensor(item.data["signal"], dtype=torch.float32, device=self.device)
            if not torch.isfinite(signal).all():
                # Fails this job only, with a message the client sees.
                results.append(InvalidInput("signal holds a value that is not a finite number"))
                continue
            above = (self.net(signal.unsqueeze(0))[0] > item.params.get("threshold", 0.5)).cpu().tolist()
            segments = _runs(above)
            results.append({"segments": segments, "count": len(segments), "length": len(above)})
        return results


def _runs(flags: list[bool]) -> list[dict[str, int]]:
    """[start, end) of every run of True."""
    runs, start = [], None
    for i, flag in enumerate([*flags, False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append({"start": start, "end": i})
            start = None
    return runs


if __name__ == "__main__":
    # Try the class in-process before serving it: what the worker will do, minus the queue.
    analyzer = Segmenter()
    analyzer.setup("cuda:0" if torch.cuda.is_available() else "cpu")
    [result] = analyzer.predict([Item(job_id="try", data={"signal": [0, 0, 1, 1, 1, 1, 0, 0]}, media_type=None)])
    print(result, analyzer.provenance())
