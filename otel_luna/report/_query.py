"""The InfluxDB query client of the add-ons (``report`` and ``demo``): which InfluxDB to ask
(:class:`InfluxSource`, built from the exporter's settings in one place), the queries a report
sends (:func:`influxql_select`, :func:`flux_select`, pure), the answers parsed back into points
(:mod:`~otel_luna.report._answers`, pure), and the requests themselves
(:func:`query_influxql`, :func:`query_flux`, :func:`run_influxql`, :func:`ping`), each read
within :class:`Limits` and failing with one line (:class:`~otel_luna.report.ReportError`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import urllib3

from otel_luna.report._answers import (
    influxql_documents,
    not_influxql,
    points_from_flux_csv,
    points_from_influxql,
    server_answer,
)
from otel_luna.report._errors import ReportError
from otel_luna.schema import Point
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
    "query_flux",
    "query_influxql",
    "run_influxql",
]

#: Rows per chunk of a chunked InfluxQL answer.
CHUNK_SIZE = 10_000
#: Bytes read from a server at once.
_PIECE_BYTES = 1024 * 1024
#: Bytes of an error answer read to quote it.
_ERROR_BODY_BYTES = 64 * 1024


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


# -- requests -----------------------------------------------------------------------------------


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


def _influxql_post(
    influx: InfluxSource, params: Mapping[str, str], limits: Limits
) -> Iterator[dict[str, Any]]:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    headers.update(basic_auth(influx.username, influx.password))
    return influxql_documents(_post(influx, "/query", urlencode(params).encode(), headers, limits))


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
            raise not_influxql(f"'results' of chunk {number} is not a list of objects")
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
