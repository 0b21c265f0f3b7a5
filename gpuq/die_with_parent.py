"""Children that end when the process that started them ends, however it ends.

``gpuq up`` starts each part of the stack in a session of its own, so that a
Ctrl-C reaches only ``gpuq up``, which then stops the parts in order. But a
``gpuq up`` that is killed outright (SIGKILL, the OOM killer) runs no clean-up,
and a part in its own session hears nothing of a closed terminal: the parts
would live on and hold their ports. Linux's parent-death signal closes that
gap: the kernel itself sends the child a signal when its parent dies.

The signal is SIGTERM, the one each part already stops cleanly on (gunicorn's
workers, the launcher's Celery workers, Flower's state file, Redis's AOF).
``gpuq up`` asks the same for itself (``die_with_own_parent``): ``make up``
runs it as the recipe's child, and a make killed outright would otherwise
leave it, and so the whole stack, running. Elsewhere than Linux this does
nothing.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

__all__ = ["die_with_own_parent", "die_with_parent"]

_PR_SET_PDEATHSIG = 1

# Resolved here, in the parent: loading a library between fork and exec could deadlock.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def die_with_parent(signum: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child gets ``signum`` when this process dies.

    The kernel watches the thread that forks, not the process: call Popen from a
    thread that lives as long as the child should (``gpuq up``'s main thread).
    """
    if _prctl is None:
        return None
    parent = os.getpid()

    def arm() -> None:
        _signal_when_parent_dies(parent, signum)

    return arm


def die_with_own_parent(signum: int = signal.SIGTERM) -> None:
    """This process gets ``signum`` when its parent dies (the kernel watches the parent's thread that
    forked it: make, which runs a recipe from its only thread)."""
    if _prctl is not None:
        _signal_when_parent_dies(os.getppid(), signum)


def _signal_when_parent_dies(parent: int, signum: int) -> None:
    _prctl(_PR_SET_PDEATHSIG, signum)
    # The parent may have died before prctl: then no signal would ever come.
    if os.getppid() != parent:
        os.kill(os.getpid(), signum)
