"""A progress bar with rate and ETA on a terminal; occasional plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    def __init__(self, label: str = "sync", stream: TextIO | None = None, plain_every_s: float = 5.0) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.label = label
        self.total = 0
        self.done = 0
        self.started = time.monotonic()
        self.last_draw = 0.0
        self.plain_every_s = plain_every_s
        self.closed = False

    def set_total(self, total: int) -> None:
        if total > self.total:
            self.total = total
            self._draw()

    def advance(self, lines: int) -> None:
        if lines:
            self.done += lines
            self.total = max(self.total, self.done)
            self._draw()

    def _draw(self, final: bool = False) -> None:
        now = time.monotonic()
        interval = 0.1 if self.tty else self.plain_every_s
        if not final and now - self.last_draw < interval:
            return
        self.last_draw = now
        elapsed = max(now - self.started, 1e-6)
        rate = self.done / elapsed
        remaining = (self.total - self.done) / rate if rate > 0 and self.total else None
        eta = _clock(remaining) if remaining is not None else "--:--"
        pct = self.done * 100.0 / self.total if self.total else 0.0
        if self.tty:
            width = 30
            filled = int(width * pct / 100)
            bar = "█" * filled + "·" * (width - filled)
            line = f"\r{self.label} {bar} {pct:5.1f}% {self.done}/{self.total} {rate:,.0f}/s ETA {eta} "
            self.stream.write(line)
            self.stream.flush()
        elif self.done or final:
            self.stream.write(
                f"{self.label}: {self.done}/{self.total} lines ({pct:.1f}%), {rate:,.0f}/s, ETA {eta}\n"
            )
            self.stream.flush()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.tty:
            self._draw(final=True)
            self.stream.write("\n")
            self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"
