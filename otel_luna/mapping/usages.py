"""Counter data → ``usages_statistic`` points. Pure: samples in, points out.

Each export interval gives one point per service with a field ``<estimator>_usages`` (integer)
for every estimator used in that interval; an interval with no use gives nothing. Cumulative
streams (other SDKs, the OTLP receiver) are turned into deltas per stream by
:class:`CumulativeToDelta`.
"""

from __future__ import annotations

import math
import re
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from otel_luna.mapping.records import UsageSample
from otel_luna.mapping.timestamps import SeriesTimes
from otel_luna.outcomes import Reason
from otel_luna.point import FieldValue, Point
from otel_luna.schema import luna as schema

_ESTIMATOR_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")


def valid_estimator(name: Any) -> bool:
    """An estimator name is an identifier: ``[a-z][a-z0-9_]*``."""
    return isinstance(name, str) and _ESTIMATOR_NAME.match(name) is not None


def origin_of(resource_attributes: Mapping[str, Any]) -> int:
    """The ``origin`` of samples from a resource: a checksum of its attributes, the same for
    the SDK's resource and its OTLP encoding."""
    described = repr(sorted((str(key), repr(value)) for key, value in resource_attributes.items()))
    return zlib.crc32(described.encode(errors="surrogatepass"))


class CumulativeToDelta:
    """Per-stream deltas of cumulative sums, never counting a use twice.

    A stream is (service, estimator). A new start time, or a value lower than the last one, is a
    restart or reset: the value counts from zero again. The first value seen of a stream counts
    in full only if the stream started after this converter did (else it may have been counted
    by a previous run: it becomes the baseline), as the Collector's cumulativetodelta processor
    does with ``initial_value: auto``.
    """

    def __init__(self, created_ns: int | None = None) -> None:
        self._created_ns = time.time_ns() if created_ns is None else created_ns
        self._last: dict[tuple[str, str], tuple[int, float]] = {}

    def delta(self, stream: tuple[str, str], start_ns: int, value: float) -> float:
        last = self._last.get(stream)
        self._last[stream] = (start_ns, value)
        if last is None:
            return value if start_ns >= self._created_ns else 0
        last_start, last_value = last
        if start_ns != last_start or value < last_value:
            return value
        return value - last_value


class UsageMapper:
    """Turns ``luna.usages`` samples into ``usages_statistic`` points."""

    def __init__(self, converter: CumulativeToDelta | None = None) -> None:
        self.counts: Counter[Reason] = Counter()
        self.times = SeriesTimes()
        self._converter = converter if converter is not None else CumulativeToDelta()

    def points(self, samples: Iterable[UsageSample]) -> list[Point]:
        by_point: dict[tuple[str, int, int], dict[str, FieldValue]] = {}
        for sample in samples:
            if not valid_estimator(sample.estimator):
                self.counts[Reason.INVALID_ESTIMATOR] += 1
                continue
            value = sample.value
            if not math.isfinite(value):
                self.counts[Reason.NONFINITE_USAGE] += 1
                continue
            if sample.cumulative:
                value = self._converter.delta(
                    (sample.service, sample.estimator), sample.start_ns, value
                )
            if value < 0:
                self.counts[Reason.NEGATIVE_USAGE] += 1
                continue
            count = round(value)
            if count == 0:
                continue
            fields = by_point.setdefault((sample.service, sample.time_ns, sample.origin), {})
            key = sample.estimator + schema.USAGES_SUFFIX
            fields[key] = int(fields.get(key, 0)) + count
        points = []
        for (service, time_ns, origin), fields in by_point.items():
            tags = (("service", service),)
            # The same data sent again (a retry) keeps its time; other data moves on.
            owner = zlib.crc32(repr(sorted(fields.items())).encode(), origin)
            time_ns = self.times.claim(time_ns, owner, service)
            points.append(Point(schema.USAGES_STATISTIC, tags, fields, time_ns))
        return points
