"""InfluxDB line-protocol reader: text in, points out. Pure, no I/O. The reverse of
:mod:`otel_luna.encoding.lineprotocol`, for the line protocol otel-luna writes (the demo and the
report read a file sink's output back with it).

Handles backslash escapes of ``,`` and space (and ``=`` in keys and tag values), quoted string
fields with ``\\"`` and ``\\\\`` (a string may hold a newline), integers (``1i``, ``1u``),
floats and booleans. Tags are returned sorted; a line without a timestamp gets ``time_ns`` 0.
"""

from __future__ import annotations

from otel_luna.point import FieldValue, Point


class LineProtocolSyntaxError(ValueError):
    """Text that is not line protocol; ``position`` is the offending character's index in the
    text parsed, ``line`` the number (from 1) of its line there."""

    def __init__(self, message: str, text: str, position: int) -> None:
        line_start = text.rfind("\n", 0, position) + 1
        snippet = text[line_start : line_start + 200].partition("\n")[0]
        super().__init__(f"{message} at character {position - line_start}: {snippet!r}")
        self.position = position
        self.line = text.count("\n", 0, position) + 1


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
        raise LineProtocolSyntaxError("unterminated string field", text, start)
    return value, end + 1


def _scalar_value(token: str, text: str, position: int) -> FieldValue:
    if not token:
        raise LineProtocolSyntaxError("missing field value", text, position)
    if token[-1] in "iu" and token[:-1].lstrip("-").isdigit():
        return int(token[:-1])
    if token in _TRUE:
        return True
    if token in _FALSE:
        return False
    try:
        return float(token)
    except ValueError:
        raise LineProtocolSyntaxError(f"bad field value {token!r}", text, position) from None


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
        if not stamp.lstrip("-").isdigit():
            raise LineProtocolSyntaxError("bad timestamp", text, stamp_start)
        time_ns = int(stamp)
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
