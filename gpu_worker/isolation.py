"""Running a batch so that one bad job fails only itself, and a full device only slows it down.

``predict`` may return an exception in an item's slot (the analyzer named the
bad input itself); when it raises instead, nobody knows which item was at
fault, so the batch is split in halves and each half run again, down to
single jobs: the culprit fails with its own error and every other job gets
its result. A time limit is not split: time is up for all.

Running out of device memory is the pass's fault before it is any job's: an
analyzer that runs in passes (``items_per_pass``) gets its pass size halved,
down to one item, and the same batch runs again; the smaller size stays for
the next batches (until the model process restarts), and the worker reports it
(``gpuq_analyzer_pass_size``). Only when passes of one item do not fit is the
batch split by jobs, and a job too large for the device fails alone (the pass
size then goes back to what it was: that job, not the passes, was too large).

A failed attempt's memory is given back before the next one: its exception
leaves the ``except`` clause before any retry, with its frames' locals (the
failed pass's tensors) cleared, and after running out of memory the device's
cache is emptied. A sticky device error (``gpu_worker.device_faults``, confirmed
by a tiny operation on the device failing too) is not retried at all: it raises
``DeviceFault`` and the batch goes back to the queue.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from gpu_worker.analyzer import Analyzer, AnalyzerError, Item
from gpu_worker.device_faults import DeviceFault, cause_chain, context_broken, is_device_fault, is_out_of_memory
from gpu_worker.devices import cuda_initialized

__all__ = ["predict_isolating"]

log = logging.getLogger("gpuq.isolation")


def predict_isolating(analyzer: Analyzer, items: list[Item]) -> list[Any]:
    """One result or exception per item, in order; raises only ``DeviceFault``.

    If passes of one item still run out of memory, the pass size goes back to what
    it was: the job was too large, not the passes, and the next batches need not pay for it.
    """
    size = getattr(analyzer, "items_per_pass", None)
    outputs = _isolating(analyzer, items)
    if isinstance(size, int) and size > 1 and analyzer.items_per_pass == 1 and any(
            isinstance(o, BaseException) and is_out_of_memory(o) for o in outputs):
        analyzer.items_per_pass = size
        log.warning("analyzer %s: a job ran out of device memory alone, in passes of one item; passes of %d "
                    "again", analyzer.name, size)
    return outputs


def _isolating(analyzer: Analyzer, items: list[Item]) -> list[Any]:
    outcome = _attempt(analyzer, items)
    if not isinstance(outcome, BaseException):
        # An analyzer that caught CUDA's error and put it in an item's slot broke the device all the same.
        fault = next((o for o in outcome if isinstance(o, BaseException) and is_device_fault(o)), None)
        if fault is not None and context_broken():
            raise DeviceFault(_first_line(fault)) from fault
        return outcome
    if isinstance(outcome, SoftTimeLimitExceeded):
        return [outcome] * len(items)
    if is_device_fault(outcome) and context_broken():
        raise DeviceFault(_first_line(outcome)) from outcome
    if is_out_of_memory(outcome):
        _empty_device_cache()
        if _halve_passes(analyzer, outcome):
            return _isolating(analyzer, items)
    if len(items) == 1:
        return [outcome]
    middle = len(items) // 2
    return _isolating(analyzer, items[:middle]) + _isolating(analyzer, items[middle:])


def _attempt(analyzer: Analyzer, items: list[Item]) -> list[Any] | BaseException:
    """``predict``'s outputs, or the exception it raised, its frames' locals cleared."""
    try:
        output = analyzer.predict(items)
        if not isinstance(output, (list, tuple)) or len(output) != len(items):
            got = len(output) if isinstance(output, (list, tuple)) else type(output).__name__
            raise AnalyzerError(f"predict returned {got} results for {len(items)} inputs", code="analyzer_error")
        return list(output)
    except Exception as error:  # whose fault it is is decided out of this clause
        failed = error
    _let_go(failed)
    return failed


def _let_go(error: BaseException) -> None:
    """Free what a failed attempt held: its frames' locals.

    The traceback keeps each frame it passed through, and each frame its locals: the
    pass's inputs and activations. Cleared, the traceback still names files and lines
    (for the log), but holds no tensor.
    """
    for each in cause_chain(error):
        if each.__traceback__ is not None:
            traceback.clear_frames(each.__traceback__)


def _empty_device_cache() -> None:
    """After running out of memory: the allocator's cached blocks back to the device, for the
    next attempt and for other processes on the GPU (a failed pass's own were let go before)."""
    if cuda_initialized():  # an analyzer that never used CUDA has no device memory
        import torch  # imported already

        try:
            torch.cuda.empty_cache()
        except Exception:  # a context broken meanwhile: the next attempt will say so
            log.debug("could not empty the device's cache", exc_info=True)


def _halve_passes(analyzer: Analyzer, error: BaseException) -> bool:
    """Halve the analyzer's pass size after running out of memory; False when it cannot shrink."""
    size = getattr(analyzer, "items_per_pass", None)
    if not isinstance(size, int) or size <= 1:
        return False
    analyzer.items_per_pass = size // 2
    log.warning("analyzer %s ran out of device memory with passes of %d items; passes of %d from now on (%s)",
                analyzer.name, size, analyzer.items_per_pass, _first_line(error))
    return True


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
