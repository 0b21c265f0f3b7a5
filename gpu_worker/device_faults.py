"""Telling a broken GPU from a failed job.

CUDA's errors are of two kinds. Running out of memory belongs to a pass: the
allocator gives its cache back and a smaller pass fits (``gpu_worker.isolation``).
Almost every other CUDA error is *sticky*: a device-side assert, an illegal
memory access, a launch failure, an uncorrectable ECC error, a GPU fallen off
the bus (an Xid) leave the process's CUDA context unusable, and every later
CUDA call in that process fails. Failing the jobs one by one would make the
worker a black hole: it takes jobs faster than the healthy GPUs and fails
them all while its heartbeat says it is fine. So a sticky error is no job's
failure: the runner gives the batch back to the queue (``hand_back.lua``)
and the model process ends, for a fresh one to be forked
(``gpu_worker.runtime``).

Nothing here imports torch: a CPU-only analyzer never pays for it.
"""

from __future__ import annotations

import sys

from gpu_worker.devices import cuda_initialized

__all__ = ["FAULTS_BEFORE_FAILING_A_JOB", "DeviceFault", "cause_chain", "context_broken", "is_device_fault",
           "is_out_of_memory"]

#: Device faults under one job before it is taken for their cause and failed (``device_error``):
#: a GPU that broke once under a batch goes on to break under the same input in a fresh process
#: only if that input sets it off (a device-side assert), and the job then runs alone.
FAULTS_BEFORE_FAILING_A_JOB = 2

#: Fragments of the messages of CUDA, cuBLAS and cuDNN errors after which the process's
#: CUDA context is unusable (CUDA's "sticky" errors, and the library errors they surface as).
_STICKY = (
    "device-side assert",
    "illegal memory access",
    "illegal instruction",
    "misaligned address",
    "unspecified launch failure",
    "launch timed out",
    "hardware stack error",
    "invalid program counter",
    "uncorrectable ecc error",
    "uncorrectable nvlink error",
    "busy or unavailable",
    "error: unknown error",
    "cublas_status_execution_failed",
    "cublas_status_internal_error",
    "cudnn_status_execution_failed",
    "cudnn_status_mapping_error",
)


class DeviceFault(Exception):
    """The device failed under a batch in a way no retry in this process can mend.

    ``isolation.predict_isolating`` raises it in place of the analyzer's error
    (kept as ``__cause__``, its frames cleared); the runner then gives every
    job of the batch back, and the runtime ends the model process.
    """


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` (or what it was raised from) says the device ran out of memory."""
    return any(_names_out_of_memory(e) for e in cause_chain(error))


def is_device_fault(error: BaseException) -> bool:
    """Whether ``error``, or an error it was raised from, is a sticky device error.

    An analyzer may wrap CUDA's error in its own (``raise AnalyzerError(...) from
    error``): the chain is searched. An out-of-memory error is never a fault, but a
    sticky error met while handling one is.
    """
    return any(not _names_out_of_memory(e) and (isinstance(e, DeviceFault) or _is_sticky(e))
               for e in cause_chain(error))


def context_broken() -> bool:
    """Whether this process's CUDA context is unusable, asked by a tiny operation on the device.

    CUDA's non-sticky errors (an invalid launch configuration, a library's internal
    error that was really a lack of memory) look alike from their messages; the context
    tells them apart: after a sticky error every call fails. Without an initialised CUDA
    context there is nothing to ask, and the error is taken at its word.
    """
    if not cuda_initialized():
        return True
    import torch  # imported already: CUDA is initialised

    try:
        torch.ones(1, device=torch.device("cuda", torch.cuda.current_device())).add_(1).cpu()
        torch.cuda.synchronize()
    except Exception:
        return True
    return False


def cause_chain(error: BaseException) -> list[BaseException]:
    """``error`` and the errors it was raised from or while handling, nearest first."""
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and all(current is not e for e in seen) and len(seen) < 16:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _names_out_of_memory(error: BaseException) -> bool:
    if type(error).__name__ == "OutOfMemoryError" or getattr(error, "code", None) == "out_of_memory":
        return True
    return "out of memory" in str(error).lower() and "cuda" in str(error).lower()


def _is_sticky(error: BaseException) -> bool:
    torch = sys.modules.get("torch")  # only an analyzer that imported torch can have a CUDA error
    accelerator_error = getattr(torch, "AcceleratorError", None) if torch is not None else None
    if accelerator_error is not None and isinstance(error, accelerator_error):
        return True  # torch raises it for CUDA's own errors; out of memory was told apart above
    message = str(error).lower()
    # Only what CUDA or its libraries said: an analyzer's own message may use the same words.
    from_cuda = any(library in message for library in ("cuda", "cublas", "cudnn"))
    return from_cuda and any(fragment in message for fragment in _STICKY)
