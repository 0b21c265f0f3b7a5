"""Which cores the benchmark's parts run on: the model's, and the host's for everything else.

On a GPU the model's math runs on the device, and the host's cores serve the
API, Redis, the clients and the worker's Celery main process. A CPU run has
no such device: left alone, the scheduler puts the model process and the rest
of the stack on the same cores, and the end-to-end figure then measures how
the stack's wake-ups interrupt the model as much as what the service costs.
So on a CPU with two cores or more the benchmark makes one core the device:
the raw loop (a) and the worker's model process (through the worker's own
``GPUQ_WORKER_CPUS``) run there, and the benchmark's process, Redis, the API
and the worker's main process on the others. ``--shared-cores`` runs every
part on every core instead.

Linux pins threads: a process or thread started later inherits the cores of
the thread that started it, which is how Redis, the API, the launcher and the
client threads get the host's cores.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from gpu_worker.cpu_affinity import VARIABLE as CORES_VARIABLE

__all__ = ["CoreLayout"]


@dataclass(frozen=True)
class CoreLayout:
    #: The model's cores, and the host's; both ``None`` when every part shares every core.
    model: frozenset[int] | None = None
    host: frozenset[int] | None = None

    @classmethod
    def choose(cls, device: str, *, shared: bool) -> CoreLayout:
        cores = sorted(os.sched_getaffinity(0))
        if shared or device == "cuda" or len(cores) < 2:
            return cls()
        return cls(model=frozenset(cores[:1]), host=frozenset(cores[1:]))

    @property
    def reserved(self) -> bool:
        return self.model is not None

    def describe(self) -> str:
        if self.model is None or self.host is None:
            return "every part on every core"
        return f"model on core {_listed(self.model)}, the rest of the stack on {_listed(self.host)}"

    def worker_env(self) -> dict[str, str]:
        """What a worker (gpuq's or the plain Celery baseline) needs to pin its model process."""
        return {CORES_VARIABLE: _listed(self.model)} if self.model is not None else {}

    def use_host_cores(self) -> None:
        """Puts the calling thread, and what it starts from now on, on the host's cores."""
        if self.host is not None:
            os.sched_setaffinity(0, self.host)

    @contextmanager
    def on_model_cores(self) -> Iterator[None]:
        """The calling thread runs on the model's cores meanwhile, then back on the host's."""
        if self.model is None or self.host is None:
            yield
            return
        os.sched_setaffinity(0, self.model)
        try:
            yield
        finally:
            os.sched_setaffinity(0, self.host)


def _listed(cores: frozenset[int]) -> str:
    return ",".join(str(core) for core in sorted(cores))
