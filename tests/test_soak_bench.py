"""bench/soak.py, briefly: every kind of fault strikes once, and the soak's own counters come out at 0."""

from __future__ import annotations

import subprocess
import sys

from tests.stack import ROOT


def test_a_short_soak_with_every_fault_loses_nothing_and_no_answer_changes():
    command = [sys.executable, "bench/soak.py", "--minutes", "1.25", "--rate", "3", "--seconds", "1",
               "--fault-every", "8", "--result-ttl", "5", "--drain", "120"]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=420)
    out = run.stdout + run.stderr
    print(out)
    assert run.returncode == 0, out
    for fault in ("killed worker", "paused the model process", "paused the whole of", "cut the proxied worker",
                  "paused Redis"):
        assert fault in out
    assert "lost 0  written by two runners 0  changed answers 0  5xx whose job ran 0" in out
