"""GPU memory and utilisation of the worker's own GPU, read through NVML.

NVML is the driver's management library: reading it does not initialise CUDA,
so it is safe in any process. The worker puts a sample in each heartbeat and
the API relays it as Prometheus gauges. Without NVML (no driver, no
``nvidia-ml-py``) a probe simply reports nothing; telemetry never stops a worker.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

__all__ = ["GpuProbe"]

log = logging.getLogger("gpuq.telemetry")


class GpuProbe:
    """Samples one GPU, named as ``CUDA_VISIBLE_DEVICES`` names it (an index or a ``GPU-…`` UUID).

    The launcher sets ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, so a CUDA index is the
    same GPU as the NVML (``nvidia-smi``) index of that number.
    """

    def __init__(self, device_id: str):
        self.device_id = device_id
        self._handle: Any = None
        self._nvml: Any = None
        self._broken = False

    @classmethod
    def for_worker(cls, device: str, environ: Mapping[str, str]) -> GpuProbe | None:
        """A probe for a worker on ``device`` ("cuda:0", "cpu"); ``None`` for a CPU worker."""
        if not device.startswith("cuda"):
            return None
        visible = (environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0].strip()
        return cls(visible or "0")

    def _open(self) -> None:
        import pynvml  # from nvidia-ml-py, in the gpu extra

        pynvml.nvmlInit()
        if self.device_id.startswith(("GPU-", "MIG-")):
            self._handle = pynvml.nvmlDeviceGetHandleByUUID(self.device_id)
        else:
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(int(self.device_id))
        self._nvml = pynvml

    def sample(self) -> dict[str, Any] | None:
        """{index, memory_used_bytes, memory_total_bytes, utilization (0..1)}, or ``None`` when unreadable."""
        if self._broken:
            return None
        try:
            if self._handle is None:
                self._open()
            memory = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
            sample: dict[str, Any] = {"index": self.device_id, "memory_used_bytes": int(memory.used),
                                      "memory_total_bytes": int(memory.total)}
            try:
                sample["utilization"] = self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu / 100.0
            except Exception:  # MIG slices report no utilisation; memory is still worth having
                pass
            return sample
        except Exception as error:  # no driver, no library, a GPU gone: say so once, then stay quiet
            self._broken = True
            log.warning("GPU telemetry for device %s is unavailable: %s: %s",
                        self.device_id, type(error).__name__, error)
            return None
