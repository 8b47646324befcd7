"""The demo's verifier: the LUNA series the app wrote, read back (a line-protocol file, the
lines the app printed, or an InfluxDB 1.x through the report's query client), counted
(:class:`Summary`) and checked against the requests the app answered (:func:`check`)."""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from otel_luna.demo._app import SERVICE_NAME
from otel_luna.demo._errors import DemoError
from otel_luna.demo._load import Call
from otel_luna.encoding import LineProtocolSyntaxError, parse_line, parse_lines
from otel_luna.report import (
    InfluxSource,
    ReportError,
    influx_source,
    influxql_identifier,
    ping,
    query_influxql,
    run_influxql,
)
from otel_luna.schema import Point
from otel_luna.schema import luna as schema
from otel_luna.settings import Settings

__all__ = [
    "SERIES",
    "Summary",
    "SummarySource",
    "check",
    "expected_summary_counts",
    "expected_usages",
    "format_summary",
    "points_in_output",
    "prepare_influxdb1",
    "query_influxdb1",
    "read_line_protocol",
    "summarize",
    "summary_note",
    "summary_source",
]

#: The series the demo summarises, in the order it prints them.
SERIES = (schema.REQUESTS, schema.ERRORS, schema.USAGES_STATISTIC, schema.LICENSING)


class SummarySource(enum.Enum):
    """Where the demo reads the series back."""

    #: The file sink's line-protocol file.
    FILE = "file"
    #: The lines the app printed (the ``console`` endpoint).
    CONSOLE = "console"
    #: An InfluxDB 1.x, over InfluxQL.
    INFLUXDB1 = "influxdb1"
    #: Nowhere: the exporter is off, or its sink cannot be read back.
    NONE = "none"


_SOURCE_OF_SINK = {
    "file": SummarySource.FILE,
    "console": SummarySource.CONSOLE,
    "influxdb-v1": SummarySource.INFLUXDB1,
}


def summary_source(settings: Settings) -> SummarySource:
    """Where the demo reads the series of ``settings``' sink back."""
    if not settings.enabled:
        return SummarySource.NONE
    return _SOURCE_OF_SINK.get(settings.sink_name, SummarySource.NONE)


def summary_note(settings: Settings) -> str:
    """Why there is no summary, for :attr:`SummarySource.NONE`."""
    if not settings.enabled:
        return "the exporter is disabled (OTEL_EXPORTER_LUNA_ENABLED): nothing to summarise"
    if settings.sink_name == "influxdb-v2":
        return (
            "the endpoint uses the InfluxDB 2.x API: the summary reads the 1.x API (/query) "
            "only; no summary"
        )
    return f"the summary cannot read sink {settings.sink_name!r}; no summary"


# -- reading back -------------------------------------------------------------------------------


def read_line_protocol(path: Path, offset: int = 0) -> list[Point]:
    """Every point in the file from byte ``offset`` on (a line start)."""
    data = path.read_bytes()
    text = data[offset:].decode()
    try:
        return parse_lines(text)
    except LineProtocolSyntaxError as error:
        line = data[:offset].count(b"\n") + error.line
        raise DemoError(f"{path}: line {line}: {error}") from None


def points_in_output(lines: Iterable[str]) -> list[Point]:
    """The LUNA points among the lines an app printed (the ``console`` endpoint)."""
    known = (schema.REQUESTS, schema.ERRORS, schema.USAGES_STATISTIC, schema.LICENSING)
    points = []
    for line in lines:
        if not line.startswith(known):
            continue
        try:
            point = parse_line(line)
        except LineProtocolSyntaxError:
            continue
        if point.measurement in known:
            points.append(point)
    return points


def prepare_influxdb1(source: InfluxSource | Settings) -> str | None:
    """Check that the InfluxDB answers; create the database if it is missing (a note if so)."""
    influx = influx_source(source)
    try:
        status = ping(influx)
        if status != 204:
            raise DemoError(f"{influx.endpoint}/ping answered HTTP {status}, not an InfluxDB 1.x")
        (result,) = run_influxql(influx, "SHOW DATABASES")
        names = {row[0] for series in result.get("series", []) for row in series.get("values", [])}
        if influx.database in names:
            return None
        run_influxql(influx, f"CREATE DATABASE {influxql_identifier(influx.database)}")
    except ReportError as error:
        raise DemoError(str(error)) from None
    return f"created database {influx.database}"


def query_influxdb1(
    source: InfluxSource | Settings, since_ns: int, until_ns: int, service: str = SERVICE_NAME
) -> Summary:
    """The :class:`Summary` of ``service``'s points between the two times, read back with
    InfluxQL by the query client ``otel-luna report`` uses."""
    try:
        points = query_influxql(source, SERIES, since_ns, {"service": service})
    except ReportError as error:
        raise DemoError(str(error)) from None
    return summarize(point for point in points if point.time_ns <= until_ns)


# -- summary ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """Points per series, ``requests`` points by route, ``errors`` points by error code, the
    estimations per estimator (``usages_statistic`` fields summed) and the ``usages_statistic``
    points at no ``requests`` point's time: what :func:`check` compares with the requests sent
    (``otel-luna report luna`` shows the rest)."""

    points: dict[str, int]
    routes: dict[str, int]
    error_codes: dict[str, int]
    usages: dict[str, int] = field(default_factory=dict)
    usages_off_request: int = 0


def summarize(points: Iterable[Point], service: str | None = SERVICE_NAME) -> Summary:
    """The :class:`Summary` of ``points`` (of ``service`` only, unless it is ``None``)."""
    series: Counter[str] = Counter()
    routes: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    usages: Counter[str] = Counter()
    request_times: set[tuple[str, int]] = set()
    usage_times: list[tuple[str, int]] = []
    for point in points:
        tags = dict(point.tags)
        if service is not None and tags.get("service") != service:
            continue
        series[point.measurement] += 1
        if point.measurement == schema.REQUESTS:
            routes[tags.get("route", "")] += 1
            request_times.add((tags.get("service", ""), point.time_ns))
        elif point.measurement == schema.ERRORS:
            codes[tags.get("error_code", "")] += 1
        elif point.measurement == schema.USAGES_STATISTIC:
            usage_times.append((tags.get("service", ""), point.time_ns))
            for name, value in point.fields.items():
                # InfluxQL's JSON may answer an integer field as 5.0
                if name.endswith(schema.USAGES_SUFFIX) and isinstance(value, (int, float)):
                    usages[name.removesuffix(schema.USAGES_SUFFIX)] += int(value)
    for measurement in SERIES:
        series.setdefault(measurement, 0)
    off_request = sum(1 for at in usage_times if at not in request_times)
    return Summary(
        dict(series),
        dict(sorted(routes.items())),
        dict(codes),
        dict(sorted(usages.items())),
        off_request,
    )


def format_summary(summary: Summary) -> str:
    """The summary as printed: points per series; the estimations per estimator after the
    ``usages_statistic`` points (one per request that counted some)."""
    order = [name for name in SERIES if name in summary.points]
    order += sorted(name for name in summary.points if name not in order)
    width = max(len(str(count)) for count in summary.points.values())
    names = max(len(name) for name in order)
    lines = [f"{name:<{names}} {summary.points[name]:>{max(width, 3)}} points" for name in order]
    if summary.usages:
        index = order.index(schema.USAGES_STATISTIC)
        estimations = ", ".join(f"{name} {count}" for name, count in summary.usages.items())
        lines[index] += f": one per request with estimations ({estimations})"
    return "\n".join(lines)


def expected_summary_counts(
    calls: Sequence[Call], statuses: Sequence[int | None]
) -> tuple[Counter[str], Counter[str]]:
    """``requests`` points per route and ``errors`` points per code the answered calls imply."""
    routes: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    for call, status in zip(calls, statuses, strict=True):
        if status is None:
            continue
        routes[call.route] += 1
        if status >= 400:
            code = call.expect_error_code if status == call.expect_status else None
            codes[str(code if code is not None else schema.UNKNOWN_ERROR_CODE)] += 1
    return routes, codes


def expected_usages(
    calls: Sequence[Call], statuses: Sequence[int | None]
) -> tuple[int, Counter[str]]:
    """The requests whose answer counted estimations, and the estimations per estimator."""
    requests = 0
    usages: Counter[str] = Counter()
    for call, status in zip(calls, statuses, strict=True):
        if call.usages and status == call.expect_status:
            requests += 1
            usages.update(dict(call.usages))
    return requests, usages


def check(summary: Summary, calls: Sequence[Call], statuses: Sequence[int | None]) -> list[str]:
    """Differences between the series read back and the requests the app answered: one
    ``requests`` point per answer, one ``errors`` point per failure, one ``usages_statistic``
    point per request that counted estimations, at that request's time, with the sums the
    requests counted, and one ``licensing`` point (the app's licence check at start-up)."""
    routes, codes = expected_summary_counts(calls, statuses)
    problems = []
    sent = sum(routes.values())
    if summary.points.get(schema.REQUESTS, 0) != sent:
        problems.append(
            f"{summary.points.get(schema.REQUESTS, 0)} requests points for {sent} requests"
        )
    failed = sum(codes.values())
    if summary.points.get(schema.ERRORS, 0) != failed:
        problems.append(
            f"{summary.points.get(schema.ERRORS, 0)} errors points for {failed} failed requests"
        )
    if summary.routes != dict(routes):
        problems.append(f"requests per route {summary.routes} != sent {dict(routes)}")
    if summary.error_codes != dict(codes):
        problems.append(f"errors per error_code {summary.error_codes} != expected {dict(codes)}")
    counted, usages = expected_usages(calls, statuses)
    points = summary.points.get(schema.USAGES_STATISTIC, 0)
    if points != counted:
        problems.append(
            f"{points} usages_statistic points for {counted} requests that counted estimations"
        )
    if summary.usages != dict(sorted(usages.items())):
        problems.append(
            f"estimations per estimator {summary.usages} != counted {dict(sorted(usages.items()))}"
        )
    if summary.usages_off_request:
        problems.append(
            f"{summary.usages_off_request} usages_statistic points at no requests point's time"
        )
    if summary.points.get(schema.LICENSING, 0) != 1:
        problems.append(
            f"{summary.points.get(schema.LICENSING, 0)} licensing points for the app's one "
            "licence check"
        )
    return problems
