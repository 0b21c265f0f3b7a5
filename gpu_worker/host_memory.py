"""Keeping freed host memory in the model process, so a forward pass does not fault its pages in afresh.

glibc's malloc serves a request above its mmap threshold with a fresh
``mmap`` and gives it back with ``munmap`` when it is freed; the threshold
starts at 128 KiB and follows what is freed, and memory free at the top of
the heap beyond the trim threshold goes back to the kernel too. A model's CPU
pass allocates and frees activations of a MiB or more, of several sizes, each
time: the thresholds keep moving, and many passes fault every page of their
buffers in again, each zeroed by the kernel. On the development machine a
256-frame ``digits`` job took about 1,000 page faults; with both thresholds
fixed, a few, and the model ran 1.2 to 1.6 times as fast (``bench/host_memory.py``).
(PyTorch's CPU tensors come from malloc; a GPU worker's decoding and staging
buffers do too.)

``keep_freed_memory`` fixes the thresholds: requests up to 32 MiB (glibc's
own ceiling for the moving threshold) come from the heap, and up to 128 MiB
of free heap stays in the process. Operators who set glibc's own variables
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``) or preload another
allocator keep their choice.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Mapping

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_freed_memory"]

log = logging.getLogger("gpuq.host_memory")

MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 128 * 1024 * 1024
# mallopt's parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_GLIBC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_memory(environ: Mapping[str, str] | None = None) -> bool:
    """Fix glibc's mmap and trim thresholds for this process; whether it was done.

    Nothing is done (False) where the C library is not glibc, or where the
    environment already says how memory is to be allocated.
    """
    env = os.environ if environ is None else environ
    own = [name for name in _GLIBC_VARIABLES if env.get(name)]
    if "malloc" in env.get("LD_PRELOAD", ""):  # jemalloc, tcmalloc, mimalloc
        own.append("LD_PRELOAD")
    if own:
        log.info("host allocator left as configured (%s set)", ", ".join(own))
        return False
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    # mallopt returns 1 on success. The mmap threshold first: setting it also stops it moving.
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def _glibc_mallopt():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 -- present in glibc only (musl has mallopt but ignores it)
    except (OSError, AttributeError):
        return None
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt
