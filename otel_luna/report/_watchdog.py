"""``otel-luna report watchdog``: the watchdog-proxy metrics document's questions, answered.

The questions (``shared/seeds/002_*.txt``, *Analysis*), globally and per ``consumer_name``: time
in queue (``timing_sent``), time waiting for PhotoDNA (``timing_received``), time to reply
(``timing_submitted``) and their sum, as p50/p95/max; positives vs negatives (``is_match``);
errors (``is_error``); queue sizes over the period (``poller_heartbeat``: min/mean/max and the
last value); total processed (``worker_works`` pings) and new items submitted (``new_item``).

Layout, I/O only at the edges:

* readers turn a source into :class:`Event` rows: :func:`read_events` (InfluxDB 1.x over InfluxQL,
  2.x over Flux, or a file), :func:`query_influxdb1`, :func:`read_file` (a file sink's output:
  JSON pings for ``.json``/``.jsonl``, else line protocol); the points come from
  :mod:`otel_luna.report._source`, and the parsing under them is pure
  (:func:`events_from_pings`, :func:`events_from_points`);
* :func:`summarize` is pure: rows in, a :class:`WatchdogReport` of numbers out;
* :func:`format_report` / :func:`report_as_dict` present it;
  :func:`otel_luna.report._watchdog_chart.render_png` charts the timings over time
  (matplotlib, Agg backend, the ``report`` extra);
* :func:`watchdog_report` makes it for :func:`otel_luna.report.run_report`.

Percentiles are **nearest rank** (:func:`otel_luna.report.nearest_rank`, shared with the
luna report).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otel_luna.report._durations import iso_ms, parse_duration
from otel_luna.report._errors import ReportError
from otel_luna.report._query import DEFAULT_LIMITS, InfluxSource, Limits, influx_source
from otel_luna.report._run import MadeReport, Window, describe
from otel_luna.report._source import (
    Skipped,
    Source,
    as_source,
    read_file_bytes,
    read_line_protocol,
    read_points,
)
from otel_luna.report._stats import nearest_rank
from otel_luna.schema import Point
from otel_luna.schema.watchdog import EVENTS, NEW_ITEM, POLLER_HEARTBEAT, WORKER_WORKS
from otel_luna.settings import Settings

__all__ = [
    "Breakdown",
    "Distribution",
    "Event",
    "Gauge",
    "ReportError",
    "WatchdogReport",
    "events_from_pings",
    "events_from_points",
    "format_report",
    "int_value",
    "nearest_rank",
    "parse_duration",
    "query_influxdb1",
    "read_events",
    "read_file",
    "report_as_dict",
    "summarize",
    "watchdog_report",
]

#: A field of a ping, in its JSON type (``None``: the ping carried ``null`` or lacked it).
Value = str | int | bool | None

#: The three stage timings in the order of the pipeline, and the name of their sum.
TIMINGS = ("timing_sent", "timing_received", "timing_submitted")
TOTAL = "total"
#: What each timing answers, as printed.
TIMING_LABELS: Mapping[str, str] = {
    "timing_sent": "time in queue (timing_sent)",
    "timing_received": "waiting for PhotoDNA (timing_received)",
    "timing_submitted": "reply to consumer (timing_submitted)",
    TOTAL: "sum of the three",
}
#: The queue sizes of ``poller_heartbeat``.
QUEUE_FIELDS = ("items_in_queue", "items_in_progress", "items_in_waiting")
#: Measurements (events) the report reads.
MEASUREMENTS = (NEW_ITEM, POLLER_HEARTBEAT, WORKER_WORKS)
_JSON_SUFFIXES = (".json", ".jsonl")


@dataclass(frozen=True)
class Event:
    """One watchdog ping as the report reads it: the event, its time (ns since the epoch) and
    its documented fields in their JSON types (tags converted back: ``is_match`` is a bool)."""

    event: str
    time_ns: int
    fields: Mapping[str, Value]


@dataclass(frozen=True)
class Distribution:
    """Nearest-rank p50 and p95 and the max of ``count`` integer values (ms); ``None`` if none."""

    count: int
    p50: int | None
    p95: int | None
    max: int | None


@dataclass(frozen=True)
class Gauge:
    """A queue size over the period: min, mean, max, and the value of the latest heartbeat."""

    count: int
    min: int | None
    mean: float | None
    max: int | None
    last: int | None


@dataclass(frozen=True)
class Breakdown:
    """The per-item answers for all consumers or one of them."""

    new_items: int
    processed: int
    positives: int
    negatives: int
    unanswered: int
    errors: int
    timings: Mapping[str, Distribution]


@dataclass(frozen=True)
class WatchdogReport:
    """Everything the report prints. Times are epoch milliseconds (the pings' resolution)."""

    first_ms: int | None
    last_ms: int | None
    pings: Mapping[str, int]
    overall: Breakdown
    consumers: Mapping[str, Breakdown]
    queue: Mapping[str, Gauge]
    skipped: Skipped = dataclasses.field(default_factory=Skipped)


# -- pure computation ---------------------------------------------------------------------------


def distribution(values: Sequence[int]) -> Distribution:
    """p50, p95 (nearest rank) and max of ``values``."""
    return Distribution(
        len(values),
        nearest_rank(values, 50),
        nearest_rank(values, 95),
        max(values) if values else None,
    )


def _gauge(samples: Sequence[tuple[int, int]]) -> Gauge:
    """``samples`` are (time_ns, value) in input order; ``last`` is the latest in time (the later
    one in input order on a tie)."""
    if not samples:
        return Gauge(0, None, None, None, None)
    values = [value for _, value in samples]
    latest = max(range(len(samples)), key=lambda index: (samples[index][0], index))
    return Gauge(
        len(values), min(values), sum(values) / len(values), max(values), samples[latest][1]
    )


def int_value(value: Value) -> int | None:
    """``value`` if it is an integer (not a bool), else ``None``."""
    return value if type(value) is int else None


def _breakdown(new_items: int, works: Sequence[Event]) -> Breakdown:
    stages: dict[str, list[int]] = {name: [] for name in (*TIMINGS, TOTAL)}
    positives = negatives = errors = 0
    for work in works:
        fields = work.fields
        match = fields.get("is_match")
        if match is True:
            positives += 1
        elif match is False:
            negatives += 1
        if fields.get("is_error") is True:
            errors += 1
        reached = [int_value(fields.get(name)) for name in TIMINGS]
        for name, value in zip(TIMINGS, reached, strict=True):
            if value is not None:
                stages[name].append(value)
        if all(value is not None for value in reached):
            stages[TOTAL].append(sum(value for value in reached if value is not None))
    return Breakdown(
        new_items=new_items,
        processed=len(works),
        positives=positives,
        negatives=negatives,
        unanswered=len(works) - positives - negatives,
        errors=errors,
        timings={name: distribution(values) for name, values in stages.items()},
    )


def summarize(events: Iterable[Event], skipped: Skipped | None = None) -> WatchdogReport:
    """The report of ``events`` (already limited to the period). Pure. ``skipped``: the lines
    the reader left out, carried into the report.

    * timings: each stage over the ``worker_works`` pings that reached it (a worker that raised
      has ``null`` for the stages after the failure); the sum over the pings that have all three;
    * ``processed``: ``worker_works`` pings, errors included; ``positives`` / ``negatives``:
      ``is_match`` true / false; ``unanswered``: ``is_match`` null (no answer from PhotoDNA);
    * ``errors``: ``is_error`` true;
    * queue sizes: heartbeats carry no consumer, so they are global only.
    """
    new_items: dict[str, int] = {}
    works: dict[str, list[Event]] = {}
    all_works: list[Event] = []
    heartbeats: dict[str, list[tuple[int, int]]] = {name: [] for name in QUEUE_FIELDS}
    pings = dict.fromkeys(MEASUREMENTS, 0)
    first: int | None = None
    last: int | None = None
    for event in events:
        if event.event not in pings:
            continue
        pings[event.event] += 1
        first = event.time_ns if first is None else min(first, event.time_ns)
        last = event.time_ns if last is None else max(last, event.time_ns)
        consumer = event.fields.get("consumer_name")
        name = consumer if isinstance(consumer, str) else ""
        if event.event == NEW_ITEM:
            new_items[name] = new_items.get(name, 0) + 1
        elif event.event == WORKER_WORKS:
            works.setdefault(name, []).append(event)
            all_works.append(event)
        else:
            for field in QUEUE_FIELDS:
                value = int_value(event.fields.get(field))
                if value is not None:
                    heartbeats[field].append((event.time_ns, value))
    consumers = {
        name: _breakdown(new_items.get(name, 0), works.get(name, []))
        for name in sorted({*new_items, *works})
    }
    return WatchdogReport(
        first_ms=None if first is None else first // 1_000_000,
        last_ms=None if last is None else last // 1_000_000,
        pings=pings,
        overall=_breakdown(sum(new_items.values()), all_works),
        consumers=consumers,
        queue={field: _gauge(samples) for field, samples in heartbeats.items()},
        skipped=skipped or Skipped(),
    )


def report_as_dict(report: WatchdogReport) -> dict[str, Any]:
    """The report as plain JSON-ready data."""
    return dataclasses.asdict(report)


# -- presentation -------------------------------------------------------------------------------


def _cell(value: int | float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _breakdown_lines(breakdown: Breakdown) -> list[str]:
    label_width = max(len(label) for label in TIMING_LABELS.values()) + 4
    lines = [
        f"  new items submitted             {breakdown.new_items}",
        f"  total processed (worker_works)  {breakdown.processed}",
        f"  positives / negatives           {breakdown.positives} / {breakdown.negatives}"
        + (f"  ({breakdown.unanswered} without an answer)" if breakdown.unanswered else ""),
        f"  errors (is_error)               {breakdown.errors}",
        f"  {'timings, ms':<{label_width - 2}}{'count':>7}{'p50':>8}{'p95':>8}{'max':>8}",
    ]
    for name, label in TIMING_LABELS.items():
        stats = breakdown.timings[name]
        lines.append(
            f"    {label:<{label_width - 4}}{stats.count:>7}{_cell(stats.p50):>8}"
            f"{_cell(stats.p95):>8}{_cell(stats.max):>8}"
        )
    return lines


def format_report(report: WatchdogReport, source: str = "") -> str:
    """The report as printed by ``otel-luna report watchdog``."""
    counts = ", ".join(f"{report.pings[name]} {name}" for name in MEASUREMENTS)
    lines = []
    if source:
        lines.append(f"watchdog report: {source}")
    lines.append(f"period: {iso_ms(report.first_ms)} .. {iso_ms(report.last_ms)} ({counts})")
    if report.skipped.lines:
        lines.append(report.skipped.describe())
    lines.append("")
    lines.append("all consumers")
    lines += _breakdown_lines(report.overall)
    for name, breakdown in report.consumers.items():
        lines.append("")
        lines.append(f"consumer {name!r}" if name else "consumer (none)")
        lines += _breakdown_lines(breakdown)
    lines.append("")
    lines.append(
        f"{'queue sizes (poller_heartbeat)':<34}{'count':>7}{'min':>8}{'mean':>9}{'max':>8}"
        f"{'last':>8}"
    )
    for name, gauge in report.queue.items():
        lines.append(
            f"  {name:<32}{gauge.count:>7}{_cell(gauge.min):>8}{_cell(gauge.mean):>9}"
            f"{_cell(gauge.max):>8}{_cell(gauge.last):>8}"
        )
    lines.append("")
    lines.append(
        "percentiles: nearest rank (the smallest value with at least p % of the values <= it)"
    )
    return "\n".join(lines)


# -- parsing (pure) -----------------------------------------------------------------------------


def _typed(kind: type, value: Any) -> Value:
    """``value`` in the JSON type the event table gives, or ``None`` if it is not one."""
    if value is None:
        return None
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        return True if text in ("true", "t") else False if text in ("false", "f") else None
    if kind is int:
        if type(value) is int:
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return None
    return value if isinstance(value, str) else None


def _event(name: str, time_ns: int, raw: Mapping[str, Any]) -> Event:
    return Event(
        name, time_ns, {field: _typed(kind, raw.get(field)) for field, kind in EVENTS[name]}
    )


def events_from_pings(lines: Iterable[str], origin: str = "pings") -> list[Event]:
    """Ping Centre JSON pings, one per line (blank lines skipped); other topics/events ignored."""
    events = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            ping = json.loads(line)
        except (ValueError, RecursionError) as error:
            raise ReportError(f"{origin}: line {number} is not JSON: {error}") from None
        if not isinstance(ping, dict) or not isinstance(ping.get("event"), str):
            continue
        if ping["event"] not in EVENTS:
            continue
        stamp = ping.get("timestamp")
        if isinstance(stamp, str) and stamp.isdigit():
            stamp = int(stamp)  # the seed's examples quote it
        if type(stamp) is not int:
            raise ReportError(f"{origin}: line {number} has no epoch-ms timestamp: {line[:200]}")
        events.append(_event(ping["event"], stamp * 1_000_000, ping))
    return events


def events_from_points(points: Iterable[Point]) -> list[Event]:
    """Watchdog points (line protocol read back); other measurements ignored."""
    return [
        _event(point.measurement, point.time_ns, {**dict(point.tags), **point.fields})
        for point in points
        if point.measurement in EVENTS
    ]


# -- edges: files, InfluxDB --------------------------------------------------------------------


def read_file(path: Path, since_ns: int | None = None) -> list[Event]:
    """The events in a file sink's output: JSON pings for ``.json``/``.jsonl``, else line
    protocol (its unreadable lines left out); those before ``since_ns`` left out."""
    return _file_events(path, since_ns)[0]


def _file_events(
    path: Path, since_ns: int | None, limits: Limits = DEFAULT_LIMITS
) -> tuple[list[Event], Skipped]:
    if path.name.endswith(_JSON_SUFFIXES):
        try:
            text = read_file_bytes(path, limits).decode("utf-8")
        except UnicodeDecodeError as error:
            raise ReportError(f"{path}: byte offset {error.start} is not UTF-8 text") from None
        events, skipped = events_from_pings(text.splitlines(), str(path)), Skipped()
    else:
        points, skipped = read_line_protocol(path, limits)
        events = events_from_points(points)
    if since_ns is not None:
        events = [event for event in events if event.time_ns >= since_ns]
    return events, skipped


def read_events(source: Source | Settings | str, since_ns: int | None = None) -> list[Event]:
    """The events in ``source`` (a file, an InfluxDB 1.x or 2.x; see
    :func:`~otel_luna.report.as_source`) from ``since_ns`` on; the unreadable lines of a
    line-protocol file are left out (:func:`watchdog_report` counts them)."""
    return _events(as_source(source), since_ns)[0]


def _events(
    source: Source, since_ns: int | None, limits: Limits = DEFAULT_LIMITS
) -> tuple[list[Event], Skipped]:
    if isinstance(source, Path):
        return _file_events(source, since_ns, limits)
    points = read_points(source, MEASUREMENTS, since_ns, limits=limits).points
    return events_from_points(points), Skipped()


def query_influxdb1(source: InfluxSource | Settings, since_ns: int | None = None) -> list[Event]:
    """The events in the InfluxDB 1.x database of ``source`` (``POST /query``, chunked, epoch
    ns)."""
    return read_events(dataclasses.replace(influx_source(source), api_version="1"), since_ns)


# -- the command --------------------------------------------------------------------------------


def watchdog_report(source: Source, window: Window, limits: Limits) -> MadeReport:
    """The watchdog report of ``source`` from the window's start on, read within ``limits``
    (what :func:`~otel_luna.report.run_report` makes for ``otel-luna report watchdog``)."""
    events, skipped = _events(source, window.start_ns, limits)
    described = describe(source, window.start_ns)
    report = summarize(events, skipped)
    document = {"source": described, **report_as_dict(report)}
    text = format_report(report, described)

    def draw(path: Path) -> None:
        from otel_luna.report._watchdog_chart import render_png

        render_png(events, path)

    return MadeReport(document, text, draw)
