"""``simulate``: a stand-in for a slow model, for load and fault tests.

It sleeps or burns CPU for ``seconds`` while reporting progress, and on
request fails with a message, kills its own process (or its whole worker), or
runs out of memory. Swapping a GPU call for this tells server blocking apart
from slow work.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from gpu_worker.analyzer import Analyzer, AnalyzerError, Item, OutOfMemory

__all__ = ["SimulateAnalyzer"]

_STEP_SECONDS = 0.1


class SimulateAnalyzer(Analyzer):
    name = "simulate"
    description = "Runs for a given time with progress; can fail, crash or run out of memory on request."
    version = "1"
    input_schema = {"type": ["object", "null"]}
    params_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "seconds": {"type": "number", "minimum": 0, "maximum": 86400, "default": 1},
            "mode": {"enum": ["sleep", "burn"], "default": "sleep"},
            "fail": {"type": "string", "maxLength": 1000,
                     "description": "fail the job with this message once the time has run"},
            "crash": {"enum": ["process", "worker"],
                      "description": "kill the process running the job, or the whole worker"},
            "oom": {"type": "boolean", "description": "raise an out-of-memory error"},
        },
    }
    max_input_bytes = 64 * 1024

    def setup(self, device: str) -> None:
        self.device = device

    def predict(self, batch: list[Item]) -> list[Any]:
        return [self._run(item) for item in batch]

    def _run(self, item: Item) -> dict[str, Any]:
        params = item.params
        seconds = float(params.get("seconds", 1))
        steps = max(1, round(seconds / _STEP_SECONDS))
        started = time.perf_counter()
        for step in range(steps):
            if params.get("crash") and step == steps // 2:
                self._crash(params["crash"])
            _spend(started + seconds * (step + 1) / steps, params.get("mode", "sleep"))
            item.progress(step + 1, steps, "simulate")
        if params.get("crash"):
            self._crash(params["crash"])
        if params.get("oom"):
            self._run_out_of_memory()
        if "fail" in params:
            raise AnalyzerError(params["fail"], code="simulated_failure")
        return {"seconds": round(time.perf_counter() - started, 3), "input": item.data}

    @staticmethod
    def _crash(what: str) -> None:
        if what == "worker":
            # The Celery parent first, so it cannot requeue from a clean state.
            os.kill(os.getppid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)

    def _run_out_of_memory(self) -> None:
        if self.device.startswith("cuda"):
            import torch  # only on a GPU: a real allocation the card cannot satisfy

            try:
                torch.empty(1 << 50, dtype=torch.uint8, device=self.device)
            except torch.cuda.OutOfMemoryError as error:
                raise OutOfMemory(f"CUDA out of memory: {str(error).splitlines()[0]}") from None
        raise OutOfMemory("out of memory (simulated on the CPU)")


def _spend(until: float, mode: str) -> None:
    if mode == "sleep":
        time.sleep(max(0.0, until - time.perf_counter()))
        return
    while time.perf_counter() < until:
        sum(i * i for i in range(2000))
