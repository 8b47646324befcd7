"""The InfluxDB query client of the add-ons (``report`` and ``demo``): which InfluxDB to ask
(:class:`InfluxSource`, built from the exporter's settings in one place), the queries a report
sends (:func:`influxql_select`, :func:`flux_select`, pure), the answers parsed back into points
(:func:`points_from_influxql`, :func:`points_from_flux_csv`, pure), and the requests themselves
(:func:`query_influxql`, :func:`query_flux`, :func:`run_influxql`, :func:`ping`), each read
within :class:`Limits` and failing with one line (:class:`~otel_luna.report.ReportError`).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import urllib3

from otel_luna.report._errors import ReportError
from otel_luna.schema import FieldValue, Point
from otel_luna.settings import Settings
from otel_luna.sinks import basic_auth

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_LIMITS",
    "InfluxSource",
    "Limits",
    "flux_select",
    "influx_source",
    "influxql_identifier",
    "influxql_select",
    "ping",
    "points_from_flux_csv",
    "points_from_influxql",
    "query_flux",
    "query_influxql",
    "rfc3339_ns",
    "run_influxql",
    "server_answer",
]

#: Rows per chunk of a chunked InfluxQL answer.
CHUNK_SIZE = 10_000
#: Longest answer of a server quoted in an error (its first line only).
_ANSWER_CHARS = 200
_HTML_HEAD = re.compile(r"<head.*?</head>|<!--.*?-->|<(script|style).*?</\1>", re.S | re.I)
_MARKUP = re.compile(r"<[^>]*>")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
#: Bytes read from a server at once.
_PIECE_BYTES = 1024 * 1024
#: Bytes of an error answer read to quote it.
_ERROR_BODY_BYTES = 64 * 1024
_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")
#: Columns of a Flux answer that are neither tags nor the point's own data.
_FLUX_META = frozenset({"", "result", "table", "_start", "_stop"})


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


@dataclass(frozen=True)
class InfluxSource:
    """An InfluxDB to read from: its URL, the API (``"1"``: InfluxQL over ``/query``; ``"2"``:
    Flux over ``/api/v2/query``), where the points are (1.x: ``database`` and
    ``retention_policy``; 2.x: ``org`` and ``bucket``), the credentials (never shown in a
    ``repr``) and the seconds to wait for each answer's bytes."""

    endpoint: str
    api_version: str = "1"
    database: str = ""
    retention_policy: str | None = None
    org: str | None = None
    bucket: str = ""
    username: str | None = dataclasses.field(default=None, repr=False)
    password: str | None = dataclasses.field(default=None, repr=False)
    token: str | None = dataclasses.field(default=None, repr=False)
    timeout: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> InfluxSource:
        """The InfluxDB the exporter's ``settings`` write to (``OTEL_EXPORTER_LUNA_*``)."""
        return cls(
            endpoint=settings.endpoint,
            api_version=settings.resolved_api_version,
            database=settings.database,
            retention_policy=settings.retention_policy,
            org=settings.org,
            bucket=settings.bucket,
            username=settings.username,
            password=settings.password,
            token=settings.token,
            timeout=settings.timeout,
        )

    def describe(self) -> str:
        """``InfluxDB URL database DB`` or ``InfluxDB URL org O bucket B``."""
        if self.api_version == "2":
            return f"InfluxDB {self.endpoint} org {self.org} bucket {self.bucket}"
        return f"InfluxDB {self.endpoint} database {self.database}"


def influx_source(given: InfluxSource | Settings) -> InfluxSource:
    """``given`` as an :class:`InfluxSource` (settings are read by
    :meth:`InfluxSource.from_settings`)."""
    return given if isinstance(given, InfluxSource) else InfluxSource.from_settings(given)


def influxql_identifier(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _flux_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")
    return '"' + escaped + '"'


# -- queries (pure) -----------------------------------------------------------------------------


def influxql_select(
    source: InfluxSource | Settings,
    measurements: Sequence[str],
    start_ns: int | None = None,
    tags: Mapping[str, str] | None = None,
) -> str:
    """The one InfluxQL statement a report runs: every point of ``measurements`` from
    ``start_ns`` on whose tags equal ``tags``, grouped by every tag (so that the answer says
    which columns are tags)."""
    influx = influx_source(source)
    prefix = influxql_identifier(influx.database) + "."
    if influx.retention_policy:
        prefix += influxql_identifier(influx.retention_policy)
    prefix += "."
    sources = ", ".join(prefix + influxql_identifier(name) for name in measurements)
    conditions = [] if start_ns is None else [f"time >= {start_ns}"]
    conditions += [f"{influxql_identifier(k)} = {_literal(v)}" for k, v in (tags or {}).items()]
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return f"SELECT * FROM {sources}{where} GROUP BY *"


def flux_select(
    source: InfluxSource | Settings,
    measurements: Sequence[str],
    start_ns: int | None = None,
    tags: Mapping[str, str] | None = None,
) -> str:
    """The Flux query a report sends to InfluxDB 2.x: the same rows as :func:`influxql_select`,
    one table per series and field, as stored (no pivot)."""
    influx = influx_source(source)
    wanted = " or ".join(f"r._measurement == {_flux_string(name)}" for name in measurements)
    lines = [
        f"from(bucket: {_flux_string(influx.bucket)})",
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


# -- requests -----------------------------------------------------------------------------------


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


def _request(
    influx: InfluxSource,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    limits: Limits,
) -> tuple[int, bytes]:
    """The status and body of a 2xx answer, read within ``limits``; anything else (no answer,
    an error status, an encoding not asked for, too many bytes, too long) a one-line
    :class:`ReportError`."""
    deadline = time.monotonic() + limits.max_seconds
    where = f"InfluxDB at {influx.endpoint}"
    try:
        response = urllib3.request(
            method,
            influx.endpoint + path,
            body=body,
            headers=headers,
            timeout=influx.timeout,
            retries=False,
            preload_content=False,
            decode_content=False,
        )
    except urllib3.exceptions.HTTPError as error:
        raise ReportError(f"cannot reach InfluxDB at {influx.endpoint}: {error}") from None
    try:
        if response.status >= 300:
            detail = server_answer(_read_body(response, _ERROR_BODY_BYTES, deadline, where, True))
            raise ReportError(f"{where} answered HTTP {response.status}: {detail}")
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise ReportError(f"{where} answered in Content-Encoding {encoding!r}, not asked for")
        return response.status, _read_body(response, limits.max_bytes, deadline, where, False)
    finally:  # closed first: what a hostile server left unread must not meet the next request
        response.close()
        response.release_conn()


def _post(
    influx: InfluxSource, path: str, body: bytes, headers: dict[str, str], limits: Limits
) -> bytes:
    return _request(influx, "POST", path, body, headers, limits)[1]


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


def _influxql_post(
    influx: InfluxSource, params: Mapping[str, str], limits: Limits
) -> Iterator[dict[str, Any]]:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    headers.update(basic_auth(influx.username, influx.password))
    return _chunks(_post(influx, "/query", urlencode(params).encode(), headers, limits))


def query_influxql(
    source: InfluxSource | Settings,
    measurements: Sequence[str],
    start_ns: int | None = None,
    tags: Mapping[str, str] | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> list[Point]:
    """The points of :func:`influxql_select` from an InfluxDB 1.x (``POST /query``, chunked,
    epoch ns, basic auth from the source), read within ``limits``."""
    influx = influx_source(source)
    params = {
        "q": influxql_select(influx, measurements, start_ns, tags),
        "db": influx.database,
        "epoch": "ns",
        "chunked": "true",
        "chunk_size": str(CHUNK_SIZE),
    }
    return points_from_influxql(_influxql_post(influx, params, limits), measurements)


def run_influxql(
    source: InfluxSource | Settings, *statements: str, limits: Limits = DEFAULT_LIMITS
) -> list[dict[str, Any]]:
    """Run InfluxQL ``statements`` in one ``POST /query`` (1.x API, epoch ns, basic auth): one
    result per statement. A statement the server refused is a :class:`ReportError` naming it."""
    influx = influx_source(source)
    params = {"q": ";\n".join(statements), "db": influx.database, "epoch": "ns"}
    results: list[dict[str, Any]] = []
    for number, document in enumerate(_influxql_post(influx, params, limits), 1):
        if "error" in document:
            raise ReportError(f"InfluxDB: {server_answer(str(document['error']).encode())}")
        found = document.get("results", [])
        if not isinstance(found, list) or not all(isinstance(r, dict) for r in found):
            raise _not_influxql(f"'results' of chunk {number} is not a list of objects")
        results += found
    for index, result in enumerate(results):
        if "error" in result:
            statement = statements[index] if index < len(statements) else "?"
            raise ReportError(f"InfluxDB: {result['error']}: {statement}")
    return results


def ping(source: InfluxSource | Settings, limits: Limits = DEFAULT_LIMITS) -> int:
    """The status of ``GET /ping`` (204 from an InfluxDB 1.x); an error status or no answer is
    a :class:`ReportError`."""
    influx = influx_source(source)
    headers = basic_auth(influx.username, influx.password)
    return _request(influx, "GET", "/ping", None, headers, limits)[0]


def query_flux(
    source: InfluxSource | Settings,
    measurements: Sequence[str],
    start_ns: int | None = None,
    tags: Mapping[str, str] | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> list[Point]:
    """The points of :func:`flux_select` from an InfluxDB 2.x (``POST /api/v2/query?org=``,
    ``Authorization: Token``, annotated CSV), read within ``limits``."""
    influx = influx_source(source)
    request = {
        "query": flux_select(influx, measurements, start_ns, tags),
        "type": "flux",
        "dialect": {
            "header": True,
            "delimiter": ",",
            "annotations": ["datatype", "group", "default"],
        },
    }
    headers = {"Content-Type": "application/json", "Accept": "application/csv"}
    if influx.token:
        headers["Authorization"] = f"Token {influx.token}"
    path = "/api/v2/query?" + urlencode({"org": influx.org or ""})
    body = _post(influx, path, json.dumps(request).encode(), headers, limits)
    return points_from_flux_csv(body.decode("utf-8", errors="replace"))
