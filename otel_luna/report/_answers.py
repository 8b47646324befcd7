"""What InfluxDB answers, parsed back into points (pure): the JSON of an InfluxQL ``SELECT``
(:func:`points_from_influxql`, chunked or not), the annotated CSV of a Flux query
(:func:`points_from_flux_csv`), and what any server said, cut to one line for an error message
(:func:`server_answer`). An answer of another shape is a :class:`~otel_luna.report.ReportError`
saying what is wrong with it."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from otel_luna.report._errors import ReportError
from otel_luna.schema import FieldValue, Point

__all__ = [
    "influxql_documents",
    "not_influxql",
    "points_from_flux_csv",
    "points_from_influxql",
    "rfc3339_ns",
    "server_answer",
]

#: Longest answer of a server quoted in an error (its first line only).
_ANSWER_CHARS = 200
_HTML_HEAD = re.compile(r"<head.*?</head>|<!--.*?-->|<(script|style).*?</\1>", re.S | re.I)
_MARKUP = re.compile(r"<[^>]*>")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")
#: Columns of a Flux answer that are neither tags nor the point's own data.
_FLUX_META = frozenset({"", "result", "table", "_start", "_stop"})


def _field_value(value: Any) -> FieldValue | None:
    if isinstance(value, (bool, int, float, str)):
        return value
    return None


def not_influxql(what: str) -> ReportError:
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
            raise not_influxql("'results' is not a list")
        for result in results:
            if not isinstance(result, dict):
                raise not_influxql("a result is not an object")
            if "error" in result:
                raise ReportError(f"InfluxDB: {server_answer(str(result['error']).encode())}")
            all_series = result.get("series", [])
            if not isinstance(all_series, list):
                raise not_influxql("'series' is not a list")
            for series in all_series:
                if not isinstance(series, dict):
                    raise not_influxql("a series is not an object")
                name = series.get("name")
                if not isinstance(name, str):
                    raise not_influxql("a series has no name")
                read = _series_points(name, series)  # checked even if not wanted
                if name in wanted:
                    points += read
    return points


def _series_points(name: str, series: Mapping[str, Any]) -> list[Point]:
    raw_tags = series.get("tags", {})
    columns = series.get("columns")
    rows = series.get("values", [])
    if not isinstance(raw_tags, dict) or not all(isinstance(v, str) for v in raw_tags.values()):
        raise not_influxql(f"the tags of {name!r} are not strings")
    if (
        not isinstance(columns, list)
        or not all(isinstance(c, str) for c in columns)
        or "time" not in columns
    ):
        raise not_influxql(f"the columns of {name!r} are not names with 'time'")
    if not isinstance(rows, list):
        raise not_influxql(f"the values of {name!r} are not a list")
    tags = tuple(sorted((k, v) for k, v in raw_tags.items() if v))
    points = []
    for values in rows:
        if not isinstance(values, list) or len(values) != len(columns):
            raise not_influxql(f"a row of {name!r} does not have its {len(columns)} columns")
        row = dict(zip(columns, values, strict=True))
        stamp = row.pop("time")
        if type(stamp) is not int:
            raise not_influxql(f"a time of {name!r} is not an integer (epoch ns)")
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


def _lines(body: bytes) -> Iterator[bytes]:
    """The lines of ``body``, one at a time (not a list of copies of all of them)."""
    start = 0
    while start < len(body):
        end = body.find(b"\n", start)
        end = len(body) if end < 0 else end
        yield body[start:end]
        start = end + 1


def influxql_documents(body: bytes) -> Iterator[dict[str, Any]]:
    """The JSON documents of an InfluxQL answer, one per line (a chunked answer has one per
    chunk): anything else is a :class:`ReportError`."""
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
            raise not_influxql(f"chunk {number} is not an object")
        yield document
