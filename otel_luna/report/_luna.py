"""``otel-luna report luna``: what a LUNA PLATFORM dashboard shows, from the series themselves.

Per service and route (``requests`` / ``errors``, ``shared/seeds/000_*.txt``): request rate,
p50/p95/p99 of ``execution_time``, error rate and the most frequent ``error_code`` values, and
the stage timing (a ``*_time`` field) that takes the most time; per service: the estimations of
``usages_statistic`` per estimator over time, and the licence checks of ``licensing`` (status,
``liveness_balance`` over time, the last warnings and errors).

Layout, I/O only at the edges:

* :func:`read` turns a source into points (:func:`otel_luna.report._common.read_points`: a
  line-protocol file, InfluxDB 1.x over InfluxQL, InfluxDB 2.x over Flux);
* :func:`summarize` is pure: points in, a :class:`LunaReport` of numbers out;
* :func:`format_report` / :func:`report_as_dict` present it; :func:`render_png` charts it
  (matplotlib, Agg backend, the ``report`` extra);
* :func:`show` (for other code, e.g. the demo) and :func:`run_report` (for the CLI) do it all.

Percentiles are nearest rank (:func:`otel_luna.report._common.nearest_rank`), as in the watchdog
report; timelines use buckets aligned like InfluxQL's ``GROUP BY time()`` (multiples of the
bucket width since the epoch), so each bucket equals that query's.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from otel_luna.redact import printable as escape
from otel_luna.report._common import (
    DEFAULT_LIMITS,
    Limits,
    PointsRead,
    ReportError,
    Skipped,
    Source,
    describe_source,
    iso_ms,
    nearest_rank,
    new_figure,
    parse_duration,
    printable,
    read_points,
    resolve_source,
    save_png,
    source_of,
)
from otel_luna.schema._point import FieldValue, Point
from otel_luna.schema.luna import (
    ERRORS,
    LICENSE_STATUSES,
    LICENSING,
    REQUESTS,
    USAGES_STATISTIC,
    USAGES_SUFFIX,
)
from otel_luna.settings._settings import Settings

__all__ = [
    "MEASUREMENTS",
    "EstimatorUsage",
    "Latency",
    "LicenseCheck",
    "Licensing",
    "LunaReport",
    "ReportError",
    "RouteReport",
    "ServiceReport",
    "Stage",
    "bucket_width",
    "format_report",
    "read",
    "render_png",
    "report_as_dict",
    "run_report",
    "show",
    "sparkline",
    "summarize",
]

#: The series the report reads.
MEASUREMENTS = (REQUESTS, ERRORS, USAGES_STATISTIC, LICENSING)
EXECUTION_TIME = "execution_time"
#: A ``requests`` field ending so (other than ``execution_time``) is a stage timing, in seconds.
STAGE_SUFFIX = "_time"
#: Widths the timelines' buckets may take: the smallest that gives at most MAX_BUCKETS.
_SECOND = 1_000_000_000
_SECONDS_WIDTHS: tuple[int, ...] = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)
_SECONDS_WIDTHS += (7200, 10800, 21600, 43200, 86400, 2 * 86400, 7 * 86400)
BUCKET_WIDTHS_NS = (100_000_000, 200_000_000, 500_000_000, *(n * _SECOND for n in _SECONDS_WIDTHS))
MAX_BUCKETS = 60
#: Rates (requests per second) are given over a period of at least this; below, a count over
#: a few nanoseconds would read as billions per second.
MIN_RATE_SECONDS = 0.1
#: Routes drawn in each chart (the busiest); every route is in the text.
CHART_ROUTES = 8
#: Most frequent error codes printed per route.
TOP_ERROR_CODES = 3
_SPARKS = "▁▂▃▄▅▆▇█"
_STATUS_COLOURS = {
    "ok": "tab:green",
    "warning": "tab:orange",
    "error": "tab:red",
    "exception": "tab:purple",
}


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
        services.append(
            ServiceReport(
                service=name,
                overall=_route("", requests, errors, seconds, timeline),
                routes=tuple(route_reports),
                usage_points=len(series[USAGES_STATISTIC]),
                usages=_usages(series[USAGES_STATISTIC], timeline),
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


# -- presentation -------------------------------------------------------------------------------


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def _percent(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio * 100:.1f}%"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _width(nanoseconds: int | None) -> str:
    if not nanoseconds:
        return "-"
    if nanoseconds < _SECOND:
        return f"{nanoseconds // 1_000_000} ms"
    seconds = nanoseconds // _SECOND
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def sparkline(values: Sequence[float | None]) -> str:
    """One character per value: ``▁`` for zero (or the lowest value when it is negative), ``▂``
    … ``█`` for the rest in proportion to the largest, so any use shows; a blank for none."""
    numbers = [value for value in values if value is not None]
    low = min(min(numbers, default=0), 0)
    span = max(numbers, default=0) - low
    out = []
    for value in values:
        if value is None:
            out.append(" ")
        elif value <= low or span <= 0:
            out.append(_SPARKS[0])
        else:
            steps = len(_SPARKS) - 1
            out.append(_SPARKS[max(1, min(math.ceil((value - low) / span * steps), steps))])
    return "".join(out)


def _balance_line(licensing: Licensing, report: LunaReport) -> list[int | None]:
    """The last ``liveness_balance`` known at the end of each bucket (``None`` before any)."""
    values: list[int | None] = []
    checks = [c for c in licensing.history if c.liveness_balance is not None]
    index = 0
    current: int | None = None
    width = report.bucket_ns or 1
    for start in report.buckets:
        while index < len(checks) and checks[index].time_ns < start + width:
            current = checks[index].liveness_balance
            index += 1
        values.append(current)
    return values


def _service_lines(service: ServiceReport, report: LunaReport) -> list[str]:
    rows = [service.overall, *service.routes]
    names = ["all routes" if not row.route else row.route for row in rows]
    width = max(12, *(len(name) for name in names)) + 2
    headers = ("requests", "req/s", "p50 ms", "p95 ms", "p99 ms", "max ms")
    cells = [
        (
            str(row.requests),
            "-" if row.rate is None else f"{row.rate:.2f}",
            _ms(row.latency.p50),
            _ms(row.latency.p95),
            _ms(row.latency.p99),
            _ms(row.latency.max),
        )
        for row in rows
    ]
    # right-aligned, at least 9 wide and 2 spaces apart whatever the width of a number
    widths = [max(9, len(h) + 1, *(len(c[i]) + 2 for c in cells)) for i, h in enumerate(headers)]
    lines = [
        f"  {'route':<{width}}"
        + "".join(f"{h:>{w}}" for h, w in zip(headers, widths, strict=True))
        + "  errors"
    ]
    for name, row, cell in zip(names, rows, cells, strict=True):
        lines.append(
            f"  {name:<{width}}"
            + "".join(f"{c:>{w}}" for c, w in zip(cell, widths, strict=True))
            + f"  {row.errors} ({_percent(row.error_rate)})"
        )
    failing = [row for row in service.routes if row.error_codes]
    if failing:
        lines.append("  top error_code (errors points)")
        for row in failing:
            codes = ", ".join(
                f"{code or '-'} x{count}" for code, count in row.error_codes[:TOP_ERROR_CODES]
            )
            more = len(row.error_codes) - TOP_ERROR_CODES
            lines.append(
                f"    {row.route:<{width}}{codes}" + (f" (+{more} more)" if more > 0 else "")
            )
    staged = [row for row in service.routes if row.dominant_stage is not None]
    if staged:
        lines.append("  slowest stage (mean per request carrying it; share of execution_time)")
        for row in staged:
            stage = row.dominant_stage
            assert stage is not None
            lines.append(
                f"    {row.route:<{width}}{stage.field}  {_ms(stage.mean)} ms"
                f"  {_percent(stage.share)}"
            )
    if service.usages:
        lines.append(
            f"  usages_statistic: {_plural(service.usage_points, 'point')}; over time, one "
            f"column per {_width(report.bucket_ns)}"
        )
        label = max(len(usage.estimator) for usage in service.usages) + 2
        for usage in service.usages:
            lines.append(
                f"    {usage.estimator:<{label}}{usage.total:>9}  {sparkline(usage.over_time)}"
            )
    licensing = service.licensing
    if licensing is not None:
        statuses = ", ".join(f"{name} {count}" for name, count in licensing.statuses.items())
        last = licensing.last
        balance = (
            "" if last.liveness_balance is None else f", liveness_balance {last.liveness_balance}"
        )
        lines.append(
            f"  licensing: {_plural(licensing.checks, 'check')} ({statuses}); last: "
            f"{escape(last.status or '-')} at "
            f"{iso_ms(last.time_ns // 1_000_000)}{balance}"
        )
        if licensing.balance_last is not None:
            lines.append(
                f"    liveness_balance first {licensing.balance_first}, min "
                f"{licensing.balance_min}, last {licensing.balance_last}  "
                f"{sparkline(_balance_line(licensing, report))}"
            )
        # String fields: may hold a newline, escaped here to stay on one line (the whole text
        # is escaped when printed: common.printable).
        if last.warnings:
            lines.append(f"    last warnings: {escape(last.warnings)}")
        if last.errors:
            lines.append(f"    last errors: {escape(last.errors)}")
    return lines


def format_report(report: LunaReport, source: str = "") -> str:
    """The report as printed by ``otel-luna report luna``."""
    lines = []
    if source:
        lines.append(f"luna report: {source}")
    first = None if report.first_ns is None else report.first_ns // 1_000_000
    last = None if report.last_ns is None else report.last_ns // 1_000_000
    if report.rate_seconds is not None:
        rates = f"rates over {_duration(report.rate_seconds)}"
    elif report.seconds is not None:
        rates = f"no rates (a period under {MIN_RATE_SECONDS:g} s)"
    else:
        rates = "rates over -"
    lines.append(f"period: {iso_ms(first)} .. {iso_ms(last)}; {rates}")
    lines.append("points: " + ", ".join(f"{n} {name}" for name, n in report.points.items()))
    if report.skipped.lines:
        lines.append(report.skipped.describe())
    if not report.services:
        lines.append("")
        lines.append("no LUNA points in this period")
    for service in report.services:
        lines.append("")
        lines.append(f"service {service.service or '(none)'}")
        lines += _service_lines(service, report)
    lines.append("")
    lines.append(
        "percentiles: nearest rank (the smallest value with at least p % of the values <= it); "
        "errors: errors points / requests points"
    )
    return "\n".join(lines)


# -- the chart ----------------------------------------------------------------------------------


def render_png(report: LunaReport, path: Path, title: str = "LUNA monitoring") -> None:
    """Six panels: request rate, p95 ``execution_time`` and error rate over time per route; the
    mean time of each stage per route; ``usages_statistic`` per estimator over time; licence
    status and ``liveness_balance`` over time. Written atomically."""
    figure = new_figure(15, 12)
    import matplotlib
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    (rate, p95), (failures, stages), (usages, licence) = figure.subplots(3, 2)
    services = report.services
    several = len(services) > 1
    width = report.bucket_ns or _SECOND
    when = [dt.datetime.fromtimestamp(start / 1e9, tz=dt.timezone.utc) for start in report.buckets]
    routes = sorted(
        ((service.service, route) for service in services for route in service.routes),
        key=lambda pair: -pair[1].requests,
    )[:CHART_ROUTES]

    def label(service: str, route: str) -> str:
        return f"{service} {route}" if several else route

    for service, route in routes:
        name = label(service, route.route)
        rate.plot(when, [n * _SECOND / width for n in route.requests_over_time], label=name)
        p95.plot(
            when,
            [math.nan if v is None else v * 1000 for v in route.p95_over_time],
            marker="o",
            markersize=3,
            label=name,
        )
        if route.errors:
            failures.plot(
                when,
                [
                    math.nan if n == 0 else 100 * e / n
                    for n, e in zip(route.requests_over_time, route.errors_over_time, strict=True)
                ],
                marker="o",
                markersize=3,
                label=f"{name} ({', '.join(c or '-' for c, _ in route.error_codes[:3])})",
            )
    rate.set_title(f"requests per second (buckets of {_width(report.bucket_ns)})")
    rate.set_ylabel("req/s")
    p95.set_title("p95 execution_time per bucket")
    p95.set_ylabel("ms")
    failures.set_title("error rate per bucket (top error_codes in the legend)")
    failures.set_ylabel("% of requests")
    for axes, empty in ((rate, "no requests points"), (p95, "no requests points")):
        if routes:
            axes.legend(loc="upper left", fontsize="x-small")
        else:
            axes.text(0.5, 0.5, empty, ha="center", transform=axes.transAxes)
    if any(route.errors for _, route in routes):
        failures.legend(loc="upper left", fontsize="x-small")
    else:
        failures.text(0.5, 0.5, "no errors points", ha="center", transform=failures.transAxes)

    staged = [(s, r) for s, r in routes if r.stages]
    fields = sorted({stage.field for _, r in staged for stage in r.stages})
    palette = matplotlib.colormaps["tab20"]
    stage_palette = matplotlib.colormaps["tab20b"]  # 5 hues x 4 shades: hues first
    # Tick labels are drawn from these later: escaped here (save_png escapes the other texts).
    names = [escape(f"{r.route}\n{s}" if several else r.route, lines=True) for s, r in staged]
    lefts = [0.0] * len(staged)
    for number, field in enumerate(fields):
        means = []
        for _, route in staged:
            stage = next((st for st in route.stages if st.field == field), None)
            means.append(0.0 if stage is None else stage.mean * 1000)
        stages.barh(
            names,
            means,
            left=lefts,
            height=0.6,
            label=field,
            color=stage_palette(number % 5 * 4 + number // 5 % 4),
        )
        lefts = [a + b for a, b in zip(lefts, means, strict=True)]
    if staged:
        stages.scatter(
            [(r.latency.p50 or 0) * 1000 for _, r in staged],
            names,
            marker="|",
            s=300,
            color="black",
            zorder=3,
            label="p50 execution_time",
        )
        ends = [*lefts, *((r.latency.p50 or 0) * 1000 for _, r in staged)]
        stages.set_xlim(0, max(ends) * 1.08 or 1)
        stages.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize="x-small", ncol=3)
        stages.invert_yaxis()
    else:
        stages.text(0.5, 0.5, "no *_time fields", ha="center", transform=stages.transAxes)
    stages.set_title("mean time per stage (stages may overlap)")
    stages.set_xlabel("ms")
    stages.tick_params(axis="y", labelsize="x-small")

    totals: dict[str, list[int]] = {}
    for each in services:
        for usage in each.usages:
            line = totals.setdefault(usage.estimator, [0] * len(report.buckets))
            for index, value in enumerate(usage.over_time):
                line[index] += value
    bottoms = [0] * len(report.buckets)
    bar_width = dt.timedelta(seconds=width / _SECOND * 0.9)
    for number, (estimator, line) in enumerate(
        sorted(totals.items(), key=lambda item: -sum(item[1]))
    ):
        usages.bar(
            when,
            line,
            bottom=bottoms,
            width=bar_width,
            align="edge",
            label=f"{estimator} ({sum(line)})",
            color=palette(number % 20),
        )
        bottoms = [a + b for a, b in zip(bottoms, line, strict=True)]
    usages.set_title(
        "usages_statistic: estimations per bucket" + (" (all services)" if several else "")
    )
    usages.set_ylabel("estimations")
    if totals:
        usages.legend(loc="upper left", fontsize="x-small", ncol=2)
    else:
        usages.text(0.5, 0.5, "no usages_statistic points", ha="center", transform=usages.transAxes)

    checks = [(s.service, s.licensing) for s in services if s.licensing is not None]
    for service_name, licensing in checks:
        assert licensing is not None
        known = [c for c in licensing.history if c.liveness_balance is not None]
        times = [dt.datetime.fromtimestamp(c.time_ns / 1e9, tz=dt.timezone.utc) for c in known]
        licence.step(
            times,
            [c.liveness_balance for c in known],
            where="post",
            color="grey",
            label=f"{service_name} liveness_balance" if several else "liveness_balance",
        )
        for status, colour in _STATUS_COLOURS.items():
            marked = [(t, c) for t, c in zip(times, known, strict=True) if c.status == status]
            if marked:
                licence.scatter(
                    [t for t, _ in marked],
                    [c.liveness_balance for _, c in marked],
                    color=colour,
                    s=18,
                    zorder=3,
                    label=f"license_status {status}",
                )
    licence.set_title("licensing: liveness_balance, coloured by license_status")
    licence.set_ylabel("estimations left")
    if checks:
        licence.legend(loc="upper right", fontsize="x-small")
    else:
        licence.text(0.5, 0.5, "no licensing points", ha="center", transform=licence.transAxes)

    drawn = {rate: routes, p95: routes, failures: routes, usages: totals, licence: checks}
    for axes, content in drawn.items():
        if not content:
            axes.set_xticks([])
            axes.set_yticks([])
            continue
        # matplotlib.dates has no type annotations
        locator = AutoDateLocator()  # type: ignore[no-untyped-call]
        axes.xaxis.set_major_locator(locator)
        axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
        if report.buckets and report.bucket_ns:  # one time axis: the period's buckets
            axes.set_xlim(when[0], when[-1] + dt.timedelta(microseconds=report.bucket_ns / 1000))
        axes.grid(alpha=0.3)
    stages.grid(axis="x", alpha=0.3)
    total = report.points.get(REQUESTS, 0)
    figure.suptitle(
        f"{title}: {total} requests, {report.points.get(ERRORS, 0)} errors over "
        f"{_duration(report.seconds)}"
        + ("" if several or not services else f" — service {services[0].service}")
    )
    save_png(figure, path)


# -- reading and the command --------------------------------------------------------------------


def read(source: Source, start_ns: int | None = None, service: str | None = None) -> list[Point]:
    """The LUNA points in ``source`` from ``start_ns`` on (of ``service`` only, if given); the
    unreadable lines of a file are left out (:func:`show` and :func:`run_report` count them)."""
    return _read(source, start_ns, service).points


def _read(
    source: Source, start_ns: int | None, service: str | None, limits: Limits = DEFAULT_LIMITS
) -> PointsRead:
    tags = {"service": service} if service else None
    return read_points(source, MEASUREMENTS, start_ns, tags, limits)


def _build(
    source: Source,
    start_ns: int | None,
    end_ns: int | None,
    service: str | None,
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[LunaReport, str]:
    points, skipped = _read(source, start_ns, service, limits)
    report = summarize(points, start_ns=start_ns, end_ns=end_ns, service=service, skipped=skipped)
    described = describe_source(source)
    if service:
        described += f", service {service}"
    if start_ns is not None:
        described += f", since {iso_ms(start_ns // 1_000_000)}"
    return report, described


def run_report(
    *,
    endpoint: str | None = None,
    file: Path | None = None,
    database: str | None = None,
    org: str | None = None,
    bucket: str | None = None,
    since_ns: int | None = None,
    service: str | None = None,
    png: Path | None = None,
    as_json: bool = False,
    environ: Mapping[str, str] | None = None,
    now_ns: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> str:
    """Read, summarise, optionally chart; the text (or JSON) to print.

    The source is ``file`` (line protocol), else ``endpoint``, else
    ``OTEL_EXPORTER_LUNA_ENDPOINT`` with the other ``OTEL_EXPORTER_LUNA_*`` settings
    (``database``, ``org``, ``bucket`` override theirs): a ``file://`` endpoint reads that file,
    ``http(s)://`` an InfluxDB (1.x: InfluxQL; 2.x, i.e. API version 2 or a token: Flux).
    ``since_ns`` is a duration: the last ``since_ns`` before ``now_ns`` (default: now), and rates
    count over that whole window. No more than ``limits`` is read.
    """
    source = resolve_source(
        endpoint=endpoint, file=file, environ=environ, database=database, org=org, bucket=bucket
    )
    now = time.time_ns() if now_ns is None else now_ns
    start = None if since_ns is None else now - since_ns
    report, described = _build(source, start, None if start is None else now, service, limits)
    document = {"source": described, **report_as_dict(report)}
    text = format_report(report, described)
    return printable(document, text, as_json, png, lambda path: render_png(report, path))


def _source(source: Source | str) -> Source:
    if isinstance(source, Path):
        return source
    if isinstance(source, Settings):
        return source_of(source)
    if source.startswith(("file:", "http://", "https://")):
        return resolve_source(endpoint=source)
    return Path(source)


def show(
    source: Source | str,
    since: str | dt.datetime | None = None,
    service: str | None = None,
    png: Path | None = None,
    out: TextIO | None = None,
) -> LunaReport:
    """Print the report of ``source`` to ``out`` (default: standard output); return it.

    ``source``: a line-protocol file (a :class:`~pathlib.Path`, or a ``str`` path), a
    :class:`~otel_luna.settings.Settings` naming an InfluxDB (1.x or 2.x) or a file, or an
    endpoint URL (``file://…``, ``http(s)://…``, the rest of the settings from the
    environment). ``since``: a duration (``"15m"``) counted back from now, or an aware
    :class:`~datetime.datetime` from which on to read; either way the period ends now. Without
    it, everything, over the time from the first point to the last. ``png``: also chart it
    there. Raises :class:`~otel_luna.report._common.ReportError` when the source cannot be read,
    or — after printing the report — when the chart cannot be written.
    """
    resolved = _source(source)
    start: int | None = None
    end: int | None = None
    if since is not None:
        end = time.time_ns()
        if isinstance(since, dt.datetime):
            if since.tzinfo is None:
                raise ValueError("since must be an aware datetime (e.g. with tz=timezone.utc)")
            start = (
                (since - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc))
                // dt.timedelta(microseconds=1)
                * 1000
            )
        else:
            start = end - parse_duration(since)
    report, described = _build(resolved, start, end, service)
    stream = sys.stdout if out is None else out
    stream.write(format_report(report, described) + "\n")
    stream.flush()
    if png is not None:
        render_png(report, png)
        stream.write(f"chart: {png}\n")
        stream.flush()
    return report
