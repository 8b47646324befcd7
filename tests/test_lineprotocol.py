"""Line-protocol encoder: escaping, types, what it drops and rejects (unit tests, no server)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_luna.encoding.lineprotocol import (
    MAX_STRING_FIELD_BYTES,
    LineProtocolEncoder,
    encode,
    split_lines,
)
from otel_luna.point import Point

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
