"""What the reports share: the error, nearest-rank percentiles, durations, where the points come
from (a line-protocol file, InfluxDB 1.x over InfluxQL, InfluxDB 2.x over Flux) and the PNG file.

Readers are the edges: each turns a source into :class:`~otel_luna.Point` rows. The parsing
under them is pure (:func:`points_from_influxql`, :func:`points_from_flux_csv`); the queries they
send are built by pure functions too (:func:`influxql_select`, :func:`flux_select`), so a test can
hold them to what the server expects.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import errno
import io
import json
import math
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar
from urllib.parse import urlencode

import urllib3

from otel_luna.encoding._reader import LineReader
from otel_luna.redact import printable as escape
from otel_luna.schema._point import FieldValue, Point
from otel_luna.settings._settings import Settings
from otel_luna.sinks._file import file_path
from otel_luna.sinks._http import basic_auth

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_LIMITS",
    "MAX_DURATION_NS",
    "ChartError",
    "Limits",
    "PointsRead",
    "ReportError",
    "Skipped",
    "Source",
    "describe_source",
    "flux_select",
    "influxql_identifier",
    "influxql_select",
    "iso_ms",
    "nearest_rank",
    "new_figure",
    "parse_duration",
    "parse_line_protocol",
    "points_from_flux_csv",
    "points_from_influxql",
    "printable",
    "query_flux",
    "query_influxql",
    "read_file_bytes",
    "read_line_protocol",
    "read_points",
    "resolve_source",
    "rfc3339_ns",
    "save_png",
    "server_answer",
    "source_of",
    "window_start",
]

#: Rows per chunk of a chunked InfluxQL answer.
CHUNK_SIZE = 10_000

#: Where a report reads: a file sink's output, or an InfluxDB described by the settings
#: (``resolved_api_version`` 1: InfluxQL over ``/query``; 2: Flux over ``/api/v2/query``).
Source = Path | Settings

_Number = TypeVar("_Number", int, float)

_DURATION_UNITS_NS = {
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
    "d": 86400 * 1_000_000_000,
    "w": 7 * 86400 * 1_000_000_000,
}
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w)")
#: The longest ``--since``: 100 years (36525 d); beyond, InfluxDB refuses the time and a file's
#: window would start before year 1.
MAX_DURATION_NS = 36525 * _DURATION_UNITS_NS["d"]
#: Longest answer of a server quoted in an error (its first line only).
_ANSWER_CHARS = 200
_HTML_HEAD = re.compile(r"<head.*?</head>|<!--.*?-->|<(script|style).*?</\1>", re.S | re.I)
_MARKUP = re.compile(r"<[^>]*>")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
#: Bytes read from a file or a server at once.
_PIECE_BYTES = 1024 * 1024
#: Bytes of an error answer read to quote it.
_ERROR_BODY_BYTES = 64 * 1024
_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")
#: Columns of a Flux answer that are neither tags nor the point's own data.
_FLUX_META = frozenset({"", "result", "table", "_start", "_stop"})


class ReportError(RuntimeError):
    """The report could not read its source; the message says what and where."""


class ChartError(ReportError):
    """The report was made but its chart could not be drawn or written; ``text`` is the
    report (text or JSON) to print all the same."""

    def __init__(self, message: str, text: str) -> None:
        super().__init__(message)
        self.text = text


@dataclass(frozen=True)
class Skipped:
    """Lines of a line-protocol file left out because they could not be read (a file cut
    short by a crash ends in half a line): how many, and where the first one is and why."""

    lines: int = 0
    first: str = ""

    def describe(self) -> str:
        """``skipped 1 unreadable line (first: line 364: bad timestamp at character 144)``;
        empty when nothing was skipped."""
        if not self.lines:
            return ""
        noun = "line" if self.lines == 1 else "lines"
        return f"skipped {self.lines} unreadable {noun} (first: {self.first})"


@dataclass(frozen=True)
class Limits:
    """What a report reads at most: ``max_bytes`` of a file or of a server's answer, and
    ``max_seconds`` for the whole of a server's answer (``OTEL_EXPORTER_LUNA_TIMEOUT`` bounds
    each wait for bytes; this bounds a server that keeps sending slowly)."""

    #: An InfluxQL answer costs about 8 times its size in memory while it is read (JSON,
    #: then points): 128 MiB, about a million points, stays near 1 GB.
    max_bytes: int = 128 * 1024 * 1024
    max_seconds: float = 300.0


DEFAULT_LIMITS = Limits()


class PointsRead(NamedTuple):
    """What a reader got: the points, and the lines of a file it had to leave out."""

    points: list[Point]
    skipped: Skipped


# -- pure helpers -------------------------------------------------------------------------------


def nearest_rank(values: Sequence[_Number], percent: float) -> _Number | None:
    """The nearest-rank ``percent`` percentile: the sorted value at rank ``ceil(p/100 * n)``.

    p is the smallest value such that at least p % of the values are less than or equal to it
    (rank 1 when ``ceil`` gives 0); it is always one of the values, and p100 is the max. Exact
    arithmetic (``Fraction`` of the decimal ``percent``), so 95 of 20 values is rank 19, never 20
    through a rounding error. ``None`` for no values. Flux's ``quantile(method:
    "exact_selector")`` is the same definition; InfluxQL's ``percentile()`` rounds the rank
    instead (``floor(n * p / 100 + 0.5)``) and can be one rank lower.
    """
    if not values:
        return None
    if not 0 <= percent <= 100:
        raise ValueError(f"percent must be in [0, 100], got {percent}")
    ordered = sorted(values)
    rank = math.ceil(Fraction(str(percent)) * len(ordered) / 100)
    return ordered[max(rank, 1) - 1]


def parse_duration(text: str) -> int:
    """``90s``, ``15m``, ``2h``, ``7d``, ``1w``, ``1h30m``, ``500ms`` → nanoseconds (> 0, at
    most :data:`MAX_DURATION_NS`)."""
    compact = text.strip().lower()
    if not compact or _DURATION.sub("", compact):
        raise ValueError(f"not a duration: {text!r} (e.g. 90s, 15m, 2h, 1d, 1h30m)")
    total = sum(int(n) * _DURATION_UNITS_NS[unit] for n, unit in _DURATION.findall(compact))
    if total <= 0:
        raise ValueError(f"the duration must be > 0, got {text!r}")
    if total > MAX_DURATION_NS:
        raise ValueError(f"the duration must be at most 100 years (36525d), got {text!r}")
    return total


def window_start(since_ns: int | None, now_ns: int | None = None) -> int | None:
    """The start of the last ``since_ns`` before ``now_ns`` (default: now); ``None``: all."""
    if since_ns is None:
        return None
    return (time.time_ns() if now_ns is None else now_ns) - since_ns


def iso_ms(epoch_ms: int | None) -> str:
    """``2026-11-30T04:29:44.123Z``; ``-`` for ``None``."""
    if epoch_ms is None:
        return "-"
    seconds, millis = divmod(epoch_ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def influxql_identifier(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _flux_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")
    return '"' + escaped + '"'


def _keep(point: Point, start_ns: int | None, tags: Mapping[str, str]) -> bool:
    if start_ns is not None and point.time_ns < start_ns:
        return False
    own = dict(point.tags)
    return all(own.get(key) == value for key, value in tags.items())


# -- queries (pure) -----------------------------------------------------------------------------


def influxql_select(
    settings: Settings,
    measurements: Sequence[str],
    start_ns: int | None = None,
    tags: Mapping[str, str] | None = None,
) -> str:
    """The one InfluxQL statement a report runs: every point of ``measurements`` from
    ``start_ns`` on whose tags equal ``tags``, grouped by every tag (so that the answer says
    which columns are tags)."""
    prefix = influxql_identifier(settings.database) + "."
    if settings.retention_policy:
        prefix += influxql_identifier(settings.retention_policy)
    prefix += "."
    sources = ", ".join(prefix + influxql_identifier(name) for name in measurements)
    conditions = [] if start_ns is None else [f"time >= {start_ns}"]
    conditions += [f"{influxql_identifier(k)} = {_literal(v)}" for k, v in (tags or {}).items()]
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return f"SELECT * FROM {sources}{where} GROUP BY *"


def flux_select(
    settings: Settings,
    measurements: Sequence[str],
    start_ns: int | None = None,
    tags: Mapping[str, str] | None = None,
) -> str:
    """The Flux query a report sends to InfluxDB 2.x: the same rows as :func:`influxql_select`,
    one table per series and field, as stored (no pivot)."""
    wanted = " or ".join(f"r._measurement == {_flux_string(name)}" for name in measurements)
    lines = [
        f"from(bucket: {_flux_string(settings.bucket)})",
        f"  |> range(start: time(v: {start_ns or 0}))",
        f"  |> filter(fn: (r) => {wanted})",
    ]
    for key, value in (tags or {}).items():
        lines.append(f"  |> filter(fn: (r) => r[{_flux_string(key)}] == {_flux_string(value)})")
    return "\n".join(lines)


# -- parsing (pure) -----------------------------------------------------------------------------


def _field_value(value: Any) -> FieldValue | None:
    if isinstance(value, (bool, int, float, str)):
        return value
    return None


def _not_influxql(what: str) -> ReportError:
    return ReportError(f"InfluxDB answered JSON that is not an InfluxQL result: {what}")


def points_from_influxql(
    documents: Iterable[Mapping[str, Any]], measurements: Iterable[str]
) -> list[Point]:
    """Points of ``SELECT * … GROUP BY *`` answers (``epoch=ns``), possibly chunked (one
    document per chunk). Tags come from each series' tags (an empty one is no tag), fields from
    its columns (a null is no field); other measurements are left out. An answer of another
    shape is a :class:`ReportError` saying what is wrong with it."""
    wanted = frozenset(measurements)
    points = []
    for document in documents:
        if "error" in document:
            raise ReportError(f"InfluxDB: {server_answer(str(document['error']).encode())}")
        results = document.get("results", [])
        if not isinstance(results, list):
            raise _not_influxql("'results' is not a list")
        for result in results:
            if not isinstance(result, dict):
                raise _not_influxql("a result is not an object")
            if "error" in result:
                raise ReportError(f"InfluxDB: {server_answer(str(result['error']).encode())}")
            all_series = result.get("series", [])
            if not isinstance(all_series, list):
                raise _not_influxql("'series' is not a list")
            for series in all_series:
                if not isinstance(series, dict):
                    raise _not_influxql("a series is not an object")
                name = series.get("name")
                if not isinstance(name, str):
                    raise _not_influxql("a series has no name")
                read = _series_points(name, series)  # checked even if not wanted
                if name in wanted:
                    points += read
    return points


def _series_points(name: str, series: Mapping[str, Any]) -> list[Point]:
    raw_tags = series.get("tags", {})
    columns = series.get("columns")
    rows = series.get("values", [])
    if not isinstance(raw_tags, dict) or not all(isinstance(v, str) for v in raw_tags.values()):
        raise _not_influxql(f"the tags of {name!r} are not strings")
    if (
        not isinstance(columns, list)
        or not all(isinstance(c, str) for c in columns)
        or "time" not in columns
    ):
        raise _not_influxql(f"the columns of {name!r} are not names with 'time'")
    if not isinstance(rows, list):
        raise _not_influxql(f"the values of {name!r} are not a list")
    tags = tuple(sorted((k, v) for k, v in raw_tags.items() if v))
    points = []
    for values in rows:
        if not isinstance(values, list) or len(values) != len(columns):
            raise _not_influxql(f"a row of {name!r} does not have its {len(columns)} columns")
        row = dict(zip(columns, values, strict=True))
        stamp = row.pop("time")
        if type(stamp) is not int:
            raise _not_influxql(f"a time of {name!r} is not an integer (epoch ns)")
        fields = {
            key: value for key, raw in row.items() if (value := _field_value(raw)) is not None
        }
        if fields:
            points.append(Point(name, tags, fields, stamp))
    return points


def rfc3339_ns(text: str) -> int:
    """``2026-11-30T04:29:44.123456789Z`` (any fraction, ``Z`` or an offset) → ns since the
    epoch, exactly."""
    match = _RFC3339.match(text.strip())
    if match is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    whole, fraction, zone = match.groups()
    moment = dt.datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone))
    seconds = (moment - _EPOCH) // dt.timedelta(seconds=1)
    return seconds * 1_000_000_000 + int((fraction or "0").ljust(9, "0"))


def _flux_cell(datatype: str, text: str) -> Any:
    if datatype == "string":
        return text
    if text == "":
        return None
    if datatype in ("long", "unsignedLong"):
        return int(text)
    if datatype == "double":
        return float(text)
    if datatype == "boolean":
        return text == "true"
    if datatype.startswith("dateTime"):
        return rfc3339_ns(text)
    return text


def points_from_flux_csv(text: str) -> list[Point]:
    """Points of an annotated-CSV answer of ``/api/v2/query`` to :func:`flux_select` (one row
    per field: ``_measurement``, ``_field``, ``_value``, ``_time`` and the tags), merged back into
    one point per measurement, tag set and time. An error table (columns ``error``,
    ``reference``) raises :class:`ReportError`, and so does CSV that is not such an answer (a
    table without those columns, a cell that is not of its declared type)."""
    try:
        return _points_from_flux_csv(text)
    except csv.Error as error:
        raise ReportError(f"InfluxDB answered CSV that cannot be read: {error}") from None


_FLUX_COLUMNS = ("_measurement", "_field", "_value", "_time")


def _points_from_flux_csv(text: str) -> list[Point]:
    merged: dict[tuple[str, tuple[tuple[str, str], ...], int], dict[str, FieldValue]] = {}
    datatypes: list[str] = []
    defaults: list[str] = []
    header: list[str] | None = None
    for number, row in enumerate(csv.reader(io.StringIO(text)), 1):
        if not row or all(cell == "" for cell in row):
            datatypes, defaults, header = [], [], None  # a new table follows
            continue
        if row[0] == "#datatype":
            datatypes, header = row, None
            continue
        if row[0] == "#default":
            defaults, header = row, None
            continue
        if row[0].startswith("#"):
            header = None
            continue
        if header is None:
            header = row
            missing = [name for name in _FLUX_COLUMNS if name not in header]
            if missing and "error" not in header:
                raise ReportError(
                    f"InfluxDB answered CSV that is not a Flux answer (row {number} has no "
                    f"{', '.join(missing)} column): {server_answer(','.join(row).encode())}"
                )
            continue
        if "error" in header and "_value" not in header:
            index = header.index("error")
            raise ReportError(f"InfluxDB: {row[index] if index < len(row) else row}")
        cells: dict[str, Any] = {}
        for index, name in enumerate(header):
            value = row[index] if index < len(row) else ""
            if value == "" and index < len(defaults):
                value = defaults[index]
            kind = datatypes[index] if index < len(datatypes) else "string"
            try:
                cells[name] = _flux_cell(kind, value)
            except ValueError:
                raise ReportError(
                    f"InfluxDB answered CSV that is not a Flux answer (row {number}: "
                    f"{server_answer(value.encode())!r} is not a {kind})"
                ) from None
        measurement, field, stamp = (
            cells.get("_measurement"),
            cells.get("_field"),
            cells.get("_time"),
        )
        stored = _field_value(cells.get("_value"))
        if not isinstance(measurement, str) or not isinstance(field, str):
            continue
        if not isinstance(stamp, int) or stored is None:
            continue
        tags = tuple(
            sorted(
                (name, cell)
                for name, cell in cells.items()
                if name not in _FLUX_META
                and not name.startswith("_")
                and isinstance(cell, str)
                and cell
            )
        )
        merged.setdefault((measurement, tags, stamp), {})[field] = stored
    return [Point(m, tags, fields, stamp) for (m, tags, stamp), fields in merged.items()]


# -- edges: files, InfluxDB ---------------------------------------------------------------------


def resolve_source(
    *,
    endpoint: str | None = None,
    file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Source:
    """``file``, else ``endpoint``, else ``OTEL_EXPORTER_LUNA_ENDPOINT`` with the other
    ``OTEL_EXPORTER_LUNA_*`` settings (``overrides`` replace them: ``database``, ``org``,
    ``bucket``, …): a ``file://`` endpoint is that file, ``http(s)://`` an InfluxDB."""
    if file is not None:
        return file
    given = {name: value for name, value in overrides.items() if value is not None}
    if endpoint is not None:
        given["endpoint"] = endpoint
    return source_of(Settings.load(environ, **given))


def source_of(settings: Settings) -> Source:
    """What ``settings`` point at: the file of a ``file://`` endpoint, else the InfluxDB of an
    ``http(s)://`` one; any other endpoint (``console``) is a :class:`ReportError`."""
    if settings.endpoint.startswith("file:"):
        return Path(file_path(settings.endpoint))
    if settings.endpoint.startswith(("http://", "https://")):
        return settings
    raise ReportError(
        f"cannot read a report from {settings.endpoint!r}: give an InfluxDB URL (--endpoint) "
        "or a file sink's output (--file)"
    )


def describe_source(source: Source) -> str:
    """``file PATH``, ``InfluxDB URL database DB`` or ``InfluxDB URL org O bucket B``."""
    if isinstance(source, Path):
        return f"file {source}"
    if source.resolved_api_version == "2":
        return f"InfluxDB {source.endpoint} org {source.org} bucket {source.bucket}"
    return f"InfluxDB {source.endpoint} database {source.database}"


def parse_line_protocol(data: bytes, origin: str = "line protocol") -> PointsRead:
    """The points of line-protocol ``data`` (a file sink's output), skipping the lines that
    cannot be read (:class:`Skipped` counts them): not line protocol, not UTF-8, too long
    (:class:`~otel_luna.encoding._reader.LineReader`). Pure. Lines but none
    readable is a :class:`ReportError` naming ``origin``."""
    reader = LineReader()
    points = reader.feed(data) + reader.finish()
    return _points_read(points, reader, origin)


def _points_read(points: list[Point], reader: LineReader, origin: str) -> PointsRead:
    if reader.skipped and not points:
        raise ReportError(f"{origin}: no line can be read (first: {reader.first_problem})")
    return PointsRead(points, Skipped(reader.skipped, reader.first_problem))


def read_line_protocol(path: Path, limits: Limits = DEFAULT_LIMITS) -> PointsRead:
    """The points of a line-protocol file (a file sink's output), read piece by piece through
    a :class:`~otel_luna.encoding._reader.LineReader`: unreadable lines are
    skipped and counted. A file larger than ``limits.max_bytes``, or not a regular file, is
    a :class:`ReportError`."""
    reader = LineReader()
    points: list[Point] = []
    for piece in _file_pieces(path, limits):
        points += reader.feed(piece)
    points += reader.finish()
    return _points_read(points, reader, str(path))


def read_file_bytes(path: Path, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """All of a (small enough) regular file: :class:`ReportError` otherwise."""
    return b"".join(_file_pieces(path, limits))


def _file_pieces(path: Path, limits: Limits) -> Iterator[bytes]:
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise ReportError(f"cannot read {path}: {error.strerror}") from None
    with os.fdopen(fd, "rb", buffering=0) as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ReportError(f"cannot read {path}: not a regular file")
        read = 0
        while True:
            try:
                piece = file.read(_PIECE_BYTES)
            except OSError as error:
                raise ReportError(f"cannot read {path}: {error.strerror}") from None
            if not piece:
                return
            read += len(piece)
            if read > limits.max_bytes:
                raise ReportError(f"{path} is larger than {limits.max_bytes} bytes (--max-bytes)")
            yield piece


def server_answer(body: bytes) -> str:
    """What a server said, for an error message, on one line of at most about 200 characters:
    the first non-blank line of ``body``; of an HTML page (a proxy's or a web server's error
    page, not InfluxDB), its text without the markup."""
    text = body[: _ANSWER_CHARS * 20].decode(errors="replace")
    if text.lstrip().startswith("<"):
        first = " ".join(_MARKUP.sub(" ", _HTML_HEAD.sub(" ", text)).split())
    else:
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return first if len(first) <= _ANSWER_CHARS else first[: _ANSWER_CHARS - 3] + "..."


def _post(
    settings: Settings, path: str, body: bytes, headers: dict[str, str], limits: Limits
) -> bytes:
    """The body of a 2xx answer to a POST, read within ``limits``; anything else (no answer, an
    error status, an encoding not asked for, too many bytes, too long) a one-line
    :class:`ReportError`."""
    deadline = time.monotonic() + limits.max_seconds
    where = f"InfluxDB at {settings.endpoint}"
    try:
        response = urllib3.request(
            "POST",
            settings.endpoint + path,
            body=body,
            headers=headers,
            timeout=settings.timeout,
            retries=False,
            preload_content=False,
            decode_content=False,
        )
    except urllib3.exceptions.HTTPError as error:
        raise ReportError(f"cannot reach InfluxDB at {settings.endpoint}: {error}") from None
    try:
        if response.status >= 300:
            detail = server_answer(_read_body(response, _ERROR_BODY_BYTES, deadline, where, True))
            raise ReportError(f"{where} answered HTTP {response.status}: {detail}")
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise ReportError(f"{where} answered in Content-Encoding {encoding!r}, not asked for")
        return _read_body(response, limits.max_bytes, deadline, where, False)
    finally:  # closed first: what a hostile server left unread must not meet the next request
        response.close()
        response.release_conn()


def _read_body(
    response: urllib3.BaseHTTPResponse, max_bytes: int, deadline: float, where: str, cut: bool
) -> bytes:
    """Up to ``max_bytes`` of the body, until ``deadline`` (``time.monotonic()``); beyond
    either, a :class:`ReportError` (or, with ``cut``, what was read: enough to quote)."""
    pieces: list[bytes] = []
    read = 0
    while True:
        if time.monotonic() > deadline:
            if cut:
                break
            raise ReportError(f"{where} kept answering for longer than --max-time; stopped")
        try:
            piece = response.read1(_PIECE_BYTES)
        except (urllib3.exceptions.HTTPError, OSError) as error:
            if cut:
                break
            raise ReportError(f"{where} stopped answering: {error}") from None
        if not piece:
            break
        pieces.append(piece)
        read += len(piece)
        if read > max_bytes:
            if cut:
                break
            raise ReportError(
                f"{where} answered more than {max_bytes} bytes (--max-bytes); stopped (narrow "
                "the report with --since or --service, or raise --max-bytes)"
            )
    return b"".join(pieces)


def _lines(body: bytes) -> Iterator[bytes]:
    """The lines of ``body``, one at a time (not a list of copies of all of them)."""
    start = 0
    while start < len(body):
        end = body.find(b"\n", start)
        end = len(body) if end < 0 else end
        yield body[start:end]
        start = end + 1


def _chunks(body: bytes) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(_lines(body), 1):
        if not line.strip():
            continue
        try:
            document = json.loads(line)
        except (ValueError, RecursionError):
            snippet = server_answer(line)
            raise ReportError(
                f"InfluxDB answered something not JSON (chunk {number}): {snippet}"
            ) from None
        if not isinstance(document, dict):
            raise _not_influxql(f"chunk {number} is not an object")
        yield document


def query_influxql(
    settings: Settings,
    measurements: Sequence[str],
    start_ns: int | None = None,
    tags: Mapping[str, str] | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> list[Point]:
    """The points of :func:`influxql_select` from an InfluxDB 1.x (``POST /query``, chunked,
    epoch ns, basic auth from the settings), read within ``limits``."""
    params = {
        "q": influxql_select(settings, measurements, start_ns, tags),
        "db": settings.database,
        "epoch": "ns",
        "chunked": "true",
        "chunk_size": str(CHUNK_SIZE),
    }
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    headers.update(basic_auth(settings.username, settings.password))
    body = _post(settings, "/query", urlencode(params).encode(), headers, limits)
    return points_from_influxql(_chunks(body), measurements)


def query_flux(
    settings: Settings,
    measurements: Sequence[str],
    start_ns: int | None = None,
    tags: Mapping[str, str] | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> list[Point]:
    """The points of :func:`flux_select` from an InfluxDB 2.x (``POST /api/v2/query?org=``,
    ``Authorization: Token``, annotated CSV), read within ``limits``."""
    request = {
        "query": flux_select(settings, measurements, start_ns, tags),
        "type": "flux",
        "dialect": {
            "header": True,
            "delimiter": ",",
            "annotations": ["datatype", "group", "default"],
        },
    }
    headers = {"Content-Type": "application/json", "Accept": "application/csv"}
    if settings.token:
        headers["Authorization"] = f"Token {settings.token}"
    path = "/api/v2/query?" + urlencode({"org": settings.org or ""})
    body = _post(settings, path, json.dumps(request).encode(), headers, limits)
    return points_from_flux_csv(body.decode("utf-8", errors="replace"))


def read_points(
    source: Source,
    measurements: Sequence[str],
    start_ns: int | None = None,
    tags: Mapping[str, str] | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> PointsRead:
    """The points of ``measurements`` in ``source`` from ``start_ns`` on, with ``tags``, and
    the lines of a file that could not be read (none for an InfluxDB); no more than
    ``limits`` allow."""
    wanted = tags or {}
    if isinstance(source, Path):
        names = frozenset(measurements)
        everything, skipped = read_line_protocol(source, limits)
        kept = [
            point
            for point in everything
            if point.measurement in names and _keep(point, start_ns, wanted)
        ]
        return PointsRead(kept, skipped)
    if source.resolved_api_version == "2":
        return PointsRead(query_flux(source, measurements, start_ns, wanted, limits), Skipped())
    return PointsRead(query_influxql(source, measurements, start_ns, wanted, limits), Skipped())


# -- PNG ----------------------------------------------------------------------------------------


def new_figure(width: float, height: float) -> Figure:
    """A matplotlib figure on the Agg canvas (no display needed), constrained layout."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ReportError("--png needs matplotlib: pip install 'otel-luna[report]'") from None
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_png(figure: Figure, path: Path) -> None:
    """Write ``figure`` to ``path`` atomically (a temporary file beside it, then a rename),
    creating the missing parent directories. :class:`ReportError` (``cannot write the chart
    PATH: <reason>``) when it cannot be written."""
    from matplotlib.text import Text

    for text in figure.findobj(Text):
        # Labels hold values read from the database or a file: no control character, and a
        # "$" is a dollar sign, not mathtext.
        text.set_text(escape(text.get_text(), lines=True))
        text.set_parse_math(False)
    try:
        _write_png(figure, path)
    except OSError as error:
        reason = error.strerror or str(error)
        raise ReportError(f"cannot write the chart {path}: {reason}") from None


def _write_png(figure: Figure, path: Path) -> None:
    directory = path.parent if str(path.parent) else Path(".")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a file stands where a directory is needed
        raise NotADirectoryError(
            errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(directory)
        ) from None
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=directory)
    try:
        with os.fdopen(handle, "wb") as file:
            figure.savefig(file, format="png")
        os.chmod(temporary, 0o644)  # a chart to share, not mkstemp's 0600
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


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
