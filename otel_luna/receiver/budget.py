"""The in-flight byte budget of one serve process (``serve_max_inflight_bytes``), shared by both
front ends: request bytes being read, inflated and decoded at once, decoded ones counted at
their bound (:mod:`otel_luna.receiver.decoded`)."""

from __future__ import annotations

import threading
import time


class ByteBudget:
    """Request bytes being read or decoded at once (``serve_max_inflight_bytes``), shared by
    the event loop and the decoding threads. When nothing is held any request is admitted, so
    one bigger than the whole budget is not refused for ever."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used = 0
        self._freed = threading.Condition(threading.Lock())

    def take(self, count: int, held: int = 0, wait: float = 0.0) -> bool:
        """Hold ``count`` more bytes; False (nothing held) when that would pass the limit while
        others than the taker (who holds ``held`` already) hold some, still after waiting up to
        ``wait`` seconds for them to give bytes back."""
        deadline = None
        with self._freed:
            while self._used > held and self._used + count > self.limit:
                if deadline is None:
                    deadline = time.monotonic() + wait
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._freed.wait(left)
            self._used += count
            return True

    def give(self, count: int) -> None:
        with self._freed:
            self._used -= count
            self._freed.notify_all()

    @property
    def used(self) -> int:
        with self._freed:
            return self._used
