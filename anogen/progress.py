"""One progress line for long loops: ``<what> step i/n, x it/s, ETA hh:mm:ss``.

Shared by stage 1 (embedding steps), stage 2 (generated images) and stage 3 (detector
steps) so that every long job's log says how far it is and when it will end. A line is
written every ``every`` items or ``seconds`` seconds, whichever comes first, and always for
the last item. The rate is measured over the items done in this process (a resumed job does
not count the steps it inherited), so the ETA is that of the remaining work.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

__all__ = ["Progress", "format_eta"]


def format_eta(seconds: float) -> str:
    """``hh:mm:ss`` (hours may exceed 24); ``--:--:--`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "--:--:--"
    total = int(round(seconds))
    return f"{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"


class Progress:
    """Call :meth:`update` with the number of items done so far (absolute, not a delta)."""

    def __init__(
        self,
        total: int,
        *,
        logger: logging.Logger,
        what: str = "step",
        unit: str = "it",
        start: int = 0,
        every: int | None = None,
        seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total = int(total)
        self.logger = logger
        self.what = what
        self.unit = unit
        self.start = int(start)
        # ~10 lines per run by count; the time limit keeps long steps visible too
        self.every = max(1, int(every) if every else max(1, (self.total - self.start) // 10))
        self.seconds = float(seconds)
        self.clock = clock
        self.t0 = clock()
        self._last_time = self.t0
        self._last_done = self.start

    def rate(self, done: int) -> float:
        elapsed = self.clock() - self.t0
        return (done - self.start) / elapsed if elapsed > 0 else math.nan

    def eta(self, done: int) -> float:
        rate = self.rate(done)
        return (self.total - done) / rate if rate > 0 else math.nan

    def line(self, done: int, extra: str = "") -> str:
        rate = self.rate(done)
        rate_text = f"{rate:.3g} {self.unit}/s" if math.isfinite(rate) else f"? {self.unit}/s"
        text = f"{self.what} {done}/{self.total}, {rate_text}, ETA {format_eta(self.eta(done))}"
        return f"{text}, {extra}" if extra else text

    def update(self, done: int, extra: str | Callable[[], str] = "") -> bool:
        """Log a line if due; returns whether one was written.

        ``extra`` (e.g. the current losses) may be a function, called only when a line is due.
        """
        now = self.clock()
        due = done >= self.total or done - self._last_done >= self.every or now - self._last_time >= self.seconds
        if not due or done == self._last_done:
            return False
        self.logger.info("%s", self.line(done, extra() if callable(extra) else extra))
        self._last_time, self._last_done = now, done
        return True
