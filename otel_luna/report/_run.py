"""One flow for every report command: resolve the source, open the window, make the report,
print it as text or JSON and draw its chart (:func:`run_report`). A report is the function
that makes it (:data:`MakeReport`), e.g. :func:`otel_luna.report.luna_report`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from otel_luna.redact import printable as escape
from otel_luna.report._durations import iso_ms
from otel_luna.report._errors import ChartError, ReportError
from otel_luna.report._query import DEFAULT_LIMITS, Limits
from otel_luna.report._source import Source, describe_source, resolve_source

__all__ = ["MadeReport", "MakeReport", "Window", "describe", "printable", "run_report"]


class Window(NamedTuple):
    """The period a report covers: points from ``start_ns`` to ``end_ns`` (``None``: the
    earliest / latest there is)."""

    start_ns: int | None = None
    end_ns: int | None = None

    @classmethod
    def last(cls, since_ns: int | None, now_ns: int) -> Window:
        """The last ``since_ns`` before ``now_ns`` (everything for ``None``)."""
        return cls() if since_ns is None else cls(now_ns - since_ns, now_ns)


class MadeReport(NamedTuple):
    """A report, ready to print: its JSON document, its text and what draws its chart."""

    document: dict[str, Any]
    text: str
    draw: Callable[[Path], None]


#: What makes one kind of report: read ``source`` over the window within the limits, summarise.
MakeReport = Callable[[Source, Window, Limits], MadeReport]


def describe(source: Source, start_ns: int | None, *qualifiers: str) -> str:
    """``file PATH, service S, since 2026-…Z``: the source, the qualifiers, the window's start."""
    described = ", ".join((describe_source(source), *(q for q in qualifiers if q)))
    if start_ns is not None:
        described += f", since {iso_ms(start_ns // 1_000_000)}"
    return described


def printable(
    document: dict[str, Any],
    text: str,
    as_json: bool,
    png: Path | None,
    draw: Callable[[Path], None],
) -> str:
    """What a report command prints: ``text``, or ``document`` as JSON, after ``draw`` wrote
    the chart to ``png`` (if asked), saying where. :class:`ChartError`, carrying what to print
    all the same, when the chart cannot be written."""
    # Every value read from the database or a file is shown escaped (terminal escapes …);
    # JSON escapes them itself.
    printed = json.dumps(document, indent=2) if as_json else escape(text, lines=True)
    if png is None:
        return printed
    try:
        draw(png)
    except ReportError as error:
        raise ChartError(str(error), printed) from None
    if as_json:
        return json.dumps({**document, "png": str(png)}, indent=2)
    return f"{printed}\nchart: {png}"


def run_report(
    make: MakeReport,
    *,
    endpoint: str | None = None,
    file: Path | None = None,
    database: str | None = None,
    org: str | None = None,
    bucket: str | None = None,
    since_ns: int | None = None,
    png: Path | None = None,
    as_json: bool = False,
    environ: Mapping[str, str] | None = None,
    now_ns: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> str:
    """Read, summarise, optionally chart: the text (or JSON) of the report ``make`` makes.

    The source is ``file``, else ``endpoint``, else ``OTEL_EXPORTER_LUNA_ENDPOINT`` with the
    other ``OTEL_EXPORTER_LUNA_*`` settings (``database``, ``org``, ``bucket`` override theirs):
    a ``file://`` endpoint reads that file, ``http(s)://`` an InfluxDB (1.x: InfluxQL; 2.x, i.e.
    API version 2 or a token: Flux). ``since_ns`` is a duration: the last ``since_ns`` before
    ``now_ns`` (default: now). No more than ``limits`` is read.
    """
    source = resolve_source(
        endpoint=endpoint, file=file, environ=environ, database=database, org=org, bucket=bucket
    )
    window = Window.last(since_ns, time.time_ns() if now_ns is None else now_ns)
    made = make(source, window, limits)
    return printable(made.document, made.text, as_json, png, made.draw)
