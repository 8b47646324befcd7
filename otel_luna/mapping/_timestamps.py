"""Times that never make one point overwrite another. Pure: numbers in, numbers out.

InfluxDB keeps one point per (measurement, tag set, time): a second point with the same three
replaces the first. Senders with coarse clocks (the Node.js SDK and browsers in milliseconds,
.NET in 100 ns ticks) give many requests of one route the same start time. Two rules keep them
apart, and keep the same span always at the same time (an OTLP retry or a spool replay rewrites
the identical point, so at-least-once delivery stays idempotent):

1. :func:`spread` moves a time within its clock's resolution: the trailing decimal zeros of the
   time (up to six: a millisecond) are read as the resolution, and filled with the low digits of
   a per-point number (from the span id). A nanosecond-resolution time is left as it is; a
   millisecond-aligned one moves within its millisecond. (A millisecond time that happens to end
   in 0 looks like a 10 ms clock: stopping at six zeros keeps every move inside the millisecond.)
2. :class:`SeriesTimes` remembers the recent time → owner. A point whose time another owner holds
   moves to a time drawn from its own owner number within the next millisecond (a collision
   at nanosecond resolution shows the clock is coarser than it looks), and on from there if that
   one is held too. The draw depends on the owner alone, not on who came first, so a resent
   point finds its old time again even after the memory is gone (a restart, or more than
   :data:`RECENT_LIMIT` newer points) — unless it is the one that first held the contested time.

Senders choose their times, so :func:`time_window` bounds them around the ingest's clock: a
point far in the future would open InfluxDB shard groups ahead of time, outside every
dashboard's view and every retention policy's reach until that time has passed.
"""

from __future__ import annotations

#: How many recent times :class:`SeriesTimes` remembers (between half and all of them).
RECENT_LIMIT = 65536
_MAX_RESOLUTION = 10**6
#: Nanoseconds within which a point that collided is moved.
MOVE_WINDOW = 10**6
_MASK64 = 2**64 - 1


#: Beyond any time a point can have: a bound that is off.
_NO_BOUND = 2**64


def time_window(now_ns: int, max_ahead_ns: int, max_age_ns: int) -> tuple[int, int]:
    """The (earliest, latest) time a point may have when the clock reads ``now_ns``: at most
    ``max_age_ns`` before it and ``max_ahead_ns`` after it; a bound of 0 is no bound."""
    earliest = now_ns - max_age_ns if max_age_ns else -_NO_BOUND
    latest = now_ns + max_ahead_ns if max_ahead_ns else _NO_BOUND
    return earliest, latest


def owner_of(trace_id: int, span_id: int) -> int:
    """The exact identity of a span as one number: trace id and span id side by side. Not a
    mix: a mix collides (Zipkin-style senders give a root span the trace id's low 64 bits as its
    span id, so trace XOR span is 0 for all of them), and two spans with one owner number are one
    point to the guard. Callers on the hot path write the expression inline."""
    return (trace_id << 64) | span_id


def spread(time_ns: int, salt: int) -> int:
    """``time_ns`` with its trailing decimal zeros (at most 6) replaced by digits of ``salt``."""
    if time_ns % 10:
        return time_ns
    resolution = 10
    while resolution < _MAX_RESOLUTION and time_ns % (resolution * 10) == 0:
        resolution *= 10
    return time_ns + salt % resolution


def _draw(owner: int, attempt: int) -> int:
    """A number in [1, MOVE_WINDOW] that depends only on ``owner`` (all of its bits) and
    ``attempt``."""
    # hash() of an int is its value modulo 2**61 - 1: every bit counts, the same in every process.
    mixed = ((hash(owner) + attempt * 0x9E3779B97F4A7C15) * 0xBF58476D1CE4E5B9) & _MASK64
    return 1 + (mixed >> 20) % MOVE_WINDOW


class SeriesTimes:
    """Gives every owner (a span, a sender) a time of its own. Not thread-safe: the mapper that
    owns it is used under a lock.

    A slot is a time alone, not (measurement, tags, time): two points of one mapper never share
    a time at all. That is stricter than InfluxDB needs (a move between different series is
    harmless) and cheaper: no tag set is hashed per point. The recent slots live in two
    generations of dicts, swapped when the newer one is full, so forgetting the oldest costs
    nothing per point (deleting a dict's first key one by one makes every later lookup of the
    first key walk the holes: 33 µs per point at 65,536 entries).
    """

    def __init__(self, limit: int = RECENT_LIMIT) -> None:
        self.collisions = 0
        self._generation = max(1, limit // 2)
        self._current: dict[int, int] = {}
        self._previous: dict[int, int] = {}

    def claim(self, time_ns: int, owner: int) -> int:
        """The time to write for ``owner``'s point: ``time_ns`` spread by ``owner``, moved when
        another owner holds it."""
        if time_ns % 10 == 0:
            time_ns = spread(time_ns, owner)
        base, attempt = time_ns, 0
        while True:
            holder = self._current.get(time_ns)
            if holder is None:
                holder = self._previous.get(time_ns)
                if holder is None:
                    self._current[time_ns] = owner
                    if len(self._current) >= self._generation:
                        self._previous, self._current = self._current, {}
                    return time_ns
            if holder == owner:
                return time_ns
            self.collisions += 1
            attempt += 1
            time_ns = base + _draw(owner, attempt)
