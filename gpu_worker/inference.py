"""Running a model on its device well: the pieces the built-in analyzers share.

- ``ready_for_inference``: a module on its device, in eval mode, without gradients.
- ``amp_dtype``: the reduced precision (autocast) an analyzer may run in, if any:
  only on CUDA, only where the analyzer allows it, never with ``GPUQ_PRECISION=fp32``.
- ``HostStaging``: page-locked host buffers, reused from pass to pass, so
  inputs reach a CUDA device by asynchronous copies.
- ``one_ahead``: a pipeline that prepares pass k+1 on the CPU while the device
  runs pass k, and hands pass k over once k+1 is on its way.
- ``run_or_out_of_memory``: a CUDA out-of-memory error turned into
  ``OutOfMemory``, with the allocator's cache freed so the worker can go on.

Nothing here touches CUDA unless it is handed a CUDA device.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import TypeVar

import torch

from gpu_worker.analyzer import OutOfMemory

__all__ = [
    "PRECISION_ENV",
    "HostStaging",
    "amp_dtype",
    "autocast",
    "one_ahead",
    "ready_for_inference",
    "run_or_out_of_memory",
]

#: Operators' switch: ``fp32`` runs every analyzer in float32 even where it allows
#: less; ``auto`` (the default) uses what each analyzer allows on a CUDA device.
PRECISION_ENV = "GPUQ_PRECISION"
_PRECISIONS = ("auto", "fp32")
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}

Prepared = TypeVar("Prepared")
Launched = TypeVar("Launched")
Finished = TypeVar("Finished")
Module = TypeVar("Module", bound=torch.nn.Module)


def ready_for_inference(module: Module, device: torch.device) -> Module:
    """``module`` on ``device``, in eval mode (dropout off), its parameters needing no gradient."""
    return module.to(device).eval().requires_grad_(False)


def amp_dtype(device: torch.device, allowed: str | None,
              environ: Mapping[str, str] | None = None) -> torch.dtype | None:
    """The dtype to autocast a model's forward pass to on ``device``, or ``None`` for float32.

    ``allowed`` is the analyzer's ``autocast_dtype`` ("bfloat16", "float16" or
    None). Raises ``ValueError`` for a malformed ``GPUQ_PRECISION`` or
    ``allowed``, so a misconfigured worker refuses to start.
    """
    env = os.environ if environ is None else environ
    precision = env.get(PRECISION_ENV, "").strip().lower() or "auto"
    if precision not in _PRECISIONS:
        raise ValueError(f"{PRECISION_ENV}={precision!r}: expected one of {', '.join(_PRECISIONS)}")
    if allowed is not None and allowed not in _DTYPES:
        raise ValueError(f"autocast_dtype={allowed!r}: expected one of {', '.join(_DTYPES)} or None")
    # CUDA only. On a CPU, bfloat16 autocast is slower than float32 unless the
    # processor has AMX or AVX512-BF16, and it would change every result that
    # CPU workers (and the tests) give today.
    if allowed is None or precision == "fp32" or device.type != "cuda":
        return None
    dtype = _DTYPES[allowed]
    if dtype is torch.bfloat16 and torch.cuda.get_device_capability(device) < (8, 0):
        return None  # bfloat16 is emulated before Ampere: slower than float32, so not worth it
    return dtype


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[object]:
    """Autocast to ``dtype`` on ``device``'s kind of device; nothing when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class HostStaging:
    """Page-locked host memory for copying inputs to a CUDA device without blocking.

    Copying from ordinary (pageable) memory makes the CPU wait for the copy;
    from page-locked memory it runs asynchronously, so the CPU can go on to
    prepare the next pass. Pinning is slow, so each named slot keeps one
    buffer and reuses it, growing it only for a larger input. Before a slot is
    overwritten, its previous copy is waited for (a CUDA event), so reuse is
    safe however far ahead the caller runs. On any other device ``to_device``
    is a plain ``.to(device)``.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self._slots: dict[str, tuple[torch.Tensor, torch.cuda.Event]] = {}

    def to_device(self, tensor: torch.Tensor, slot: str) -> torch.Tensor:
        """``tensor`` on the device; on CUDA through ``slot``'s pinned buffer, asynchronously."""
        if self.device.type != "cuda":
            return tensor.to(self.device)
        buffer, copied = self._slots.get(slot, (None, None))
        if copied is not None:
            copied.synchronize()  # the last copy out of this buffer has finished reading it
        if buffer is None or buffer.dtype != tensor.dtype or buffer.numel() < tensor.numel():
            # At least double: inputs that grow pass by pass (texts run shortest
            # first) are then pinned a few times, not once a pass.
            grown = 2 * buffer.numel() if buffer is not None and buffer.dtype == tensor.dtype else 0
            buffer = torch.empty(max(tensor.numel(), grown), dtype=tensor.dtype, pin_memory=True)
        # A flat buffer viewed in the input's shape: always contiguous, whatever the shape.
        staged = buffer[: tensor.numel()].view(tensor.shape)
        staged.copy_(tensor)
        on_device = staged.to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        self._slots[slot] = (buffer, event)
        return on_device


def one_ahead(prepared: Iterable[Prepared], launch: Callable[[Prepared], Launched],
              finish: Callable[[Launched], Finished]) -> Iterator[Finished]:
    """``finish(launch(p))`` for each ``p``, in order, the CPU's work overlapping the device's.

    ``prepared`` should be lazy (a generator): drawing its next element is the
    CPU's work (decoding, tokenizing). ``launch`` queues the device's work and
    returns at once on CUDA; ``finish`` waits for it (a copy to the CPU). The
    order is launch k, prepare k+1, finish k, launch k+1, and only then is k
    handed to the caller: the device runs pass k+1 while the CPU prepares it,
    and while the caller uses pass k's output (results, progress reports).
    One pass is in flight at a time, so device memory holds one pass's
    activations. On a CPU, ``launch`` does the work itself and this runs
    sequentially, with the same results in the same order.
    """
    in_flight: list[Launched] = []  # at most one
    for item in prepared:
        done = [finish(in_flight.pop())] if in_flight else []  # let go of before the next launch
        in_flight.append(launch(item))
        yield from done
    if in_flight:
        yield finish(in_flight.pop())


def run_or_out_of_memory(device: torch.device, work: Callable[[], Finished],
                         describe: Callable[[], str]) -> Finished:
    """``work()``; if CUDA runs out of memory, free the cache and raise ``OutOfMemory``.

    The message is ``describe()`` (what was being done) and the first line of
    CUDA's. Freeing the allocator's cache leaves the device usable for the
    next batch (the runner retries a batch that ran out of memory in smaller
    parts) and for other processes on the GPU.
    """
    try:
        return work()
    except torch.cuda.OutOfMemoryError as error:
        detail = (str(error).strip().splitlines() or ["CUDA out of memory"])[0]
    # Out of the except clause: the error's traceback, which holds the failed
    # pass's tensors, is gone, so emptying the cache can give their memory back.
    if device.type == "cuda":
        torch.cuda.empty_cache()
    raise OutOfMemory(f"{describe()}: {detail}")
