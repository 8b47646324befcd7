"""``otel-luna report luna``: what a LUNA PLATFORM dashboard shows, from the series themselves.

One idea per module, I/O only at the edges:

* :func:`read` turns a source into points (:func:`otel_luna.report._source.read_points`: a
  line-protocol file, InfluxDB 1.x over InfluxQL, InfluxDB 2.x over Flux);
* :mod:`~otel_luna.report._luna_summary`: :func:`summarize` is pure, points in, a
  :class:`LunaReport` of numbers out (:func:`report_as_dict` for JSON);
* :mod:`~otel_luna.report._luna_text`: :func:`format_report`;
  :mod:`~otel_luna.report._luna_chart`: :func:`render_png` (matplotlib, the ``report`` extra);
* :func:`luna_report` makes the report for :func:`otel_luna.report.run_report` (the CLI);
  :func:`show` does it all for other code (e.g. the demo).
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path
from typing import TextIO

from otel_luna.report._durations import parse_duration
from otel_luna.report._luna_chart import render_png
from otel_luna.report._luna_summary import (
    MEASUREMENTS,
    EstimationsPerRequest,
    EstimatorUsage,
    Latency,
    LicenseCheck,
    Licensing,
    LunaReport,
    RouteReport,
    ServiceReport,
    Stage,
    bucket_width,
    report_as_dict,
    summarize,
)
from otel_luna.report._luna_text import format_report, sparkline
from otel_luna.report._query import DEFAULT_LIMITS, Limits
from otel_luna.report._run import MadeReport, MakeReport, Window, describe
from otel_luna.report._source import PointsRead, Source, as_source, read_points
from otel_luna.schema import Point
from otel_luna.settings import Settings

__all__ = [
    "MEASUREMENTS",
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
    "format_report",
    "luna_report",
    "read",
    "render_png",
    "report_as_dict",
    "show",
    "sparkline",
    "summarize",
]


def read(
    source: Source | Settings | str, start_ns: int | None = None, service: str | None = None
) -> list[Point]:
    """The LUNA points in ``source`` (see :func:`~otel_luna.report.as_source`) from ``start_ns``
    on (of ``service`` only, if given); the unreadable lines of a file are left out
    (:func:`show` and :func:`luna_report` count them)."""
    return _read(as_source(source), start_ns, service).points


def _read(
    source: Source, start_ns: int | None, service: str | None, limits: Limits = DEFAULT_LIMITS
) -> PointsRead:
    tags = {"service": service} if service else None
    return read_points(source, MEASUREMENTS, start_ns, tags, limits)


def _build(
    source: Source, window: Window, service: str | None, limits: Limits = DEFAULT_LIMITS
) -> tuple[LunaReport, str]:
    start_ns, end_ns = window
    points, skipped = _read(source, start_ns, service, limits)
    report = summarize(points, start_ns=start_ns, end_ns=end_ns, service=service, skipped=skipped)
    return report, describe(source, start_ns, f"service {service}" if service else "")


def luna_report(service: str | None = None) -> MakeReport:
    """What makes the LUNA report (of ``service`` only, if given) for
    :func:`~otel_luna.report.run_report`; rates count over the whole window."""

    def make(source: Source, window: Window, limits: Limits) -> MadeReport:
        report, described = _build(source, window, service, limits)
        document = {"source": described, **report_as_dict(report)}
        text = format_report(report, described)
        return MadeReport(document, text, lambda path: render_png(report, path))

    return make


def show(
    source: Source | Settings | str,
    since: str | dt.datetime | None = None,
    service: str | None = None,
    png: Path | None = None,
    out: TextIO | None = None,
) -> LunaReport:
    """Print the report of ``source`` to ``out`` (default: standard output); return it.

    ``source``: a line-protocol file (a :class:`~pathlib.Path`, or a ``str`` path), an
    :class:`~otel_luna.report.InfluxSource`, a :class:`~otel_luna.Settings` naming an InfluxDB
    (1.x or 2.x) or a file, or an endpoint URL (``file://…``, ``http(s)://…``, the rest of the
    settings from the environment). ``since``: a duration (``"15m"``) counted back from now, or
    an aware :class:`~datetime.datetime` from which on to read; either way the period ends now.
    Without it, everything, over the time from the first point to the last. ``png``: also chart
    it there. Raises :class:`~otel_luna.report.ReportError` when the source cannot be read, or —
    after printing the report — when the chart cannot be written.
    """
    resolved = as_source(source)
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
    report, described = _build(resolved, Window(start, end), service)
    stream = sys.stdout if out is None else out
    stream.write(format_report(report, described) + "\n")
    stream.flush()
    if png is not None:
        render_png(report, png)
        stream.write(f"chart: {png}\n")
        stream.flush()
    return report
