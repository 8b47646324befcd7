"""Times that never make one point overwrite another. Pure: numbers in, numbers out.

InfluxDB keeps one point per (measurement, tag set, time): a second point with the same three
replaces the first. Senders with coarse clocks (the Node.js SDK and browsers in milliseconds,
.NET in 100 ns ticks) give many requests of one route the same start time. Two rules keep them
apart, and keep the same span always at the same time (an OTLP retry or a spool replay rewrites
the identical point, so at-least-once delivery stays idempotent):

1. :func:`spread` moves a time within its clock's resolution: the trailing decimal zeros of the
   time (up to nine, one second) are read as the resolution, and filled with the low digits of a
   per-point number (the span id). A nanosecond-resolution time is left as it is; a
   millisecond-aligned one moves by less than a millisecond.
2. :class:`SeriesTimes` remembers the recent (measurement, tags, time) → owner, and moves a
   point whose slot another owner holds forward by a nanosecond until it is free.
"""

from __future__ import annotations

from typing import Any

#: How many recent (measurement, tags, time) slots :class:`SeriesTimes` remembers.
RECENT_LIMIT = 65536
_MAX_RESOLUTION = 10**9


def spread(time_ns: int, salt: int) -> int:
    """``time_ns`` with its trailing decimal zeros (at most 9) replaced by digits of ``salt``."""
    if time_ns % 10:
        return time_ns
    resolution = 10
    while resolution < _MAX_RESOLUTION and time_ns % (resolution * 10) == 0:
        resolution *= 10
    return time_ns + salt % resolution


class SeriesTimes:
    """Gives every owner (a span, a sender) its own time within a series. Not thread-safe:
    the mapper that owns it is used under a lock."""

    def __init__(self, limit: int = RECENT_LIMIT) -> None:
        self.collisions = 0
        self._limit = limit
        self._owners: dict[tuple[str, Any, int], int] = {}

    def claim(self, measurement: str, tags: Any, time_ns: int, owner: int) -> int:
        """The time to write for ``owner``'s point: ``time_ns`` spread by ``owner``, moved on
        while another owner holds the slot."""
        owners = self._owners
        time_ns = spread(time_ns, owner)
        while True:
            key = (measurement, tags, time_ns)
            holder = owners.get(key)
            if holder is None:
                owners[key] = owner
                if len(owners) > self._limit:
                    del owners[next(iter(owners))]
                return time_ns
            if holder == owner:
                return time_ns
            self.collisions += 1
            time_ns += 1
