"""Once-a-minute messages: the first one, then at most one per interval."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import NamedTuple

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


class Due(NamedTuple):
    """A log line that is due: how many were not logged since the last one, and when that was."""

    skipped: int
    #: Seconds since the last line of its key; None for the first.
    seconds: float | None


class RateLog:
    """The rate limit of a log on a path a sender can drive (one line per request would flood
    the log): per key, the first line, then at most one per ``interval`` seconds; the calls in
    between are counted, and the next line says how many. Thread-safe; ``clock`` may be
    replaced (tests)."""

    __slots__ = ("_last", "_lock", "clock", "interval")

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, tuple[float, int]] = {}  # key: clock() of its last line, skipped

    def due(self, key: str = "") -> Due | None:
        """A :class:`Due` when a line of ``key`` is to be logged now; None (counted) if not."""
        now = self.clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last[0] < self.interval:
                self._last[key] = (last[0], last[1] + 1)
                return None
            self._last[key] = (now, 0)
        if last is None:
            return Due(0, None)
        return Due(last[1], now - last[0])
