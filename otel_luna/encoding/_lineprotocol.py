"""InfluxDB line-protocol encoder: points in, bytes out. Pure, no I/O.

Escaping follows the line-protocol reference (the same rules as influxdb-client's ``Point``):
measurement escapes ``,`` and space; tag keys, tag values and field keys escape ``,``, ``=`` and
space; string field values escape ``"`` and ``\\``. What line protocol cannot carry is not sent:

* a NaN or infinite float field is dropped (``nonfinite_field``);
* an empty tag value is dropped (``empty_tag_value``);
* a string field longer than :data:`MAX_STRING_FIELD_BYTES` is truncated (``truncated_string``);
* an integer outside int64 is dropped (``int_out_of_range``);
* a point whose time is outside InfluxDB's range (:data:`MIN_TIME_NS` … :data:`MAX_TIME_NS`), whose
  key is too long (series key + field key over :data:`MAX_KEY_BYTES`), that has a tag or field
  key ``time`` (InfluxDB refuses the tag and silently drops the field), or a string InfluxDB
  cannot store as UTF-8 (a lone surrogate) is rejected;
* a key or tag value containing a newline, or a backslash before ``,``, ``=``, space, ``"``, another
  backslash or the end (InfluxDB reads those as escapes whatever is sent), a
  measurement starting with ``#`` (a comment), a measurement or field key starting with a tab or
  NUL (skipped by the parser), an empty key,
  or a point left with no field is rejected (:class:`InvalidPointError`).

The rules for names and tag values are :mod:`otel_luna.schema._keys`'s (the mapping refuses user
keys by the same ones).

Every drop is counted in :attr:`LineProtocolEncoder.counts`, by reason, until
:meth:`~LineProtocolEncoder.take_counts` takes them.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

from otel_luna._compiled import NATIVE
from otel_luna.outcomes import Counting, Reason
from otel_luna.schema._keys import MAX_KEY_BYTES, RESERVED_KEY, start_problem, text_problem
from otel_luna.schema._point import FieldValue, Point

#: String field values longer than this many UTF-8 bytes are truncated (InfluxDB's own limit).
MAX_STRING_FIELD_BYTES = 64 * 1024
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
#: The times InfluxDB 1.x accepts (``time outside range -9223372036854775806 - …``).
MIN_TIME_NS, MAX_TIME_NS = -(2**63) + 2, 2**63 - 2
_KEY_SEPARATOR_BYTES = 4
# Below this many characters in prefix + field set, no key can be too long: skip the check.
_SHORT_KEY = MAX_KEY_BYTES // 4 - _KEY_SEPARATOR_BYTES
_TAG_CACHE_LIMIT = 4096
# Strings this short cannot exceed the byte limit: only quotes and backslashes need a look.
_SHORT_STRING = MAX_STRING_FIELD_BYTES // 4

_MEASUREMENT_ESCAPES = str.maketrans({",": "\\,", " ": "\\ "})
_KEY_ESCAPES = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ "})
_STRING_ESCAPES = str.maketrans({'"': '\\"', "\\": "\\\\"})


if NATIVE is not None:  # the compiled common case of encode_point (see LineProtocolEncoder)
    NATIVE.configure(_SHORT_KEY, _SHORT_STRING)


class InvalidPointError(ValueError):
    """A point that line protocol cannot carry; ``reason`` is a short machine-readable word."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def _check_name(kind: str, text: str) -> None:
    problem = text_problem(kind, text)
    if problem is not None:
        raise InvalidPointError(*problem)


def _check_start(kind: str, text: str) -> None:
    problem = start_problem(kind, text)
    if problem is not None:
        raise InvalidPointError(*problem)


class LineProtocolEncoder(Counting):
    """Encodes points to line protocol, counting what it drops or rejects (``counts``, handed
    over by :meth:`take_counts`).

    Tag sets repeat (a handful of routes and status codes), so their encoded form is cached.
    Not thread-safe: give each thread its own encoder or hold a lock.
    """

    def __init__(self) -> None:
        super().__init__()
        self._measurements: dict[str, str] = {}
        self._tagsets: dict[tuple[tuple[str, str], ...], str] = {}
        self._field_keys: dict[str, str] = {}
        self._prefixes: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
        if NATIVE is not None:
            # Lines whose prefix and field keys are cached, written in C; any other point (a
            # cache miss, a drop to count, an error) goes to the pure-Python method below.
            self.encode_point = partial(  # type: ignore[method-assign]
                NATIVE.encode_point,
                self._prefixes,
                self._field_keys,
                partial(LineProtocolEncoder.encode_point, self),
            )

    def encode(self, points: Iterable[Point]) -> list[str]:
        """Encode ``points`` to lines (no trailing newline); invalid points are counted, skipped."""
        lines: list[str] = []
        append = lines.append
        for point in points:
            try:
                append(self.encode_point(point))
            except InvalidPointError as error:
                self.counts[error.reason] += 1
        return lines

    def encode_point(self, point: Point) -> str:
        """One line for ``point``; raises :class:`InvalidPointError` if it cannot be carried."""
        measurement, tags, fields, time_ns = point
        if not MIN_TIME_NS <= time_ns <= MAX_TIME_NS:
            raise InvalidPointError(
                Reason.TIME_OUT_OF_RANGE, f"time {time_ns} is outside InfluxDB's range"
            )
        prefix = self._prefixes.get((measurement, tags))
        if prefix is None:
            prefix = self._prefix(measurement, tags)
        fieldset = self._fieldset(fields)
        if len(prefix) + len(fieldset) > _SHORT_KEY:
            self._check_key_length(prefix, fields)
        line = f"{prefix} {fieldset} {time_ns}"
        if not line.isascii():
            try:
                line.encode()
            except UnicodeEncodeError:
                raise InvalidPointError(
                    Reason.INVALID_UTF8, "a lone surrogate in a key or value"
                ) from None
        return line

    def _check_key_length(self, prefix: str, fields: dict[str, FieldValue]) -> None:
        series = len(prefix.encode(errors="surrogatepass")) + _KEY_SEPARATOR_BYTES
        for key in fields:
            escaped = self._field_keys.get(key) or self._field_key(key)
            if series + len(escaped.encode(errors="surrogatepass")) - 1 > MAX_KEY_BYTES:
                raise InvalidPointError(
                    Reason.KEY_TOO_LONG, f"series key and field key over {MAX_KEY_BYTES} bytes"
                )

    def _prefix(self, measurement: str, tags: tuple[tuple[str, str], ...]) -> str:
        """``measurement,tag=value,...`` escaped; cached unless a tag was dropped."""
        name = self._measurements.get(measurement)
        if name is None:
            name = self._measurement(measurement)
        tagset = self._tagsets.get(tags)
        if tagset is None:
            tagset = self._tagset(tags)
            if tags not in self._tagsets:  # a counted drop: count it again next time
                return name + tagset
        if len(self._prefixes) >= _TAG_CACHE_LIMIT:
            self._prefixes.clear()
        prefix = self._prefixes[(measurement, tags)] = name + tagset
        return prefix

    def _measurement(self, name: str) -> str:
        _check_name("measurement", name)
        if name[0] == "#":
            raise InvalidPointError(
                Reason.COMMENT_MEASUREMENT, f"measurement {name!r} starts with #"
            )
        _check_start("measurement", name)
        encoded = name.translate(_MEASUREMENT_ESCAPES)
        if len(self._measurements) < _TAG_CACHE_LIMIT:
            self._measurements[name] = encoded
        return encoded

    def _tagset(self, tags: tuple[tuple[str, str], ...]) -> str:
        parts = []
        cacheable = True  # a counted drop must be counted again next time
        for key, value in tags:
            if value == "":
                self.counts[Reason.EMPTY_TAG_VALUE] += 1
                cacheable = False
                continue
            _check_name("tag_key", key)
            if key == RESERVED_KEY:
                raise InvalidPointError(
                    Reason.RESERVED_KEY, "tag key 'time' is reserved by InfluxDB"
                )
            _check_name("tag_value", value)
            parts.append(f",{key.translate(_KEY_ESCAPES)}={value.translate(_KEY_ESCAPES)}")
        encoded = "".join(parts)
        if cacheable:
            if len(self._tagsets) >= _TAG_CACHE_LIMIT:
                self._tagsets.clear()
            self._tagsets[tags] = encoded
        return encoded

    def _field_key(self, key: str) -> str:
        """``key=`` escaped, cached."""
        _check_name("field_key", key)
        _check_start("field_key", key)  # the first key follows a space
        if key == RESERVED_KEY:
            raise InvalidPointError(Reason.RESERVED_KEY, "field key 'time' is reserved by InfluxDB")
        encoded = key.translate(_KEY_ESCAPES) + "="
        if len(self._field_keys) < _TAG_CACHE_LIMIT:
            self._field_keys[key] = encoded
        return encoded

    def _fieldset(self, fields: dict[str, FieldValue]) -> str:
        parts = []
        keys = self._field_keys
        for key, value in fields.items():
            prefix = keys.get(key)
            if prefix is None:
                prefix = self._field_key(key)
            kind = type(value)
            if kind is str:
                text: str = value  # type: ignore[assignment]
                if len(text) > _SHORT_STRING or '"' in text or "\\" in text:
                    text = self._string(text)
                parts.append(f'{prefix}"{text}"')
            elif kind is float:
                if value - value == 0.0:  # type: ignore[operator] # finite: not NaN, not inf
                    parts.append(f"{prefix}{value!r}")
                else:
                    self.counts[Reason.NONFINITE_FIELD] += 1
            elif kind is int:
                if _INT64_MIN <= value <= _INT64_MAX:  # type: ignore[operator]
                    parts.append(f"{prefix}{value}i")
                else:
                    self.counts[Reason.INT_OUT_OF_RANGE] += 1
            elif kind is bool:
                parts.append(f"{prefix}{'true' if value else 'false'}")
            else:
                self.counts[Reason.UNSUPPORTED_FIELD_TYPE] += 1
        if not parts:
            raise InvalidPointError(Reason.NO_FIELDS, "point has no field line protocol can carry")
        return ",".join(parts)

    def _string(self, value: str) -> str:
        """Truncated to the limit and escaped."""
        if len(value) > MAX_STRING_FIELD_BYTES // 4:
            raw = value.encode()
            if len(raw) > MAX_STRING_FIELD_BYTES:
                self.counts[Reason.TRUNCATED_STRING] += 1
                value = raw[:MAX_STRING_FIELD_BYTES].decode(errors="ignore")
        if '"' in value or "\\" in value:
            return value.translate(_STRING_ESCAPES)
        return value


_NEWLINE, _SPACE, _COMMA, _EQUALS, _QUOTE, _BACKSLASH = b'\n ,="\\'


def split_lines(body: bytes) -> list[bytes]:
    """The lines of a line-protocol body, each with its ``\n``. A string field may hold
    newlines (InfluxDB stores them), so lines are found by reading the syntax, not by
    ``splitlines`` (which also cuts at ``\r``)."""
    if b'"' not in body:  # no string field: every newline ends a line
        parts = body.split(b"\n")
        return [part + b"\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
    lines: list[bytes] = []
    i, n = 0, len(body)
    while i < n:
        start = i
        while i < n and body[i] != _SPACE and body[i] != _NEWLINE:  # measurement and tags
            i += 2 if body[i] == _BACKSLASH else 1
        while i < n and body[i] == _SPACE:  # then key=value pairs, separated by commas
            i += 1
            while i < n and body[i] != _NEWLINE:
                while i < n and body[i] != _EQUALS and body[i] != _NEWLINE:
                    i += 2 if body[i] == _BACKSLASH else 1
                if i >= n or body[i] == _NEWLINE:  # not line protocol: end the line here
                    break
                i += 1
                if i < n and body[i] == _QUOTE:
                    i += 1
                    while i < n and body[i] != _QUOTE:
                        i += 2 if body[i] == _BACKSLASH else 1
                    i += 1
                while i < n and body[i] not in (_COMMA, _SPACE, _NEWLINE):
                    i += 1
                if i >= n or body[i] != _COMMA:
                    break
                i += 1
            break
        while i < n and body[i] != _NEWLINE:  # the timestamp
            i += 1
        lines.append(body[start : i + 1])
        i += 1
    return lines


def encode(points: Iterable[Point]) -> bytes:
    """Line protocol for ``points`` as one newline-terminated body; drops are not reported."""
    lines = LineProtocolEncoder().encode(points)
    return "".join(f"{line}\n" for line in lines).encode()
