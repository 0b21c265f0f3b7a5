"""Finding GPUs and naming devices, without initialising CUDA in the caller.

The launcher is the parent of every worker: if it initialised CUDA, forked
children could not use it. So GPUs are counted with ``nvidia-smi`` (or taken
from the environment), never through torch.

A host is meant to have GPUs when ``GPUQ_GPUS`` (or else
``CUDA_VISIBLE_DEVICES``) names ids, or when ``nvidia-smi`` is installed. On
such a host, a GPU that cannot be listed is an error (``GpuDiscoveryError``),
not a reason to fall back to CPU workers: a broken driver would otherwise
leave a GPU machine serving from its CPU, slowly and without a word.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping

__all__ = ["GpuDiscoveryError", "cuda_initialized", "describe_device", "discover_gpus", "limit_torch_threads",
           "named_gpus"]

log = logging.getLogger("gpuq.devices")

#: Values of GPUQ_GPUS or CUDA_VISIBLE_DEVICES that ask for CPU workers.
_NO_GPU = ("", "none", "-1")
_CPU_ON_PURPOSE = "set GPUQ_GPUS=none to run CPU workers on purpose"
# A healthy nvidia-smi answers in well under a second; a wedged driver can hang it for minutes.
SMI_TIMEOUT = 20.0


class GpuDiscoveryError(RuntimeError):
    """GPUs are expected on this host but cannot be listed, or an id named for a worker is not one of them."""


def named_gpus(environ: Mapping[str, str]) -> tuple[str, list[str]] | None:
    """(variable, ids) as ``GPUQ_GPUS`` or else ``CUDA_VISIBLE_DEVICES`` names them; ``None`` when neither is set.

    The ids are empty for "none", "-1" or an empty value: CPU workers on purpose.
    Nothing is checked here; ``discover_gpus`` checks the ids against ``nvidia-smi``.
    """
    for name in ("GPUQ_GPUS", "CUDA_VISIBLE_DEVICES"):
        value = environ.get(name)
        if value is not None:
            value = value.strip()
            if value.lower() in _NO_GPU:
                return name, []
            return name, [v.strip() for v in value.split(",") if v.strip()]
    return None


def discover_gpus(environ: Mapping[str, str] | None = None, timeout: float = SMI_TIMEOUT) -> list[str]:
    """GPU ids to start one worker each for; empty for CPU workers.

    ``GPUQ_GPUS`` ("0,1", a ``GPU-…`` UUID, or "none") wins; then
    ``CUDA_VISIBLE_DEVICES``; then every GPU ``nvidia-smi`` (looked for on the
    ``PATH`` of ``environ``) lists. Named ids must be among those ``nvidia-smi``
    lists. Raises ``GpuDiscoveryError`` when GPUs are expected (ids named, or
    ``nvidia-smi`` installed) and ``nvidia-smi`` is missing, fails, hangs past
    ``timeout`` seconds or lists none, or when a named id is not listed.
    """
    env = os.environ if environ is None else environ
    named = named_gpus(env)
    if named is not None and not named[1]:
        return []  # CPU workers on purpose
    smi = shutil.which("nvidia-smi", path=env.get("PATH"))
    if named is None and smi is None:
        log.warning("no GPU found (no nvidia-smi on PATH, neither GPUQ_GPUS nor CUDA_VISIBLE_DEVICES set): "
                    "starting CPU workers; GPUQ_GPUS=none states CPU workers on purpose")
        return []
    expected = f"{named[0]}={','.join(named[1])}" if named is not None else f"nvidia-smi is installed at {smi}"
    try:
        listed = _list_gpus(smi, timeout)
    except GpuDiscoveryError as error:
        raise GpuDiscoveryError(f"GPUs are expected ({expected}) but none can be listed: {error}; "
                                f"{_CPU_ON_PURPOSE}") from None
    if named is None:
        return [index for index, _ in listed]
    unknown = [gpu for gpu in named[1] if not _is_listed(gpu, listed)]
    if unknown:
        raise GpuDiscoveryError(f"{named[0]} names {', '.join(unknown)}, which nvidia-smi does not list "
                                f"(it lists {'; '.join(f'{i} {u}' for i, u in listed)})")
    return named[1]


def _list_gpus(smi: str | None, timeout: float) -> list[tuple[str, str]]:
    """(index, UUID) of each GPU ``nvidia-smi`` lists; ``GpuDiscoveryError`` saying why when it lists none."""
    if smi is None:
        raise GpuDiscoveryError("nvidia-smi is not on PATH")
    try:
        done = subprocess.run([smi, "--query-gpu=index,uuid", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise GpuDiscoveryError(f"nvidia-smi did not answer within {timeout:g} s") from None
    except OSError as error:
        raise GpuDiscoveryError(f"nvidia-smi could not run: {error}") from None
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0:
        # nvidia-smi prints why it failed on stdout as often as on stderr.
        said = next((line.strip() for line in (done.stderr + "\n" + done.stdout).splitlines() if line.strip()),
                    "no message")
        raise GpuDiscoveryError(f"nvidia-smi failed with status {done.returncode}: {said.rstrip('.')}")
    listed = []
    for line in lines:
        index, _, uuid = (part.strip() for part in line.partition(","))
        if not index.isdigit():  # "No devices were found", or whatever else it says instead of a list
            raise GpuDiscoveryError(f"nvidia-smi answered {line!r}")
        listed.append((index, uuid))
    if not listed:
        raise GpuDiscoveryError("nvidia-smi lists no GPU")
    return listed


def _is_listed(gpu: str, listed: list[tuple[str, str]]) -> bool:
    if gpu.isdigit():
        return any(gpu == index for index, _ in listed)
    if gpu.upper().startswith("MIG-"):
        # nvidia-smi --query-gpu lists whole GPUs, not MIG instances; CUDA itself refuses a wrong one.
        return True
    # CUDA takes a GPU UUID or any prefix of one that names a single GPU.
    return sum(uuid.lower().startswith(gpu.lower()) for _, uuid in listed) == 1


def cuda_initialized() -> bool:
    """Whether this process has a CUDA context; asked only if torch is imported already (importing
    it here would cost every process that never uses it, and would not initialise CUDA anyway)."""
    torch = sys.modules.get("torch")
    return torch is not None and torch.cuda.is_initialized()


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
