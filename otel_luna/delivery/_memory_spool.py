"""The memory spool: the same bounded queue as the disk spool, in memory (for read-only
containers, and the part of a :class:`~otel_luna.delivery._fallback_spool.FallbackSpool` that
holds what its disk refused). Lost with the process."""

from __future__ import annotations

import threading
from collections import deque

from otel_luna.delivery._spool import Batch, Spool, check_record
from otel_luna.outcomes import Counts, Reason


class MemorySpool(Spool):
    """A bounded in-memory queue of encoded records."""

    durable = False

    def __init__(self, max_bytes: int, counts: Counts | None = None) -> None:
        self.counts = Counts() if counts is None else counts
        self.max_bytes = max_bytes
        self._records: deque[tuple[bytes, int]] = deque()
        self._bytes = 0
        self._lines = 0
        self._reading = 0  # records handed out by read() and not yet acked
        self._lock = threading.Lock()

    def append(self, body: bytes, lines: int) -> None:
        check_record(body, lines)
        with self._lock:
            self._records.append((body, lines))
            self._bytes += len(body)
            self._lines += lines
            # Drop the oldest records that are not being written right now; keep the newest.
            while self._bytes > self.max_bytes and len(self._records) > self._reading + 1:
                old, old_lines = self._records[self._reading]
                del self._records[self._reading]
                self._bytes -= len(old)
                self._lines -= old_lines
                self.counts.add(Reason.DROPPED_SPOOL_FULL, old_lines)

    def read(self, max_lines: int) -> Batch | None:
        with self._lock:
            if not self._records:
                return None
            bodies: list[bytes] = []
            lines = 0
            for body, count in self._records:
                if bodies and lines + count > max_lines:
                    break
                bodies.append(body)
                lines += count
            self._reading = len(bodies)
            return Batch(b"".join(bodies), lines, len(bodies))

    def ack(self, token: object) -> None:
        assert isinstance(token, int)
        with self._lock:
            for _ in range(token):
                body, lines = self._records.popleft()
                self._bytes -= len(body)
                self._lines -= lines
            self._reading = 0

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    @property
    def pending_lines(self) -> int:
        return self._lines

    @property
    def pending_volatile_lines(self) -> int:
        return self._lines

    def after_fork_in_child(self) -> None:
        """The parent keeps the records; the child starts empty, with a lock of its own."""
        self.counts.after_fork_in_child()
        self.__init__(self.max_bytes, self.counts)  # type: ignore[misc]
