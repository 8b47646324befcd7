"""``otel-luna report watchdog``: the watchdog-proxy metrics document's questions, answered.

The questions (``shared/seeds/002_*.txt``, *Analysis*), globally and per ``consumer_name``: time
in queue (``timing_sent``), time waiting for PhotoDNA (``timing_received``), time to reply
(``timing_submitted``) and their sum, as p50/p95/max; positives vs negatives (``is_match``);
errors (``is_error``); queue sizes over the period (``poller_heartbeat``: min/mean/max and the
last value); total processed (``worker_works`` pings) and new items submitted (``new_item``).

Layout, I/O only at the edges:

* readers turn a source into :class:`Event` rows: :func:`query_influxdb1` (InfluxQL over the 1.x
  ``/query`` API), :func:`read_file` (a file sink's output: JSON pings for ``.json``/``.jsonl``,
  else line protocol); the parsing under them is pure (:func:`events_from_pings`,
  :func:`events_from_points`, :func:`events_from_influx_results`);
* :func:`summarize` is pure: rows in, a :class:`WatchdogReport` of numbers out;
* :func:`format_report` / :func:`report_as_dict` present it; :func:`render_png` charts the
  timings over time (matplotlib, Agg backend, the ``report`` extra).

Percentiles are **nearest rank**: p is the smallest value such that at least p % of the values
are less than or equal to it, i.e. the value at 1-based rank ``ceil(p / 100 * n)`` of the sorted
values (rank 1 when that is 0). It is always one of the values; ``max`` is p100. Flux's
``quantile(method: "exact_selector")`` is the same definition; InfluxQL's ``percentile()``
rounds the rank instead (``floor(n * p / 100 + 0.5)``) and can be one rank lower.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import urllib3

from otel_luna.encoding.lineprotocol_reader import LineProtocolSyntaxError, parse_lines
from otel_luna.point import Point
from otel_luna.schema.watchdog import EVENTS, NEW_ITEM, POLLER_HEARTBEAT, WORKER_WORKS
from otel_luna.settings import Settings
from otel_luna.sinks.file import file_path
from otel_luna.sinks.http import basic_auth

__all__ = [
    "Breakdown",
    "Distribution",
    "Event",
    "Gauge",
    "ReportError",
    "WatchdogReport",
    "events_from_influx_results",
    "events_from_pings",
    "events_from_points",
    "format_report",
    "nearest_rank",
    "parse_duration",
    "query_influxdb1",
    "read_file",
    "render_png",
    "report_as_dict",
    "run_report",
    "summarize",
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
#: Rows per chunk of a chunked InfluxQL answer.
CHUNK_SIZE = 10_000

_DURATION_UNITS_NS = {
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
    "d": 86400 * 1_000_000_000,
    "w": 7 * 86400 * 1_000_000_000,
}
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w)")
_JSON_SUFFIXES = (".json", ".jsonl")


class ReportError(RuntimeError):
    """The report could not read its source; the message says what and where."""


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


# -- pure computation ---------------------------------------------------------------------------


def nearest_rank(values: Sequence[int], percent: float) -> int | None:
    """The nearest-rank ``percent`` percentile: the sorted value at rank ``ceil(p/100 * n)``.

    Exact arithmetic (``Fraction`` of the decimal ``percent``), so 95 of 20 values is rank 19,
    never 20 through a rounding error. ``None`` for no values.
    """
    if not values:
        return None
    if not 0 <= percent <= 100:
        raise ValueError(f"percent must be in [0, 100], got {percent}")
    ordered = sorted(values)
    rank = math.ceil(Fraction(str(percent)) * len(ordered) / 100)
    return ordered[max(rank, 1) - 1]


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


def _int(value: Value) -> int | None:
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
        reached = [_int(fields.get(name)) for name in TIMINGS]
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


def summarize(events: Iterable[Event]) -> WatchdogReport:
    """The report of ``events`` (already limited to the period). Pure.

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
                value = _int(event.fields.get(field))
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
    )


def report_as_dict(report: WatchdogReport) -> dict[str, Any]:
    """The report as plain JSON-ready data."""
    return dataclasses.asdict(report)


# -- presentation -------------------------------------------------------------------------------


def _iso_ms(epoch_ms: int | None) -> str:
    if epoch_ms is None:
        return "-"
    seconds, millis = divmod(epoch_ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


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
    lines.append(f"period: {_iso_ms(report.first_ms)} .. {_iso_ms(report.last_ms)} ({counts})")
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
        except ValueError as error:
            raise ReportError(f"{origin}: line {number} is not JSON: {error}") from None
        if not isinstance(ping, dict) or ping.get("event") not in EVENTS:
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


def events_from_influx_results(documents: Iterable[Mapping[str, Any]]) -> list[Event]:
    """Rows of ``SELECT *`` answers (``epoch=ns``), possibly chunked: one document per chunk."""
    events = []
    for document in documents:
        if "error" in document:
            raise ReportError(f"InfluxDB: {document['error']}")
        for result in document.get("results", []):
            if "error" in result:
                raise ReportError(f"InfluxDB: {result['error']}")
            for series in result.get("series", []):
                name = series.get("name")
                if name not in EVENTS:
                    continue
                columns = series["columns"]
                tags = series.get("tags", {})
                for values in series.get("values", []):
                    row = {**tags, **dict(zip(columns, values, strict=True))}
                    events.append(_event(name, int(row["time"]), row))
    return events


def parse_duration(text: str) -> int:
    """``90s``, ``15m``, ``2h``, ``7d``, ``1w``, ``1h30m``, ``500ms`` → nanoseconds (> 0)."""
    compact = text.strip().lower()
    if not compact or _DURATION.sub("", compact):
        raise ValueError(f"not a duration: {text!r} (e.g. 90s, 15m, 2h, 1d, 1h30m)")
    total = sum(int(n) * _DURATION_UNITS_NS[unit] for n, unit in _DURATION.findall(compact))
    if total <= 0:
        raise ValueError(f"the duration must be > 0, got {text!r}")
    return total


# -- edges: files, InfluxDB, PNG ----------------------------------------------------------------


def read_file(path: Path, since_ns: int | None = None) -> list[Event]:
    """The events in a file sink's output: JSON pings for ``.json``/``.jsonl``, else line
    protocol; those before ``since_ns`` left out."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ReportError(f"cannot read {path}: {error.strerror}") from None
    if path.name.endswith(_JSON_SUFFIXES):
        events = events_from_pings(text.splitlines(), str(path))
    else:
        try:
            events = events_from_points(parse_lines(text))
        except LineProtocolSyntaxError as error:
            raise ReportError(f"{path}: line {error.line}: {error}") from None
    if since_ns is not None:
        events = [event for event in events if event.time_ns >= since_ns]
    return events


def _identifier(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def influxql_select(settings: Settings, since_ns: int | None = None) -> str:
    """The one InfluxQL statement the report runs: every point of the three measurements."""
    prefix = _identifier(settings.database) + "."
    if settings.retention_policy:
        prefix += _identifier(settings.retention_policy)
    prefix += "."
    sources = ", ".join(prefix + _identifier(name) for name in MEASUREMENTS)
    where = "" if since_ns is None else f" WHERE time >= {since_ns}"
    return f"SELECT * FROM {sources}{where}"


def _chunks(body: bytes) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(body.splitlines(), 1):
        if not line.strip():
            continue
        try:
            document = json.loads(line)
        except ValueError:
            snippet = line[:300].decode(errors="replace")
            raise ReportError(
                f"InfluxDB answered something not JSON (chunk {number}): {snippet}"
            ) from None
        if isinstance(document, dict):
            yield document


def query_influxdb1(settings: Settings, since_ns: int | None = None) -> list[Event]:
    """The events in ``settings``' InfluxDB 1.x database (``POST /query``, chunked, epoch ns)."""
    if settings.resolved_api_version != "1":
        raise ReportError(
            "the report reads the InfluxDB 1.x /query API; for 2.x use the Flux queries in "
            "docs/watchdog.md"
        )
    params = {
        "q": influxql_select(settings, since_ns),
        "db": settings.database,
        "epoch": "ns",
        "chunked": "true",
        "chunk_size": str(CHUNK_SIZE),
    }
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    headers.update(basic_auth(settings.username, settings.password))
    try:
        response = urllib3.request(
            "POST",
            settings.endpoint + "/query",
            body=urlencode(params).encode(),
            headers=headers,
            timeout=settings.timeout,
            retries=False,
        )
    except urllib3.exceptions.HTTPError as error:
        raise ReportError(f"cannot reach InfluxDB at {settings.endpoint}: {error}") from None
    if response.status >= 300:
        detail = response.data[:300].decode(errors="replace").strip()
        raise ReportError(
            f"InfluxDB at {settings.endpoint} answered HTTP {response.status}: {detail}"
        )
    return events_from_influx_results(_chunks(response.data))


def render_png(events: Sequence[Event], path: Path, title: str = "watchdog timings") -> None:
    """A PNG of the ``worker_works`` timings over time (one point per ping and stage, and their
    sum), with the queue sizes below. Written atomically (temporary file, then rename)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
        from matplotlib.figure import Figure
    except ImportError:
        raise ReportError("--png needs matplotlib: pip install 'otel-luna[report]'") from None
    import datetime as dt

    def when(event: Event) -> dt.datetime:
        return dt.datetime.fromtimestamp(event.time_ns / 1e9, tz=dt.timezone.utc)

    works = sorted((e for e in events if e.event == WORKER_WORKS), key=lambda e: e.time_ns)
    beats = sorted((e for e in events if e.event == POLLER_HEARTBEAT), key=lambda e: e.time_ns)
    figure = Figure(figsize=(10, 6.5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    timings, queue = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1.4))
    for name in (*TIMINGS, TOTAL):
        xs: list[dt.datetime] = []
        ys: list[int] = []
        for work in works:
            reached = [_int(work.fields.get(stage)) for stage in TIMINGS]
            if name == TOTAL:
                value = None if None in reached else sum(v for v in reached if v is not None)
            else:
                value = _int(work.fields.get(name))
            if value is not None:
                xs.append(when(work))
                ys.append(value)
        total = name == TOTAL
        timings.scatter(
            xs,
            ys,
            label=TIMING_LABELS[name],
            alpha=0.75,
            marker="D" if total else "o",
            s=14 if total else 9,
        )
    errors = [w for w in works if w.fields.get("is_error") is True]
    for error in errors:
        timings.axvline(when(error), color="tab:red", alpha=0.15, linewidth=1)
    timings.set_ylabel("ms")
    timings.set_title(
        f"{title}: {len(works)} worker_works pings"
        + (f", {len(errors)} with is_error (red lines)" if errors else "")
    )
    if works:
        timings.legend(loc="upper left", fontsize="small")
    else:
        timings.text(0.5, 0.5, "no worker_works pings", ha="center", transform=timings.transAxes)
    for name in QUEUE_FIELDS:
        points = [(when(b), v) for b in beats if (v := _int(b.fields.get(name))) is not None]
        queue.step([p[0] for p in points], [p[1] for p in points], where="post", label=name)
    queue.set_ylabel("items")
    if beats:
        queue.legend(loc="upper left", fontsize="small")
    # matplotlib.dates has no type annotations
    locator = AutoDateLocator()  # type: ignore[no-untyped-call]
    queue.xaxis.set_major_locator(locator)
    queue.xaxis.set_major_formatter(ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    queue.set_xlabel("time (UTC)")
    directory = path.parent if str(path.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=directory)
    try:
        with os.fdopen(handle, "wb") as file:
            figure.savefig(file, format="png")
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


# -- the command --------------------------------------------------------------------------------


def run_report(
    *,
    endpoint: str | None = None,
    file: Path | None = None,
    database: str | None = None,
    since_ns: int | None = None,
    png: Path | None = None,
    as_json: bool = False,
    environ: Mapping[str, str] | None = None,
    now_ns: int | None = None,
) -> str:
    """Read, summarise, optionally chart; the text (or JSON) to print.

    The source is ``file``, else ``endpoint``, else ``OTEL_EXPORTER_LUNA_ENDPOINT`` (a
    ``file://`` endpoint reads that file, ``http(s)://`` an InfluxDB 1.x); ``database`` overrides
    ``OTEL_EXPORTER_LUNA_DATABASE``. ``since_ns`` is a duration: only the last ``since_ns``
    before ``now_ns`` (default: now) are read.
    """
    overrides: dict[str, Any] = {}
    if endpoint is not None:
        overrides["endpoint"] = endpoint
    if database is not None:
        overrides["database"] = database
    settings = Settings.load(environ, **overrides)
    now = time.time_ns() if now_ns is None else now_ns
    start = None if since_ns is None else now - since_ns
    if file is None and settings.endpoint.startswith("file:"):
        file = Path(file_path(settings.endpoint))
    if file is not None:
        events = read_file(file, start)
        source = f"file {file}"
    elif settings.endpoint.startswith(("http://", "https://")):
        events = query_influxdb1(settings, start)
        source = f"InfluxDB {settings.endpoint} database {settings.database}"
    else:
        raise ReportError(
            f"cannot read a report from {settings.endpoint!r}: give an InfluxDB 1.x URL "
            "(--endpoint) or a file sink's output (--file)"
        )
    if start is not None:
        source += f", since {_iso_ms(start // 1_000_000)}"
    report = summarize(events)
    if png is not None:
        render_png(events, png)
    if as_json:
        document = {"source": source, **report_as_dict(report)}
        if png is not None:
            document["png"] = str(png)
        return json.dumps(document, indent=2)
    text = format_report(report, source)
    if png is not None:
        text += f"\nchart: {png}"
    return text
