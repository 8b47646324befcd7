"""The LUNA report's numbers: what a LUNA PLATFORM dashboard shows, computed from the points.

Per service and route (``requests`` / ``errors``, ``shared/seeds/000_*.txt``): request rate,
p50/p95/p99 of ``execution_time``, error rate and the most frequent ``error_code`` values, and
the stage timing (a ``*_time`` field) that takes the most time; per service: the estimations of
``usages_statistic`` per estimator summed per time bucket, the estimations per request (one
``usages_statistic`` point per request that ran an estimation, so the points count the requests
with usages), and the licence checks of ``licensing`` (status, ``liveness_balance`` over time,
the last warnings and errors).

:func:`summarize` is pure: points in, a :class:`LunaReport` of numbers out. Percentiles are
nearest rank (:func:`otel_luna.report.nearest_rank`), as in the watchdog report; timelines use
buckets aligned like InfluxQL's ``GROUP BY time()`` (multiples of the bucket width since the
epoch), so each bucket equals that query's.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from otel_luna.report._durations import SECOND_NS as _SECOND
from otel_luna.report._source import Skipped
from otel_luna.report._stats import nearest_rank
from otel_luna.schema import FieldValue, Point
from otel_luna.schema.luna import (
    ERRORS,
    LICENSE_STATUSES,
    LICENSING,
    REQUESTS,
    USAGES_STATISTIC,
    USAGES_SUFFIX,
)

__all__ = [
    "BUCKET_WIDTHS_NS",
    "MAX_BUCKETS",
    "MEASUREMENTS",
    "MIN_RATE_SECONDS",
    "EstimationsPerRequest",
    "EstimatorUsage",
    "Latency",
    "LicenseCheck",
    "Licensing",
    "LunaReport",
    "RouteReport",
    "ServiceReport",
    "Stage",
    "bucket_width",
    "report_as_dict",
    "summarize",
]

#: The series the report reads.
MEASUREMENTS = (REQUESTS, ERRORS, USAGES_STATISTIC, LICENSING)
EXECUTION_TIME = "execution_time"
#: A ``requests`` field ending so (other than ``execution_time``) is a stage timing, in seconds.
STAGE_SUFFIX = "_time"
#: Widths the timelines' buckets may take: the smallest that gives at most MAX_BUCKETS.
_SECONDS_WIDTHS: tuple[int, ...] = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)
_SECONDS_WIDTHS += (7200, 10800, 21600, 43200, 86400, 2 * 86400, 7 * 86400)
BUCKET_WIDTHS_NS = (100_000_000, 200_000_000, 500_000_000, *(n * _SECOND for n in _SECONDS_WIDTHS))
MAX_BUCKETS = 60
#: Rates (requests per second) are given over a period of at least this; below, a count over
#: a few nanoseconds would read as billions per second.
MIN_RATE_SECONDS = 0.1


@dataclass(frozen=True)
class Latency:
    """Nearest-rank p50, p95, p99 and the max of ``execution_time`` (seconds) of ``count``
    requests; ``None`` when there are none."""

    count: int
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None


@dataclass(frozen=True)
class Stage:
    """One stage timing of a route: the ``requests`` points that carry it, their sum and mean
    (seconds), and ``share``: the sum over the sum of the route's ``execution_time`` (stages that
    run concurrently can add up to more than 1)."""

    field: str
    requests: int
    total: float
    mean: float
    share: float | None


@dataclass(frozen=True)
class RouteReport:
    """One route of a service (``route`` empty: all its routes). ``rate``: requests per second
    over the report's period; ``error_rate``: ``errors`` points over ``requests`` points;
    ``error_codes``: every code with its count, most frequent first; ``stages``: most time
    first. The ``*_over_time`` tuples have one value per bucket of :attr:`LunaReport.buckets`."""

    route: str
    requests: int
    rate: float | None
    latency: Latency
    errors: int
    error_rate: float | None
    error_codes: tuple[tuple[str, int], ...]
    stages: tuple[Stage, ...]
    requests_over_time: tuple[int, ...]
    errors_over_time: tuple[int, ...]
    p95_over_time: tuple[float | None, ...]

    @property
    def dominant_stage(self) -> Stage | None:
        """The stage with the most time, if the route records any."""
        return self.stages[0] if self.stages else None


@dataclass(frozen=True)
class EstimatorUsage:
    """``<estimator>_usages`` of a service: the sum, the points carrying it, and the sum per
    bucket."""

    estimator: str
    total: int
    points: int
    over_time: tuple[int, ...]


@dataclass(frozen=True)
class EstimationsPerRequest:
    """The estimations of a service (every ``<estimator>_usages`` field summed) per request:
    ``per_request_with_usages`` over the ``usages_statistic`` points (one per request that ran
    an estimation), ``per_request`` over all its ``requests`` points; ``None`` without such
    points. ``over_time``: estimations per ``requests`` point in each bucket (``None``: a
    bucket without requests)."""

    estimations: int
    requests_with_usages: int
    requests: int
    per_request_with_usages: float | None
    per_request: float | None
    over_time: tuple[float | None, ...]


@dataclass(frozen=True)
class LicenseCheck:
    """One ``licensing`` point."""

    time_ns: int
    status: str
    liveness_balance: int | None
    warnings: str
    errors: str


@dataclass(frozen=True)
class Licensing:
    """The licence checks of a service: how many, per ``license_status``, the latest, and
    ``liveness_balance`` first, lowest and last (of the checks that carry it)."""

    checks: int
    statuses: Mapping[str, int]
    last: LicenseCheck
    balance_first: int | None
    balance_min: int | None
    balance_last: int | None
    history: tuple[LicenseCheck, ...]


@dataclass(frozen=True)
class ServiceReport:
    """Everything about one ``service`` tag value."""

    service: str
    overall: RouteReport
    routes: tuple[RouteReport, ...]
    usage_points: int
    usages: tuple[EstimatorUsage, ...]
    per_request: EstimationsPerRequest
    licensing: Licensing | None


@dataclass(frozen=True)
class LunaReport:
    """The report. ``first_ns`` / ``last_ns``: the earliest and latest point read; ``start_ns``
    / ``end_ns``: the period rates are counted over (the ``--since`` window, else first to last
    point); ``buckets``: the timelines' bucket starts, ``bucket_ns`` wide."""

    first_ns: int | None
    last_ns: int | None
    start_ns: int | None
    end_ns: int | None
    bucket_ns: int | None
    buckets: tuple[int, ...]
    points: Mapping[str, int]
    services: tuple[ServiceReport, ...]
    skipped: Skipped = dataclasses.field(default_factory=Skipped)

    @property
    def seconds(self) -> float | None:
        """Length of the period in seconds (``None`` without points)."""
        if self.start_ns is None or self.end_ns is None:
            return None
        return (self.end_ns - self.start_ns) / _SECOND

    @property
    def rate_seconds(self) -> float | None:
        """The period rates are counted over: :attr:`seconds` when at least
        :data:`MIN_RATE_SECONDS`, else ``None`` (no rates)."""
        seconds = self.seconds
        return seconds if seconds is not None and seconds >= MIN_RATE_SECONDS else None


# -- pure computation ---------------------------------------------------------------------------


def bucket_width(start_ns: int, end_ns: int) -> int:
    """The smallest width of :data:`BUCKET_WIDTHS_NS` that cuts ``start_ns`` … ``end_ns`` into at
    most :data:`MAX_BUCKETS` epoch-aligned buckets (whole days beyond the list)."""
    for width in BUCKET_WIDTHS_NS:
        if end_ns // width - start_ns // width + 1 <= MAX_BUCKETS:
            return width
    day = 86400 * _SECOND
    days = math.ceil((end_ns - start_ns) / day / (MAX_BUCKETS - 1))
    return days * day


def _number(value: FieldValue | None) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _count(value: FieldValue | None) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _tag(point: Point, key: str) -> str:
    for name, value in point.tags:
        if name == key:
            return value
    return ""


class _Timeline:
    def __init__(self, buckets: Sequence[int], width: int | None) -> None:
        self.size = len(buckets)
        self.width = width
        self.first = buckets[0] // width if buckets and width else 0

    def index(self, time_ns: int) -> int | None:
        if not self.size or not self.width:
            return None
        slot = time_ns // self.width - self.first
        return slot if 0 <= slot < self.size else None


def _stage(field: str, values: Sequence[float], execution: float) -> Stage:
    total = math.fsum(values)
    share = total / execution if execution > 0 else None
    return Stage(field, len(values), total, total / len(values), share)


def _route(
    route: str,
    requests: Sequence[Point],
    errors: Sequence[Point],
    seconds: float | None,
    timeline: _Timeline,
) -> RouteReport:
    times = [t for p in requests if (t := _number(p.fields.get(EXECUTION_TIME))) is not None]
    latency = Latency(
        len(times),
        nearest_rank(times, 50),
        nearest_rank(times, 95),
        nearest_rank(times, 99),
        max(times) if times else None,
    )
    stage_sums: dict[str, list[float]] = {}
    for point in requests:
        for name, raw in point.fields.items():
            if name == EXECUTION_TIME or not name.endswith(STAGE_SUFFIX):
                continue
            value = _number(raw)
            if value is not None:
                stage_sums.setdefault(name, []).append(value)
    execution = math.fsum(times)
    stages = sorted(
        (_stage(name, values, execution) for name, values in stage_sums.items()),
        key=lambda stage: (-stage.total, stage.field),
    )
    codes = Counter(_tag(point, "error_code") for point in errors)
    counts = [0] * timeline.size
    failed = [0] * timeline.size
    per_bucket: list[list[float]] = [[] for _ in range(timeline.size)]
    for point in requests:
        slot = timeline.index(point.time_ns)
        if slot is not None:
            counts[slot] += 1
            value = _number(point.fields.get(EXECUTION_TIME))
            if value is not None:
                per_bucket[slot].append(value)
    for point in errors:
        slot = timeline.index(point.time_ns)
        if slot is not None:
            failed[slot] += 1
    return RouteReport(
        route=route,
        requests=len(requests),
        rate=len(requests) / seconds if seconds else None,
        latency=latency,
        errors=len(errors),
        error_rate=len(errors) / len(requests) if requests else None,
        error_codes=tuple(sorted(codes.items(), key=lambda item: (-item[1], item[0]))),
        stages=tuple(stages),
        requests_over_time=tuple(counts),
        errors_over_time=tuple(failed),
        p95_over_time=tuple(nearest_rank(values, 95) for values in per_bucket),
    )


def _usages(points: Sequence[Point], timeline: _Timeline) -> tuple[EstimatorUsage, ...]:
    totals: Counter[str] = Counter()
    carried: Counter[str] = Counter()
    over_time: dict[str, list[int]] = {}
    for point in points:
        for name, raw in point.fields.items():
            value = _count(raw)
            if not name.endswith(USAGES_SUFFIX) or value is None:
                continue
            estimator = name[: -len(USAGES_SUFFIX)]
            totals[estimator] += value
            carried[estimator] += 1
            line = over_time.setdefault(estimator, [0] * timeline.size)
            slot = timeline.index(point.time_ns)
            if slot is not None:
                line[slot] += value
    return tuple(
        EstimatorUsage(name, totals[name], carried[name], tuple(over_time[name]))
        for name in sorted(totals, key=lambda name: (-totals[name], name))
    )


def _per_request(
    usages: Sequence[EstimatorUsage], usage_points: int, overall: RouteReport
) -> EstimationsPerRequest:
    estimations = sum(usage.total for usage in usages)
    per_bucket = [sum(column) for column in zip(*(u.over_time for u in usages), strict=True)]
    per_bucket = per_bucket or [0] * len(overall.requests_over_time)
    return EstimationsPerRequest(
        estimations=estimations,
        requests_with_usages=usage_points,
        requests=overall.requests,
        per_request_with_usages=estimations / usage_points if usage_points else None,
        per_request=estimations / overall.requests if overall.requests else None,
        over_time=tuple(
            used / requests if requests else None
            for used, requests in zip(per_bucket, overall.requests_over_time, strict=True)
        ),
    )


def _licensing(points: Sequence[Point]) -> Licensing | None:
    history = tuple(
        LicenseCheck(
            point.time_ns,
            _tag(point, "license_status"),
            _count(point.fields.get("liveness_balance")),
            str(point.fields.get("warnings", "")),
            str(point.fields.get("errors", "")),
        )
        for point in points
    )
    if not history:
        return None
    statuses = Counter(check.status for check in history)
    order = [*LICENSE_STATUSES, *sorted(set(statuses) - set(LICENSE_STATUSES))]
    balances = [check.liveness_balance for check in history if check.liveness_balance is not None]
    return Licensing(
        checks=len(history),
        statuses={status: statuses[status] for status in order if statuses[status]},
        last=history[-1],
        balance_first=balances[0] if balances else None,
        balance_min=min(balances) if balances else None,
        balance_last=balances[-1] if balances else None,
        history=history,
    )


def summarize(
    points: Iterable[Point],
    *,
    start_ns: int | None = None,
    end_ns: int | None = None,
    service: str | None = None,
    skipped: Skipped | None = None,
) -> LunaReport:
    """The report of ``points``. Pure.

    Points outside ``start_ns`` … ``end_ns`` or of another ``service`` (when given) are left
    out. That is the period, each end defaulting to the earliest / latest point; rates are
    given when it is at least :data:`MIN_RATE_SECONDS` long. Points are taken in time order
    (then measurement and tags), so sums do not depend on the source. ``skipped``: the lines
    the reader left out, carried into the report.
    """
    kept = sorted(
        (
            point
            for point in points
            if point.measurement in MEASUREMENTS
            and (start_ns is None or point.time_ns >= start_ns)
            and (end_ns is None or point.time_ns <= end_ns)
            and (service is None or _tag(point, "service") == service)
        ),
        key=lambda point: (point.time_ns, point.measurement, point.tags),
    )
    first = kept[0].time_ns if kept else None
    last = kept[-1].time_ns if kept else None
    start = start_ns if start_ns is not None else first
    end = end_ns if end_ns is not None else last
    width: int | None = None
    buckets: tuple[int, ...] = ()
    if start is not None and end is not None and end >= start:
        width = bucket_width(start, end)
        buckets = tuple(range(start // width * width, end // width * width + 1, width))
    timeline = _Timeline(buckets, width)
    seconds = None if start is None or end is None else (end - start) / _SECOND
    if seconds is not None and seconds < MIN_RATE_SECONDS:
        seconds = None
    by_service: dict[str, dict[str, list[Point]]] = {}
    for point in kept:
        series = by_service.setdefault(_tag(point, "service"), {name: [] for name in MEASUREMENTS})
        series[point.measurement].append(point)
    services = []
    for name in sorted(by_service):
        series = by_service[name]
        requests, errors = series[REQUESTS], series[ERRORS]
        by_route: dict[str, tuple[list[Point], list[Point]]] = {}
        for index, points_of in enumerate((requests, errors)):
            for point in points_of:
                by_route.setdefault(_tag(point, "route"), ([], []))[index].append(point)
        route_reports = [
            _route(route, route_requests, route_errors, seconds, timeline)
            for route, (route_requests, route_errors) in by_route.items()
        ]
        route_reports.sort(key=lambda report: (-report.requests, report.route))
        overall = _route("", requests, errors, seconds, timeline)
        usage_points = len(series[USAGES_STATISTIC])
        usages = _usages(series[USAGES_STATISTIC], timeline)
        services.append(
            ServiceReport(
                service=name,
                overall=overall,
                routes=tuple(route_reports),
                usage_points=usage_points,
                usages=usages,
                per_request=_per_request(usages, usage_points, overall),
                licensing=_licensing(series[LICENSING]),
            )
        )
    counts = Counter(point.measurement for point in kept)
    return LunaReport(
        first_ns=first,
        last_ns=last,
        start_ns=start,
        end_ns=end,
        bucket_ns=width,
        buckets=buckets,
        points={name: counts[name] for name in MEASUREMENTS},
        services=tuple(services),
        skipped=skipped or Skipped(),
    )


def report_as_dict(report: LunaReport) -> dict[str, Any]:
    """The report as plain JSON-ready data (each route with its ``dominant_stage`` name)."""
    document = dataclasses.asdict(report)
    for service, data in zip(report.services, document["services"], strict=True):
        for route, route_data in zip(
            (service.overall, *service.routes),
            (data["overall"], *data["routes"]),
            strict=True,
        ):
            stage = route.dominant_stage
            route_data["dominant_stage"] = None if stage is None else stage.field
    return document
