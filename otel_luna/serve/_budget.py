"""The in-flight byte budget of one serve process (``serve_max_inflight_bytes``), shared by both
front ends: request bytes being read, inflated and decoded at once, decoded ones counted at
their bound (:mod:`otel_luna.serve._decoded`)."""

from __future__ import annotations

import collections
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
        #: Takers waiting for room, oldest first, and the bytes they hold while they wait.
        self._waiting: collections.deque[tuple[object, int]] = collections.deque()
        self._parked = 0

    def take(self, count: int, held: int = 0, wait: float = 0.0) -> bool:
        """Hold ``count`` more bytes; False (nothing more held) when that would pass the limit
        while others than the taker (who holds ``held`` already) hold some, still after waiting
        up to ``wait`` seconds for them to give bytes back.

        Waiters hold bytes too (a request body, read, waiting to be decoded): two large
        requests waiting for each other would wait for ever. So the oldest waiter goes as soon
        as every byte held belongs to waiters, as a request alone would."""
        with self._freed:
            if self._used <= held or self._used + count <= self.limit:
                self._used += count
                return True
            if wait <= 0:
                return False
            me = (object(), held)  # compared by identity
            self._waiting.append(me)
            self._parked += held
            self._freed.notify_all()  # the oldest waiter may go now that these bytes wait too
            deadline = time.monotonic() + wait
            try:
                while True:
                    if self._used + count <= self.limit or (
                        self._waiting[0] is me and self._used <= self._parked
                    ):
                        self._used += count
                        return True
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._freed.wait(left)
            finally:
                self._waiting.remove(me)
                self._parked -= held
                self._freed.notify_all()  # the next oldest may go now

    def give(self, count: int) -> None:
        with self._freed:
            self._used -= count
            self._freed.notify_all()

    @property
    def used(self) -> int:
        with self._freed:
            return self._used
