"""A text progress bar for the command line, on stderr so stdout stays for results."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

__all__ = ["ProgressBar"]

_WIDTH = 30


class ProgressBar:
    """Redraws one line on a terminal; elsewhere (a pipe, a log) writes a line per step of 10 %."""

    def __init__(self, label: str = "", stream: TextIO | None = None):
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._last_tenth = -1
        self._last_draw = 0.0
        self._drawn = False
        #: Held by whoever draws or closes, when more than one thread does.
        self.lock = threading.Lock()

    def update(self, fraction: float | None, note: str = "") -> None:
        fraction = None if fraction is None else min(1.0, max(0.0, fraction))
        if fraction is None:
            bar, percent = "?" * _WIDTH, "  ?%"
        else:
            filled = int(round(fraction * _WIDTH))
            bar, percent = "#" * filled + "-" * (_WIDTH - filled), f"{fraction * 100:3.0f}%"
        text = f"{self.label} [{bar}] {percent} {note}".rstrip()
        if self.tty:
            now = time.monotonic()
            if now - self._last_draw >= 0.1 or fraction == 1.0:
                self.stream.write("\r\x1b[K" + text)
                self.stream.flush()
                self._last_draw, self._drawn = now, True
            return
        tenth = -1 if fraction is None else int(fraction * 10)
        if tenth != self._last_tenth:
            self._last_tenth = tenth
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
