"""Progress of a long stage on stderr: a redrawn bar on a terminal, one summary line per stage otherwise."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, label: str):
        self.total, self.label, self.done, self.t0 = total, label, 0, time.perf_counter()
        self.live = sys.stderr.isatty()
        self.last_draw = 0.0
        if total == 0:
            self._draw(time.perf_counter())

    def step(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if self.done < self.total and (not self.live or now - self.last_draw < 0.1):
            return
        self._draw(now)

    def _draw(self, now: float) -> None:
        self.last_draw = now
        elapsed = max(now - self.t0, 1e-9)
        bar = "#" * int(self.done / max(self.total, 1) * 30)
        prefix = "\r" if self.live else ""
        sys.stderr.write(f"{prefix}{self.label:<22} [{bar:<30}] {self.done}/{self.total} "
                         f"({self.done / elapsed:.1f}/s, {elapsed:.0f} s)")
        if self.done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()
