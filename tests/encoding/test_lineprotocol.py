"""Line-protocol encoder (escaping, types, what it drops and rejects) and reader, and the round
trip between them (unit tests, no server)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from otel_luna.encoding._lineprotocol import (
    MAX_STRING_FIELD_BYTES,
    MAX_TIME_NS,
    MIN_TIME_NS,
    InvalidPointError,
    LineProtocolEncoder,
    encode,
    split_lines,
)
from otel_luna.encoding._reader import LineProtocolSyntaxError, parse_line, parse_lines
from otel_luna.schema._keys import key_problem
from otel_luna.schema._point import Point

T = 1_700_000_000_123_456_789


def line(point: Point) -> str:
    return LineProtocolEncoder().encode_point(point)


def test_escapes_measurement_tags_and_field_keys() -> None:
    """Commas and spaces in measurements; commas, = and spaces in keys and tag values."""
    point = Point("my series,x", (("a key", "v=1,2"),), {"f,k=": 1.5}, T)
    assert line(point) == f"my\\ series\\,x,a\\ key=v\\=1\\,2 f\\,k\\==1.5 {T}"


def test_string_fields_escape_quotes_and_backslashes() -> None:
    """String field values are quoted with " and \\ escaped; = , and spaces are kept."""
    point = Point("m", (), {"s": 'say "hi", a=b \\ c'}, T)
    assert line(point) == f'm s="say \\"hi\\", a=b \\\\ c" {T}'


def test_field_types() -> None:
    """Integers get i, booleans true/false, floats their shortest repr."""
    point = Point("m", (), {"i": 3, "b": True, "f": 0.1, "g": 1e-7, "n": False}, T)
    assert line(point) == f"m i=3i,b=true,f=0.1,g=1e-07,n=false {T}"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_fields_dropped_and_counted(value: float) -> None:
    """NaN and infinities are not representable: the field is dropped, the point kept."""
    encoder = LineProtocolEncoder()
    assert encoder.encode_point(Point("m", (), {"x": value, "y": 1}, T)) == f"m y=1i {T}"
    assert encoder.counts["nonfinite_field"] == 1


def test_empty_tag_values_dropped_every_time() -> None:
    """An empty tag value is left out and counted on each point, cached tag set or not."""
    encoder = LineProtocolEncoder()
    tags = (("a", ""), ("b", "1"))
    for _ in range(3):
        assert encoder.encode_point(Point("m", tags, {"x": 1}, T)) == f"m,b=1 x=1i {T}"
    assert encoder.counts["empty_tag_value"] == 3


def test_long_strings_truncated_on_a_character_boundary() -> None:
    """String fields over 64 KiB are cut to at most 64 KiB of whole UTF-8 characters."""
    encoder = LineProtocolEncoder()
    text = "ж" * MAX_STRING_FIELD_BYTES  # two bytes each
    encoded = encoder.encode_point(Point("m", (), {"s": text}, T))
    value = encoded.split('"')[1]
    assert len(value.encode()) <= MAX_STRING_FIELD_BYTES
    assert value == "ж" * (MAX_STRING_FIELD_BYTES // 2)
    assert encoder.counts["truncated_string"] == 1


def test_int64_range() -> None:
    """Integers outside int64 are dropped and counted."""
    encoder = LineProtocolEncoder()
    assert encoder.encode_point(Point("m", (), {"a": 2**63, "b": -(2**63)}, T)) == (
        f"m b={-(2**63)}i {T}"
    )
    assert encoder.counts["int_out_of_range"] == 1


@pytest.mark.parametrize(
    ("point", "reason"),
    [
        (Point("m", (), {}, T), "no_fields"),
        (Point("m", (), {"x": float("nan")}, T), "no_fields"),
        (Point("", (), {"x": 1}, T), "empty_measurement"),
        (Point("#m", (), {"x": 1}, T), "comment_measurement"),
        (Point("\tm", (), {"x": 1}, T), "whitespace_start_measurement"),
        (Point("m", (), {"\x00k": 1}, T), "whitespace_start_field_key"),
        (Point("m", (("k", "a\nb"),), {"x": 1}, T), "newline_in_tag_value"),
        (Point("m", (("k", "a\\"),), {"x": 1}, T), "backslash_in_tag_value"),
        (Point("m", (("k", "a\\,b"),), {"x": 1}, T), "backslash_in_tag_value"),
        (Point("m\\ x", (), {"x": 1}, T), "backslash_in_measurement"),
        (Point("m", (("", "v"),), {"x": 1}, T), "empty_tag_key"),
        (Point("m", (), {"a\nb": 1}, T), "newline_in_field_key"),
    ],
)
def test_rejects_what_line_protocol_cannot_carry(point: Point, reason: str) -> None:
    """Unrepresentable points are rejected with a reason and counted, never sent broken."""
    encoder = LineProtocolEncoder()
    assert encoder.encode([point, Point("ok", (), {"x": 1}, T)]) == [f"ok x=1i {T}"]
    assert encoder.counts[reason] == 1


def test_encode_body() -> None:
    """encode() gives newline-terminated UTF-8 lines."""
    body = encode([Point("m", (("t", "é"),), {"x": 1}, 1), Point("m", (), {"y": "z"}, 2)])
    assert body == 'm,t=é x=1i 1\nm y="z" 2\n'.encode()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.text(min_size=1, max_size=8),
            st.dictionaries(st.text(min_size=1, max_size=5), st.text(max_size=5), max_size=3),
            st.dictionaries(
                st.text(min_size=1, max_size=5),
                st.one_of(st.text(max_size=8), st.integers(-5, 5), st.booleans(), st.floats()),
                min_size=1,
                max_size=3,
            ),
        ),
        max_size=6,
    )
)
def test_split_lines_finds_the_encoded_lines(specs: list[Any]) -> None:
    """Newlines and carriage returns inside string fields do not end a line."""
    encoder = LineProtocolEncoder()
    points = [
        Point(measurement, tuple(sorted(tags.items())), fields, 1)
        for measurement, tags, fields in specs
    ]
    lines = [f"{line}\n".encode() for line in encoder.encode(points)]
    assert split_lines(b"".join(lines)) == lines


# -- the reader ------------------------------------------------------------------------------------


def typed(point: Point) -> tuple[Any, ...]:
    """A point with each field value's type, so that ``1``, ``1.0`` and ``True`` differ."""
    fields = tuple((key, type(value), repr(value)) for key, value in point.fields.items())
    return (point.measurement, point.tags, fields, point.time_ns)


def test_parse_line_unescapes_tags_and_string_fields() -> None:
    """Escaped commas, spaces and equals signs in names and tags, and quoted strings, read back."""
    text = (
        r"my\ series,a\,b=c\ d\=e,route=POST:/handlers/{handler_id}/events "
        r'request_id="1700000000,a b=c \"q\" \\",execution_time=0.25 1700000000000000000'
    )
    assert parse_line(text) == Point(
        "my series",
        (("a,b", "c d=e"), ("route", "POST:/handlers/{handler_id}/events")),
        {"request_id": '1700000000,a b=c "q" \\', "execution_time": 0.25},
        1700000000000000000,
    )


def test_parse_line_reads_every_field_type() -> None:
    """Integers, unsigned integers, floats and booleans keep their type; no timestamp gives 0."""
    point = parse_line('m i=-3i,u=4u,f=1e-05,g=2.0,t=true,F=F,s=""')
    assert typed(point) == typed(
        Point("m", (), {"i": -3, "u": 4, "f": 1e-05, "g": 2.0, "t": True, "F": False, "s": ""}, 0)
    )


def test_parse_lines_skips_comments_and_keeps_newlines_in_strings() -> None:
    """Blank and # lines are skipped; a string field may hold a newline."""
    points = parse_lines('# comment\n\nm s="a\nb",n=1i 5\nm n=2i\n')
    assert points == [Point("m", (), {"s": "a\nb", "n": 1}, 5), Point("m", (), {"n": 2}, 0)]


@pytest.mark.parametrize(
    "text",
    ["m", "m,t=1", "m x", "m x=", 'm x="open', "m x=1i notatime", "m x=bad 1", "m,=v x=1 1"],
)
def test_parse_line_rejects_what_is_not_line_protocol(text: str) -> None:
    """Malformed lines raise LineProtocolSyntaxError."""
    with pytest.raises(LineProtocolSyntaxError):
        parse_line(text)


# Names: what the encoder escapes, plus a rare backslash (some uses of it are rejected).
_NAME_CHARS = st.sampled_from(list('aaaabbbbcé日 ,="#\\'))
_NAMES = st.text(_NAME_CHARS, min_size=1, max_size=8)
_CHARS = st.sampled_from(list('ab ,="\\#\t\x00\né日'))
_FIELD_VALUES = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.text(_CHARS, max_size=12),
)


@given(
    measurement=_NAMES,
    tags=st.dictionaries(_NAMES, _NAMES, max_size=3),
    fields=st.dictionaries(_NAMES, _FIELD_VALUES, min_size=1, max_size=4),
    time_ns=st.integers(MIN_TIME_NS, MAX_TIME_NS),
)
def test_encoder_output_parses_back(
    measurement: str, tags: dict[str, str], fields: dict[str, Any], time_ns: int
) -> None:
    """Whatever the encoder writes, the reader reads back as the same point."""
    point = Point(measurement, tuple(sorted(tags.items())), fields, time_ns)
    try:
        text = LineProtocolEncoder().encode_point(point)
    except InvalidPointError:
        assume(False)
        return
    assert typed(parse_line(text)) == typed(point)
    assert [typed(p) for p in parse_lines(text + "\n" + text)] == [typed(point)] * 2


@pytest.mark.parametrize("name", ["", "a\nb", "a\r", "a\\", "a\\,b", "\tx", "\x00x", "time", "ok"])
def test_the_encoder_refuses_a_field_key_by_the_schemas_key_rules(name: str) -> None:
    """One set of key rules (``schema._keys``): the encoder refuses a field key for the reason
    ``key_problem`` gives the mapping for a user key (``field_key`` in the name of ``key``)."""
    point = Point("m", (), {name: 1, "other": 2}, 0)
    try:
        LineProtocolEncoder().encode_point(point)
    except InvalidPointError as error:
        refused: str | None = error.reason.replace("field_key", "key")
    else:
        refused = None
    assert refused == key_problem(name)
