"""Finding GPUs and naming devices, without initialising CUDA in the caller.

The launcher is the parent of every worker: if it initialised CUDA, forked
children could not use it. So GPUs are counted with ``nvidia-smi`` (or taken
from the environment), never through torch.
"""

from __future__ import annotations

import os
import shutil
import subprocess

__all__ = ["describe_device", "discover_gpus", "limit_torch_threads"]


def discover_gpus(environ: dict[str, str] | None = None) -> list[str]:
    """GPU ids to start one worker each for; empty when there is none.

    ``GPUQ_GPUS`` ("0,1", or "none") wins; then ``CUDA_VISIBLE_DEVICES``; then
    what ``nvidia-smi`` lists.
    """
    env = os.environ if environ is None else environ
    for name in ("GPUQ_GPUS", "CUDA_VISIBLE_DEVICES"):
        value = env.get(name)
        if value is not None:
            value = value.strip()
            if value.lower() in ("", "none", "-1"):
                return []
            return [v.strip() for v in value.split(",") if v.strip()]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def describe_device(kind: str) -> tuple[str, str]:
    """(torch device, label) for this process; ``kind`` is "cuda" or "cpu".

    Only a worker's pool child calls this with "cuda": it is the process that
    owns the GPU.
    """
    if kind == "cpu":
        return "cpu", "cpu"
    if kind != "cuda":
        raise ValueError(f"GPUQ_DEVICE={kind!r}: expected 'cuda' or 'cpu'")
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("GPUQ_DEVICE=cuda but no CUDA device is visible to this process")
    physical = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    return "cuda:0", f"cuda:{physical} {torch.cuda.get_device_name(0)}"


def limit_torch_threads(threads: int) -> None:
    """Let torch's CPU work use ``threads`` threads in this process (``GPUQ_TORCH_THREADS``, default 1).

    torch starts one thread per core by default, and they spin while they wait
    for each other. A worker shares its host with the API, Redis and, on a GPU
    machine, the other GPUs' workers: on a GPU the device does the math, and a
    small model's CPU pass is quicker on one thread than on several fighting for
    busy cores (one 8x8 digit: 0.5 ms against 10 ms on a loaded 2-core machine).
    A CPU-only worker with cores to itself may raise it.
    """
    import importlib.util

    if importlib.util.find_spec("torch") is None:  # an analyzer without torch: nothing to limit
        return
    import torch

    torch.set_num_threads(threads)
