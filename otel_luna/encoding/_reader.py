"""InfluxDB line-protocol reader: text in, points out. Pure, no I/O. The reverse of
:mod:`otel_luna.encoding._lineprotocol`, for the line protocol otel-luna writes (the demo and the
report read a file sink's output back with it).

Handles backslash escapes of ``,`` and space (and ``=`` in keys and tag values), quoted string
fields with ``\\"`` and ``\\\\`` (a string may hold a newline), integers (``1i``, ``1u``),
floats and booleans. Tags are returned sorted; a line without a timestamp gets ``time_ns`` 0.
What InfluxDB would refuse is a syntax error too: ``NaN``, an infinite float (``inf``,
``1e400``), an integer outside 64 bits, a time outside :data:`MIN_TIME_NS` to :data:`MAX_TIME_NS`.
"""

from __future__ import annotations

import math
import re

from otel_luna.schema._point import FieldValue, Point

#: Longest line :class:`LineReader` holds, in bytes: a longer one is skipped (counted) without
#: being kept whole. InfluxDB refuses a body over 25 MB by default; otel-luna's lines are far
#: shorter (string fields are cut at 64 KiB).
MAX_LINE_BYTES = 4 * 1024 * 1024
#: Bytes per piece :func:`read_bytes` feeds its reader.
_PIECE = 1024 * 1024
_INTEGER = re.compile(r"-?[0-9]+\Z")
#: A float as InfluxDB reads one: digits, a point, an exponent — no ``nan``, ``inf``, ``_``.
_FLOAT = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")
#: The times InfluxDB accepts (``models.MinNanoTime``, ``MaxNanoTime``): about 1677 to 2262.
MIN_TIME_NS = -(2**63) + 2
MAX_TIME_NS = 2**63 - 2
_INT64 = range(-(2**63), 2**63)
_UINT64 = range(2**64)
#: What decoding with ``surrogateescape`` makes of bytes that are not UTF-8.
_SURROGATE = re.compile("[\udc80-\udcff]")
_UNTERMINATED = "unterminated string field"


class LineProtocolSyntaxError(ValueError):
    """Text that is not line protocol; ``position`` is the offending character's index in the
    text parsed, ``line`` the number (from 1) of its line there, ``reason`` the message without
    the quoted line (``bad timestamp at character 144``)."""

    def __init__(self, message: str, text: str, position: int) -> None:
        line_start = text.rfind("\n", 0, position) + 1
        snippet = text[line_start : line_start + 200].partition("\n")[0]
        self.reason = f"{message} at character {position - line_start}"
        super().__init__(f"{self.reason}: {snippet!r}")
        self.position = position
        self._text = text

    @property
    def line(self) -> int:
        # Counted when asked: a reader skipping many lines of a long text asks elsewhere.
        return self._text.count("\n", 0, self.position) + 1


_MEASUREMENT_END = frozenset(", \n")
_KEY_END = frozenset("=, \n")
_TAG_VALUE_END = frozenset(", \n")
_FIELD_VALUE_END = frozenset(", \n")
_MEASUREMENT_ESCAPABLE = frozenset(", ")
_KEY_ESCAPABLE = frozenset(",= ")
_STRING_ESCAPABLE = frozenset('"\\')
_QUOTE = frozenset('"')
_TRUE = frozenset({"t", "T", "true", "True", "TRUE"})
_FALSE = frozenset({"f", "F", "false", "False", "FALSE"})


def _token(
    text: str, start: int, ends: frozenset[str], escapable: frozenset[str]
) -> tuple[str, int]:
    """Unescaped text from ``start`` up to an unescaped character of ``ends`` (or the end)."""
    out: list[str] = []
    i = start
    n = len(text)
    while i < n:
        char = text[i]
        if char == "\\" and i + 1 < n and text[i + 1] in escapable:
            out.append(text[i + 1])
            i += 2
            continue
        if char in ends:
            break
        out.append(char)
        i += 1
    return "".join(out), i


def _string_value(text: str, start: int) -> tuple[str, int]:
    """A quoted string field value starting at the opening quote; index after the closing one.

    It may span lines: only ``"`` and ``\\`` are escaped inside.
    """
    value, end = _token(text, start + 1, _QUOTE, _STRING_ESCAPABLE)
    if end >= len(text):
        raise LineProtocolSyntaxError(_UNTERMINATED, text, start)
    return value, end + 1


def _scalar_value(token: str, text: str, position: int) -> FieldValue:
    if not token:
        raise LineProtocolSyntaxError("missing field value", text, position)
    if token[-1] in "iu" and _INTEGER.match(token, 0, len(token) - 1):
        number = int(token[:-1])
        if number not in (_INT64 if token[-1] == "i" else _UINT64):
            raise LineProtocolSyntaxError(f"integer out of range {token!r}", text, position)
        return number
    if token in _TRUE:
        return True
    if token in _FALSE:
        return False
    if _FLOAT.match(token):
        value = float(token)
        if math.isfinite(value):
            return value
        raise LineProtocolSyntaxError(f"float out of range {token!r}", text, position)
    raise LineProtocolSyntaxError(f"bad field value {token!r}", text, position)


def _parse_point(text: str, start: int) -> tuple[Point, int]:
    """The point whose line starts at ``start``; the index just past its line (and newline)."""
    measurement, i = _token(text, start, _MEASUREMENT_END, _MEASUREMENT_ESCAPABLE)
    if not measurement:
        raise LineProtocolSyntaxError("missing measurement", text, start)
    n = len(text)
    tags: list[tuple[str, str]] = []
    while i < n and text[i] == ",":
        key, i = _token(text, i + 1, _KEY_END, _KEY_ESCAPABLE)
        if i >= n or text[i] != "=" or not key:
            raise LineProtocolSyntaxError("bad tag", text, i)
        value, i = _token(text, i + 1, _TAG_VALUE_END, _KEY_ESCAPABLE)
        tags.append((key, value))
    if i >= n or text[i] != " ":
        raise LineProtocolSyntaxError("expected a space before the fields", text, i)
    i += 1
    fields: dict[str, FieldValue] = {}
    while True:
        key, i = _token(text, i, _KEY_END, _KEY_ESCAPABLE)
        if i >= n or text[i] != "=" or not key:
            raise LineProtocolSyntaxError("bad field", text, i)
        i += 1
        if i < n and text[i] == '"':
            fields[key], i = _string_value(text, i)
        else:
            value_start = i
            while i < n and text[i] not in _FIELD_VALUE_END:
                i += 1
            fields[key] = _scalar_value(text[value_start:i], text, value_start)
        if i < n and text[i] == ",":
            i += 1
            continue
        break
    time_ns = 0
    if i < n and text[i] == " ":
        stamp_start = i + 1
        end = text.find("\n", stamp_start)
        end = n if end < 0 else end
        stamp = text[stamp_start:end].strip()
        if not _INTEGER.match(stamp):
            raise LineProtocolSyntaxError("bad timestamp", text, stamp_start)
        time_ns = int(stamp)
        if not MIN_TIME_NS <= time_ns <= MAX_TIME_NS:
            raise LineProtocolSyntaxError("timestamp out of range", text, stamp_start)
        i = end
    if i < n and text[i] != "\n":
        raise LineProtocolSyntaxError("unexpected character", text, i)
    return Point(measurement, tuple(sorted(tags)), fields, time_ns), i + 1


def parse_line(line: str) -> Point:
    """One line of line protocol (as otel-luna writes it) as a :class:`Point`."""
    point, end = _parse_point(line, 0)
    if end < len(line):
        raise LineProtocolSyntaxError("more than one line", line, end - 1)
    return point


def parse_lines(text: str) -> list[Point]:
    """Every point in ``text``; blank lines and ``#`` comments are skipped. A string field may
    hold a newline."""
    points = []
    i = 0
    n = len(text)
    while i < n:
        end = text.find("\n", i)
        line_end = n if end < 0 else end
        head = text[i:line_end].strip()
        if not head or head.startswith("#"):
            i = line_end + 1
            continue
        point, i = _parse_point(text, i)
        points.append(point)
    return points


class LineReader:
    """Line protocol read from bytes given piece by piece (a file, a stream): every line is
    parsed or skipped, never an exception. Pure: bytes in, points out.

    A line ends at the newline after its timestamp: a string field may hold newlines, so a line
    whose string is not closed yet waits for the next piece (at :meth:`finish`, it is skipped
    with all that follows it: a file cut short inside a string). A line that is not line
    protocol is skipped up to the first newline after the point where it went wrong; one that
    is not UTF-8, or longer than ``max_line_bytes``, is skipped too. ``skipped`` counts them and
    ``first_problem`` says where the first one is and why (``line 364: bad timestamp at
    character 144``). What is read does not depend on where the pieces are cut, and at most
    about ``max_line_bytes`` plus one piece is held at any time, whatever is fed.
    """

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self.skipped = 0
        self.first_problem = ""
        self._pending = b""  # from the start of a line that may not be complete yet
        self._line = 1  # number (in the whole input) of the line _pending starts
        self._offset = 0  # byte offset (in the whole input) where _pending starts
        self._discarding = False  # skipping the rest of a line that was too long

    def feed(self, data: bytes) -> list[Point]:
        """The points of the lines ``data`` completes."""
        if self._discarding:
            end = data.find(b"\n")
            if end < 0:
                self._offset += len(data)
                return []
            self._discarding = False
            self._line += 1
            self._offset += end + 1
            data = data[end + 1 :]
        pending = self._pending + data
        last = pending.rfind(b"\n")
        points: list[Point] = []
        if last >= 0:
            pending = pending[self._read(pending[: last + 1], points, final=False) :]
        self._pending = pending
        if len(pending) > self.max_line_bytes:
            self._skip(self._line, f"longer than {self.max_line_bytes} bytes")
            self._line += pending.count(b"\n")
            self._offset += len(pending)
            self._pending = b""
            self._discarding = not pending.endswith(b"\n")
        return points

    def finish(self) -> list[Point]:
        """The points of what is left: the last line, which may lack its newline."""
        points: list[Point] = []
        pending, self._pending = self._pending, b""
        if pending and not self._discarding:
            self._read(pending, points, final=True)
        self._discarding = False
        return points

    def _read(self, region: bytes, points: list[Point], *, final: bool) -> int:
        """Parse or skip the lines of ``region`` (whole lines, but for the last one if
        ``final``); the bytes consumed: all but a last line whose string is not closed."""
        try:
            text = region.decode("utf-8")
            dirty = False
        except UnicodeDecodeError:
            text = region.decode("utf-8", "surrogateescape")
            dirty = True
        i, n, line = 0, len(text), self._line
        while i < n:
            end = text.find("\n", i)
            end = n if end < 0 else end
            head = text[i:end].strip()
            if not head or head.startswith("#"):
                i = end + 1
                line += 1
                continue
            problem = None
            try:
                point, after = _parse_point(text, i)
            except LineProtocolSyntaxError as error:
                if error.reason.startswith(_UNTERMINATED):
                    if not final:
                        break  # the string may close in the next piece
                    after = n
                else:
                    stop = text.find("\n", error.position)
                    after = n if stop < 0 else stop + 1
                problem = (line + text.count("\n", i, error.position), error.reason)
            if dirty and _SURROGATE.search(text, i, after):
                problem = self._not_utf8(text, i, after, line, final and after == n)
            if problem is None:
                points.append(point)
            else:
                self._skip(*problem)
            line += text.count("\n", i, after)
            i = after
        consumed = len(region) if i >= n else len(text[:i].encode("utf-8", "surrogateescape"))
        self._line = line
        self._offset += consumed
        return consumed

    def _not_utf8(self, text: str, start: int, end: int, line: int, last: bool) -> tuple[int, str]:
        data = text[start:end].encode("utf-8", "surrogateescape")
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as error:
            number = line + data.count(b"\n", 0, error.start)
            if last and error.reason == "unexpected end of data":
                return number, "cut short inside a UTF-8 character"
            before = len(text[:start].encode("utf-8", "surrogateescape"))
            return number, f"not UTF-8 text (byte offset {self._offset + before + error.start})"
        return line, "not UTF-8 text"  # pragma: no cover - a surrogate came from bad bytes

    def _skip(self, line: int, reason: str) -> None:
        self.skipped += 1
        if not self.first_problem:
            self.first_problem = f"line {line}: {reason}"


def read_bytes(data: bytes, max_line_bytes: int = MAX_LINE_BYTES) -> tuple[list[Point], LineReader]:
    """The points of line-protocol ``data``, and the reader that says what it skipped."""
    reader = LineReader(max_line_bytes)
    points: list[Point] = []
    for start in range(0, len(data), _PIECE):
        points += reader.feed(data[start : start + _PIECE])
    points += reader.finish()
    return points, reader
