"""Giving the GIL back to the model's thread soon, so the recorder thread does not stall its passes.

While a batch runs on (``gpu_worker.runner``), two threads of the model
process are busy: the model's own, in ``predict``, and the recorder, which
encodes the last batch's results, writes them to Redis and claims the next
batch. PyTorch releases the GIL around every operator; if the recorder takes
it meanwhile, the model's thread, its operator done, waits for it until the
recorder lets go at a blocking call or until CPython's switch interval has
passed and it may ask for it: 5 ms by default, for an operator that may take
a tenth of that. (On a GPU the next kernel launch waits with it.)

Measured on the development machine (``bench/switch_interval.py``, 5
rounds): with a helper thread busy a tenth of the time, the model's thread
was on its core 85 % of its ``predict`` time with the default interval and
92 % with 0.5 ms, and ``predict`` ran 1.11 times as fast (median; rounds
1.01 to 1.14). In whole coarse ``digits`` runs end to end the gain was lost
in the machine's noise.

A shorter interval costs more hand-overs between threads that both run
Python; 0.5 ms did better than 1 ms and 0.2 ms there.
"""

from __future__ import annotations

import sys

__all__ = ["SWITCH_INTERVAL", "hand_back_the_gil_sooner"]

#: Seconds a thread waiting for the GIL waits before it asks the holder for it.
SWITCH_INTERVAL = 0.0005


def hand_back_the_gil_sooner() -> float:
    """Set this process's switch interval to ``SWITCH_INTERVAL``; returns the interval it had."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    return previous
