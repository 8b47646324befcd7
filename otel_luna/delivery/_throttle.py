"""Once-a-minute messages: the first one, then at most one per interval."""

from __future__ import annotations

import time
from collections.abc import Callable

#: Seconds between the one-line summaries logged when something was retried or dropped, and
#: between repeated warnings (still blocked, more dead letters, dead letters unwritable).
SUMMARY_INTERVAL = 60.0


class Throttle:
    """Says when a recurring message is due: the first time, then at most once per
    ``interval`` seconds (the rest are counted, and the summary reports them)."""

    __slots__ = ("_clock", "_last", "interval")

    def __init__(
        self, interval: float = SUMMARY_INTERVAL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval = interval
        self._clock = clock
        self._last: float | None = None  # clock() of the last message

    def due(self) -> bool:
        now = self._clock()
        if self._last is not None and now - self._last < self.interval:
            return False
        self._last = now
        return True
