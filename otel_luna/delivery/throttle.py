"""Once-a-minute messages: the first one, then at most one per interval."""

from __future__ import annotations

import time

#: Seconds between the one-line summaries logged when something was retried or dropped, and
#: between repeated warnings (still blocked, more dead letters, dead letters unwritable).
SUMMARY_INTERVAL = 60.0


class Throttle:
    """Says when a recurring message is due: the first time, then at most once per
    ``interval`` seconds (the rest are counted, and the summary reports them)."""

    __slots__ = ("_last", "interval")

    def __init__(self, interval: float = SUMMARY_INTERVAL) -> None:
        self.interval = interval
        self._last: float | None = None  # time.monotonic() of the last message

    def due(self) -> bool:
        now = time.monotonic()
        if self._last is not None and now - self._last < self.interval:
            return False
        self._last = now
        return True
