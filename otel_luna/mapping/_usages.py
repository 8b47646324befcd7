"""Counter data → ``usages_statistic`` points. Pure: samples in, points out.

Each export interval gives one point per service with a field ``<estimator>_usages`` (integer)
for every estimator used in that interval; an interval with no use gives nothing. Cumulative
streams (other SDKs, the OTLP receiver) are turned into deltas per stream — told apart by their
full identity — by :class:`CumulativeToDelta`.
"""

from __future__ import annotations

import math
import re
import time
import zlib
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Any, NamedTuple

from otel_luna.mapping._records import UsageSample
from otel_luna.mapping._timestamps import SeriesTimes
from otel_luna.outcomes import Counting, Reason
from otel_luna.schema import luna as schema
from otel_luna.schema._keys import MAX_FIELD_KEY_BYTES
from otel_luna.schema._point import FieldValue, Point

_ESTIMATOR_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")


#: Longest estimator name: its field key ``<name>_usages`` fits :data:`MAX_FIELD_KEY_BYTES`.
MAX_ESTIMATOR_LENGTH = MAX_FIELD_KEY_BYTES - len(schema.USAGES_SUFFIX)


def valid_estimator(name: Any) -> bool:
    """An estimator name is an identifier, ``[a-z][a-z0-9_]*``, of at most
    :data:`MAX_ESTIMATOR_LENGTH` characters (its field key must not be too long to write)."""
    return (
        isinstance(name, str)
        and len(name) <= MAX_ESTIMATOR_LENGTH
        and _ESTIMATOR_NAME.match(name) is not None
    )


#: How many cumulative streams :class:`CumulativeToDelta` follows at most; a new one past it
#: evicts the least recently seen (``usage_stream_evicted``). A sender has a stream per
#: estimator (the SDK keeps at most 2,000 per instrument), so this is hundreds of senders.
STREAM_LIMIT = 10_000
#: A stream not seen for this long is forgotten (``usage_stream_expired``): its sender is gone
#: (an SDK exports every cumulative stream each interval, 60 s by default, used or not).
STALE_NS = 3600 * 10**9


#: How far ahead of ours a sender's clock may run for forgetting a stream to stay sound (the
#: marks it raises are never put past now plus this): ``max_time_ahead``, whose later points
#: are not written anyway.
MAX_AHEAD_NS = 600 * 10**9
#: A stream of unknown start time whose value goes down twice within this long (its points'
#: times) is reported as maybe two senders alike (``usage_stream_overlap``): restarts are rarer.
OVERLAP_WINDOW_NS = 600 * 10**9


class _Last(NamedTuple):
    """What a stream's next point is compared with."""

    start_ns: int
    time_ns: int
    value: float
    seen_ns: int  # the converter's clock when it came
    #: When (point time) its value last went down; 0 if never.
    reset_ns: int = 0


class CumulativeToDelta:
    """Per-stream deltas of cumulative sums, never counting a use twice.

    A stream is its full identity, as the Collector's ``cumulativetodelta`` has it: resource,
    scope and point attributes (``UsageSample.stream``, with service and estimator) and the start
    time. A second sender, or a restart (a new start time: the OpenTelemetry data model's reset),
    is a stream of its own, so no sender's value is ever subtracted from another's.

    The first point of a stream counts in full only if the stream started after this converter
    did — its ``start_time_unix_nano`` says from when the value counts, and we were watching
    since before then — else it is the baseline (uses before it may have been counted by a
    previous run: the Collector's ``initial_value: auto``). Its start must be after ours on both
    clocks: by its start time, and by its age on its own clock (``time - start``) counted back
    from when the point came — so a sender whose clock runs ahead of ours does not count in full
    again a stream a previous run counted, unless its point also came later after being made
    than the stream's age at our start. A point with an
    unknown start (0, or not before its time: the data model's "unknown start time") is a
    baseline too, and so is every first point when ``first_in_full`` is false: where another
    process may have counted the stream's earlier points (``serve --workers N``, whose clients'
    connections can move from one worker to another). A baseline must be newer than this
    converter's start: a point retried across a restart may be older than one a previous run
    had.

    Within a stream with a start time, a later point with a lower value is a reset without a
    new start time (a Prometheus-style counter): it counts from zero again. A point not later
    than the last one (an out-of-order or late retried request) adds nothing: equal, it is the
    same point again; older or lower, it is counted as ``out_of_order_usage``.

    A stream of unknown start time cannot tell a reset from a second sender alike in everything
    (the data model's single-writer rule broken): both go down, and the second sender's values
    then look like growth. A lower value is counted as a reset, which is exact for the one
    sender the data model allows (a restart loses nothing); senders alike add up (inflate), and
    no rule on values alone can avoid it without losing a restarting sender's uses. So a stream
    whose value goes down twice within ``OVERLAP_WINDOW_NS`` of its point times is counted as
    ``usage_stream_overlap`` and named in :attr:`overlaps`, for the caller to warn about.

    At most ``limit`` streams are kept; past it the least recently seen is evicted, and one not
    seen for ``stale_ns`` expires. A forgotten stream that comes back must not count again what
    was counted, so forgetting one raises two marks (never past now plus ``max_ahead_ns``,
    whatever a sender's clock says): a stream first seen must have started after the forgotten
    one's start to count in full, else it is a baseline; and a baseline must be newer than the
    forgotten one's last point, else the point is ignored (``out_of_order_usage``). A forgotten
    stream thus comes back as a baseline taken from a point newer than any it had. The cost
    falls on streams first seen after an eviction that started before it: their first interval
    is not counted. Forgetting may undercount, never double count (but for a sender clock
    running more than ``max_ahead_ns`` ahead, whose points are not written anyway). ``clock``
    gives the current time in ns (tests inject it).
    """

    def __init__(
        self,
        created_ns: int | None = None,
        *,
        limit: int = STREAM_LIMIT,
        stale_ns: int = STALE_NS,
        clock: Callable[[], int] = time.time_ns,
        first_in_full: bool = True,
        max_ahead_ns: int = MAX_AHEAD_NS,
    ) -> None:
        self._clock = clock
        self._max_ahead_ns = max_ahead_ns or MAX_AHEAD_NS
        #: The streams (as :meth:`delta` was given them) seen to overlap since last taken.
        self.overlaps: list[Any] = []
        self._first_in_full = first_in_full
        self._created_ns = clock() if created_ns is None else created_ns
        #: A stream first seen counts in full only if it started at or after this.
        self._counts_from_ns = self._created_ns
        #: A baseline must be newer than this: the last point of the streams forgotten — and
        #: of those a previous run saw (a point retried across a restart is no baseline).
        self._forgotten_ns = self._created_ns
        self._limit = max(1, limit)
        self._stale_ns = stale_ns
        #: Least recently seen first.
        self._last: OrderedDict[Hashable, _Last] = OrderedDict()
        self._now = self._created_ns

    def __len__(self) -> int:
        return len(self._last)

    def expire(self, counts: Counter[Reason]) -> None:
        """Read the clock for the points that follow; forget the streams not seen for
        ``stale_ns``."""
        self._now = now = self._clock()
        last = self._last
        stale_before = now - self._stale_ns
        while last:
            oldest = next(iter(last.values()))
            if oldest.seen_ns >= stale_before:
                break
            last.popitem(last=False)
            self._forgot(oldest)
            counts[Reason.USAGE_STREAM_EXPIRED] += 1

    def _forgot(self, stream: _Last) -> None:
        now = self._now + self._max_ahead_ns
        if stream.start_ns and stream.start_ns < stream.time_ns:
            self._counts_from_ns = max(self._counts_from_ns, min(stream.start_ns + 1, now))
        self._forgotten_ns = max(self._forgotten_ns, min(stream.time_ns, now))

    def delta(
        self, stream: Hashable, start_ns: int, time_ns: int, value: float, counts: Counter[Reason]
    ) -> float:
        """The uses of ``stream`` (its identity without the start time) since its last point."""
        key = (stream, start_ns)
        last = self._last.get(key)
        known_start = 0 < start_ns < time_ns
        if last is None:
            new = (
                self._first_in_full
                and known_start
                and 0 < self._counts_from_ns <= start_ns
                # and by its age on its own clock, had it come at once
                and self._now - (time_ns - start_ns) >= self._counts_from_ns
            )
            if not new and time_ns <= self._forgotten_ns:  # maybe older than one forgotten
                counts[Reason.OUT_OF_ORDER_USAGE] += 1
                return 0
            if len(self._last) >= self._limit:
                _, evicted = self._last.popitem(last=False)
                self._forgot(evicted)
                counts[Reason.USAGE_STREAM_EVICTED] += 1
            self._last[key] = _Last(start_ns, time_ns, value, self._now)
            if new:  # started after we did, and after any stream we forgot: nothing missed
                return value
            counts[Reason.USAGE_BASELINE] += 1
            return 0
        if time_ns < last.time_ns or (time_ns == last.time_ns and value < last.value):
            counts[Reason.OUT_OF_ORDER_USAGE] += 1
            return 0
        self._last.move_to_end(key)
        if value >= last.value:
            self._last[key] = _Last(start_ns, time_ns, value, self._now, last.reset_ns)
            return value - last.value
        # A reset: counts from zero again (or, of unknown start, maybe a second sender alike).
        if not known_start and last.reset_ns and time_ns - last.reset_ns < OVERLAP_WINDOW_NS:
            counts[Reason.USAGE_STREAM_OVERLAP] += 1
            self.overlaps.append(stream)
        self._last[key] = _Last(start_ns, time_ns, value, self._now, time_ns)
        return value


#: How many (service, estimator) pairs :class:`UsageMapper` remembers having reported as
#: overlapping; past it, no more are reported (the counter still counts).
OVERLAPS_REPORTED = 1000


class UsageMapper(Counting):
    """Turns ``luna.usages`` samples into ``usages_statistic`` points; what it drops is
    counted (``counts``, handed over by :meth:`take_counts`)."""

    def __init__(
        self, converter: CumulativeToDelta | None = None, *, times: SeriesTimes | None = None
    ) -> None:
        """``times``: the times its points claim, shared with the span mapper of its profile
        (a request's usages point and this one's never share a time)."""
        super().__init__()
        self.times = SeriesTimes() if times is None else times
        self._converter = converter if converter is not None else CumulativeToDelta()
        #: (service, estimator) seen to overlap for the first time (``usage_stream_overlap``),
        #: for the caller to warn about once (:meth:`take_new_overlaps`).
        self._new_overlaps: list[tuple[str, str]] = []
        self._reported: set[tuple[str, str]] = set()

    def take_new_overlaps(self) -> list[tuple[str, str]]:
        """(service, estimator) seen to overlap for the first time since the last call
        (``usage_stream_overlap``), for the caller to warn about once; at most
        :data:`OVERLAPS_REPORTED` in all."""
        new, self._new_overlaps = self._new_overlaps, []
        return new

    def points(self, samples: Iterable[UsageSample]) -> list[Point]:
        by_point: dict[tuple[str, int, int], dict[str, FieldValue]] = {}
        counts, converter = self.counts, self._converter
        converter.expire(counts)
        for sample in samples:
            if not valid_estimator(sample.estimator):
                counts[Reason.INVALID_ESTIMATOR] += 1
                continue
            value = sample.value
            if not math.isfinite(value):
                counts[Reason.NONFINITE_USAGE] += 1
                continue
            if value < 0:
                counts[Reason.NEGATIVE_USAGE] += 1
                continue
            if value != int(value):  # 2.5 uses: never rounded
                counts[Reason.FRACTIONAL_USAGE] += 1
                continue
            if sample.cumulative:
                stream = (sample.service, sample.estimator, sample.stream)
                value = converter.delta(stream, sample.start_ns, sample.time_ns, value, counts)
            count = int(value)
            if count == 0:
                continue
            fields = by_point.setdefault((sample.service, sample.time_ns, sample.origin), {})
            key = sample.estimator + schema.USAGES_SUFFIX
            fields[key] = int(fields.get(key, 0)) + count
        for service, estimator, _ in converter.overlaps:
            pair = (service, estimator)
            if pair not in self._reported and len(self._reported) < OVERLAPS_REPORTED:
                self._reported.add(pair)
                self._new_overlaps.append(pair)
        converter.overlaps.clear()
        points = []
        for (service, time_ns, origin), fields in by_point.items():
            tags = (("service", service),)
            # The same data sent again (a retry) keeps its time; other data moves on.
            owner = zlib.crc32(repr(sorted(fields.items())).encode(), origin)
            time_ns = self.times.claim(time_ns, owner)
            points.append(Point(schema.USAGES_STATISTIC, tags, fields, time_ns))
        return points
