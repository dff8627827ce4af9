"""A one-line progress bar for long command-line runs.

It draws only when its stream is a terminal, so logs, pipes and test
captures stay clean, and it redraws at most every ``interval`` seconds so
that advancing it per inode costs next to nothing.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO


class Progress:
    """Counts work done against an optional total and shows it as ``label [###...] 42% 420/1000``."""

    def __init__(self, label: str, total: int | None = None, stream: TextIO | None = None,
                 interval: float = 0.1):
        self.label = label
        self.total = total
        self.done = 0
        self.stream = sys.stderr if stream is None else stream
        self.enabled = _isatty(self.stream)
        self.interval = interval
        self._last = 0.0

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.enabled:
            now = time.monotonic()
            if now - self._last >= self.interval:
                self._last = now
                self._draw()

    def line(self, width: int) -> str:
        """The bar as text that fits ``width`` columns."""
        if not self.total:
            return f"{self.label} {self.done}"[:width]
        frac = min(1.0, self.done / self.total)
        counts = f" {frac:4.0%} {self.done}/{self.total}"
        room = width - len(self.label) - len(counts) - 3
        if room < 5:
            return f"{self.label}{counts}"[:width]
        filled = int(room * frac)
        return f"{self.label} [{'#' * filled}{'.' * (room - filled)}]{counts}"

    def _draw(self) -> None:
        width = shutil.get_terminal_size((80, 24)).columns - 1
        self.stream.write("\r" + self.line(width))
        self.stream.flush()

    def message(self, text: str) -> None:
        """Print a line of its own on the stream, above the bar."""
        if self.enabled and self._last:
            self.stream.write("\r\x1b[K")
            self._last = 0.0
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Erase the bar, so that whatever is printed next starts on a clean line."""
        if self.enabled and self._last:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
        self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
