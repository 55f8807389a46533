"""Progress of long work on a terminal: one line, rewritten in place, at most twice a second.

When stderr is not a terminal nothing is printed: piped output stays parseable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from recoverd.engine import Progress
from recoverd.output import human_bytes, raw_stream
from recoverd.text import visible


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressLine:
    """A callable that shows :class:`Progress` reports as one terminal line."""

    def __init__(self, label: str, stream: TextIO | None = None, interval: float = 0.5) -> None:
        self.label = visible(label)
        # The line's own \r and erase-line sequences must reach the terminal as they are.
        self.stream = raw_stream(stream or sys.stderr)
        self.enabled = self.stream.isatty()
        self.interval = interval
        self._last = 0.0
        self._shown = False
        self._first: tuple[float, int] | None = None
        """When bytes were first reported, and how many: the rate is measured from there."""

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        if not self.enabled or now - self._last < self.interval:
            return
        self._last = now
        parts = [self.label]
        if progress.fraction is not None:
            parts.append(f"{progress.fraction * 100:5.1f}%")
        if progress.files_done is not None:
            total = f"/{progress.files_total}" if progress.files_total else ""
            parts.append(f"{progress.files_done}{total} files")
        if progress.bytes_done is not None:
            total = f"/{human_bytes(progress.bytes_total)}" if progress.bytes_total else ""
            parts.append(f"{human_bytes(progress.bytes_done)}{total}")
            if self._first is None:
                self._first = (now, progress.bytes_done)
            elif now > self._first[0]:
                rate = (progress.bytes_done - self._first[1]) / (now - self._first[0])
                parts.append(f"{human_bytes(rate)}/s")
        if progress.eta_s:
            parts.append(f"ETA {_clock(progress.eta_s)}")
        self.stream.write("\r\x1b[K" + "  ".join(parts))
        self.stream.flush()
        self._shown = True

    def done(self) -> None:
        """Clear the line so that the next output starts clean."""
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False
