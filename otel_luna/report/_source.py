"""Where a report reads: a line-protocol file (a file sink's output) or an InfluxDB
(:class:`~otel_luna.report.InfluxSource`), and the points read from it (:func:`read_points`).

A file is read piece by piece through the core's :class:`~otel_luna.encoding.LineReader`, within
:class:`~otel_luna.report.Limits`; the lines it cannot read are skipped and counted
(:class:`Skipped`).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from otel_luna.encoding import LineReader
from otel_luna.report._errors import ReportError
from otel_luna.report._query import (
    DEFAULT_LIMITS,
    InfluxSource,
    Limits,
    query_flux,
    query_influxql,
)
from otel_luna.schema import Point
from otel_luna.settings import Settings
from otel_luna.sinks import file_path

__all__ = [
    "PointsRead",
    "Skipped",
    "Source",
    "as_source",
    "describe_source",
    "parse_line_protocol",
    "read_file_bytes",
    "read_line_protocol",
    "read_points",
    "resolve_source",
    "source_of",
]

#: Where a report reads: a file sink's output, or an InfluxDB (``api_version`` 1: InfluxQL over
#: ``/query``; 2: Flux over ``/api/v2/query``).
Source = Path | InfluxSource

#: Bytes read from a file at once.
_PIECE_BYTES = 1024 * 1024


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


class PointsRead(NamedTuple):
    """What a reader got: the points, and the lines of a file it had to leave out."""

    points: list[Point]
    skipped: Skipped


# -- which source -------------------------------------------------------------------------------


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
        return InfluxSource.from_settings(settings)
    raise ReportError(
        f"cannot read a report from {settings.endpoint!r}: give an InfluxDB URL (--endpoint) "
        "or a file sink's output (--file)"
    )


def as_source(given: Source | Settings | str) -> Source:
    """A source from what a caller holds: a path (a :class:`~pathlib.Path` or a ``str``), an
    :class:`~otel_luna.report.InfluxSource`, the exporter's :class:`~otel_luna.Settings`, or an
    endpoint URL (``file://…``, ``http(s)://…``; the other settings from the environment)."""
    if isinstance(given, (Path, InfluxSource)):
        return given
    if isinstance(given, Settings):
        return source_of(given)
    if given.startswith(("file:", "http://", "https://")):
        return resolve_source(endpoint=given)
    return Path(given)


def describe_source(source: Source) -> str:
    """``file PATH``, ``InfluxDB URL database DB`` or ``InfluxDB URL org O bucket B``."""
    if isinstance(source, Path):
        return f"file {source}"
    return source.describe()


# -- files --------------------------------------------------------------------------------------


def parse_line_protocol(data: bytes, origin: str = "line protocol") -> PointsRead:
    """The points of line-protocol ``data`` (a file sink's output), skipping the lines that
    cannot be read (:class:`Skipped` counts them): not line protocol, not UTF-8, too long
    (:class:`~otel_luna.encoding.LineReader`). Pure. Lines but none readable is a
    :class:`ReportError` naming ``origin``."""
    reader = LineReader()
    points = reader.feed(data) + reader.finish()
    return _points_read(points, reader, origin)


def _points_read(points: list[Point], reader: LineReader, origin: str) -> PointsRead:
    if reader.skipped and not points:
        raise ReportError(f"{origin}: no line can be read (first: {reader.first_problem})")
    return PointsRead(points, Skipped(reader.skipped, reader.first_problem))


def read_line_protocol(path: Path, limits: Limits = DEFAULT_LIMITS) -> PointsRead:
    """The points of a line-protocol file (a file sink's output), read piece by piece through
    a :class:`~otel_luna.encoding.LineReader`: unreadable lines are skipped and counted. A file
    larger than ``limits.max_bytes``, or not a regular file, is a :class:`ReportError`."""
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


# -- any source ---------------------------------------------------------------------------------


def _keep(point: Point, start_ns: int | None, tags: Mapping[str, str]) -> bool:
    if start_ns is not None and point.time_ns < start_ns:
        return False
    own = dict(point.tags)
    return all(own.get(key) == value for key, value in tags.items())


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
    if source.api_version == "2":
        return PointsRead(query_flux(source, measurements, start_ns, wanted, limits), Skipped())
    return PointsRead(query_influxql(source, measurements, start_ns, wanted, limits), Skipped())
