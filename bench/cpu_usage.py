"""CPU time of the stack's parts over a measuring window, read from /proc.

On a small machine the clients, the API, Redis and the worker share a few
cores; knowing which of them was busy tells whether a figure measures gpuq
or the benchmark's own clients.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["BENCH_PROCESS", "OTHERS", "CpuMeter", "over_windows"]

BENCH_PROCESS = "bench process"
OTHERS = "other processes"

_TICKS = os.sysconf("SC_CLK_TCK")


def _own_seconds(pid: int, reaped_children: bool) -> float:
    """utime + stime of one process (plus its reaped children's, when asked), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime 14, stime 15, cutime 16, cstime 17.
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _TICKS


def _machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent on anything but idling, since boot."""
    # cpu  user nice system idle iowait irq softirq steal ...
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / _TICKS


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def tree_seconds(pid: int) -> float:
    """CPU seconds of a process and all its descendants, those already gone included."""
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            total += _own_seconds(current, reaped_children=True)
            pending += _children(current)
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited meanwhile
    return total


class CpuMeter:
    """Cores each part used between ``start`` and ``stop`` (1.0: one core busy all the time)."""

    def __init__(self) -> None:
        self._trees: dict[str, int] = {}
        self._began: dict[str, float] = {}
        self._wall = 0.0

    def watch(self, label: str, pid: int) -> None:
        self._trees[label] = pid

    def _now(self) -> dict[str, float]:
        # This process alone: its descendants are the stack, counted under their own labels.
        readings = {BENCH_PROCESS: _own_seconds(os.getpid(), reaped_children=False)}
        readings.update({label: tree_seconds(pid) for label, pid in self._trees.items()})
        # Whatever else runs on the machine (other people's tests, say) competes for the same cores.
        readings[OTHERS] = _machine_busy_seconds() - sum(readings.values())
        return readings

    def start(self) -> None:
        self._began = self._now()
        self._wall = os.times().elapsed

    def stop(self) -> dict[str, float]:
        wall = os.times().elapsed - self._wall
        ended = self._now()
        return {label: (ended[label] - self._began.get(label, 0.0)) / wall for label in ended}


def over_windows(readings: list[tuple[dict[str, float], float]]) -> dict[str, float]:
    """Cores each part used over several windows, from (``CpuMeter.stop()``'s reading, seconds) pairs."""
    total = sum(seconds for _, seconds in readings)
    parts = dict.fromkeys(part for cpu, _ in readings for part in cpu)  # in the order measured
    return {part: sum(cpu.get(part, 0.0) * seconds for cpu, seconds in readings) / total for part in parts}
