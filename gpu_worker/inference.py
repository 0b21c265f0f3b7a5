"""Running a model on its device well: the pieces the built-in analyzers share.

- ``ready_for_inference``: a module on its device, in eval mode, without gradients.
- ``amp_dtype``: the reduced precision (autocast) an analyzer may run in, if any:
  only on CUDA, only where the analyzer allows it and the card computes it
  faster than float32 (float16 from compute capability 7.0, bfloat16 from 8.0);
  ``GPUQ_PRECISION=reduced`` drops the speed condition, ``fp32`` forbids it.
- ``HostStaging``: page-locked host buffers, reused from pass to pass, so
  inputs reach a CUDA device by asynchronous copies. The buffers are ordinary
  tensors even when made inside ``torch.inference_mode()``.
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

#: Operators' switch: ``auto`` (the default) uses what each analyzer allows on a
#: CUDA card that computes it faster than float32; ``reduced`` uses it on any CUDA
#: card (a P100, compute capability 6.0, has fast float16 but no tensor cores);
#: ``fp32`` runs every analyzer in float32 even where it allows less.
PRECISION_ENV = "GPUQ_PRECISION"
_PRECISIONS = ("auto", "reduced", "fp32")
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
# The compute capability from which a dtype beats float32 under ``auto``: float16
# runs on tensor cores from Volta (7.0), and before that most cards compute it
# far slower than float32; bfloat16 is emulated before Ampere (8.0).
_FASTER_THAN_FLOAT32_FROM = {torch.float16: (7, 0), torch.bfloat16: (8, 0)}

Prepared = TypeVar("Prepared")
Launched = TypeVar("Launched")
Finished = TypeVar("Finished")
Module = TypeVar("Module", bound=torch.nn.Module)


def ready_for_inference(module: Module, device: torch.device) -> Module:
    """``module`` on ``device``, in eval mode (dropout off), its parameters needing no gradient."""
    return module.to(device).eval().requires_grad_(False)


def amp_dtype(device: torch.device, allowed: str | None, environ: Mapping[str, str] | None = None,
              capability: tuple[int, int] | None = None) -> torch.dtype | None:
    """The dtype to autocast a model's forward pass to on ``device``, or ``None`` for float32.

    ``allowed`` is the analyzer's ``autocast_dtype`` ("bfloat16", "float16" or
    None); ``capability`` is the CUDA device's compute capability, read from
    torch only when it is needed and not given. Raises ``ValueError`` for a
    malformed ``GPUQ_PRECISION`` or ``allowed``, so a misconfigured worker
    refuses to start.
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
    if precision == "reduced":
        return dtype
    if capability is None:
        capability = torch.cuda.get_device_capability(device)
    return dtype if capability >= _FASTER_THAN_FLOAT32_FROM[dtype] else None


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

    A buffer may first be needed inside ``torch.inference_mode()`` (a warm-up
    pass in ``setup``) and reused outside it or from another thread; so it is
    made and written outside inference mode, as an ordinary tensor. Made as an
    inference tensor, its next reuse there would fail with "Inplace update to
    inference tensor outside InferenceMode".
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
            self._wait_for_previous_copy(copied)
        if buffer is None or buffer.dtype != tensor.dtype or buffer.numel() < tensor.numel():
            # At least double: inputs that grow pass by pass (texts run shortest
            # first) are then pinned a few times, not once a pass.
            grown = 2 * buffer.numel() if buffer is not None and buffer.dtype == tensor.dtype else 0
            buffer = _new_buffer(max(tensor.numel(), grown), tensor.dtype, pin_memory=True)
        with torch.inference_mode(False):  # an ordinary in-place write to an ordinary tensor, in any mode
            # A flat buffer viewed in the input's shape: always contiguous, whatever the shape.
            staged = buffer[: tensor.numel()].view(tensor.shape)
            staged.copy_(tensor)
        on_device = staged.to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        self._slots[slot] = (buffer, event)
        return on_device

    def _wait_for_previous_copy(self, copied: torch.cuda.Event) -> None:
        """Block until the last copy out of a buffer has finished reading it, so it may be overwritten."""
        copied.synchronize()


def _new_buffer(numel: int, dtype: torch.dtype, pin_memory: bool) -> torch.Tensor:
    """A flat host buffer of ``numel`` elements: an ordinary tensor, even when made inside inference mode."""
    with torch.inference_mode(False):
        return torch.empty(numel, dtype=dtype, pin_memory=pin_memory)


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
