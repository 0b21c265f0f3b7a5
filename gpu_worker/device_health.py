"""How many times in a row a worker's GPU broke, kept where the next model process finds it.

A sticky device error (``gpu_worker.device_faults``) ends the model process;
Celery forks a fresh one, which loads the models again: a context spoilt by one
bad kernel is mended so. A GPU that is itself failing breaks the fresh process
too, so after ``GPUQ_DEVICE_FAULT_RESTARTS`` (default 3) faults in a row, with
no batch run between them, the worker stops for good and says why, rather
than taking jobs and giving them back forever.

The count outlives the process it counts: it is a small JSON file beside the
launcher's ready file (``GPUQ_READY_FILE``), or in the temporary folder for a
worker run without the launcher. The launcher reads the same file to tell a
worker that stopped for its GPU from one that crashed, and gives up its slot.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DeviceHealth"]


@dataclass(frozen=True)
class DeviceHealth:
    path: Path

    @classmethod
    def for_worker(cls, name: str, environ: Mapping[str, str]) -> DeviceHealth:
        ready_file = environ.get("GPUQ_READY_FILE")
        if ready_file:
            return cls.beside(Path(ready_file))
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        return cls(Path(tempfile.gettempdir()) / f"gpuq-{safe}.device-faults")

    @classmethod
    def beside(cls, ready_file: Path) -> DeviceHealth:
        """The record of the worker whose launcher slot has ``ready_file``."""
        return cls(ready_file.with_suffix(".device-faults"))

    def faults_in_a_row(self) -> int:
        return int(self._read().get("in_a_row", 0))

    def stopped_because(self) -> str | None:
        """Why the worker stopped for good, or None if it did not."""
        return self._read().get("stopped")

    def record_fault(self, fault: str) -> int:
        """One more fault in a row; returns how many now."""
        count = self.faults_in_a_row() + 1
        self._write({"in_a_row": count, "last_fault": fault})
        return count

    def record_stop(self, reason: str) -> None:
        """The worker stops for good: the count starts again at its next start, the reason stays."""
        self._write({"in_a_row": 0, "stopped": reason})

    def record_batch_run(self) -> None:
        """A batch ran on the device: the faults before it were not in a row with the next."""
        self.clear()

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, data: dict[str, Any]) -> None:
        # Whole or not at all: a process killed mid-write leaves the last record, not half of one.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        temporary.write_text(json.dumps(data))
        os.replace(temporary, self.path)
