"""The compiled encoder (``otel_luna._native``) against the pure-Python one, the reference: for
arbitrary points, hostile strings, float and int edges, both give the same line, or the same
:class:`InvalidPointError` reason, and the same counts, point after point.

The compiled code writes a line only when the prefix and field keys are cached and nothing needs
counting; everything else goes to the pure-Python method, so each sequence is encoded twice (the
second time with warm caches), and a second test checks the compiled path really writes the
common points itself.
"""

from __future__ import annotations

import math
import struct
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from otel_luna import _native  # type: ignore[attr-defined]
from otel_luna.encoding import _lineprotocol
from otel_luna.encoding._lineprotocol import (
    MAX_TIME_NS,
    MIN_TIME_NS,
    InvalidPointError,
    LineProtocolEncoder,
)
from otel_luna.schema._point import Point

T0 = 1_700_000_000_123_456_789
SURROGATES = st.sampled_from(["\ud800", "\udc80", "\udfff"])
HOSTILE = st.text(
    st.one_of(st.characters(exclude_categories=()), SURROGATES, st.sampled_from('"\\\n, =')),
    max_size=12,
)


def mostly(common: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any]) -> Any:
    """``common`` seven times in eight: caches hit, and the compiled path writes most lines."""
    return st.sampled_from(range(8)).flatmap(lambda pick: hostile if pick == 0 else common)


CLEAN = st.sampled_from(["requests", "route", "service", "execution_time", "request_id", "a b,c=d"])
NAMES = mostly(
    CLEAN,
    st.one_of(
        HOSTILE,
        st.sampled_from(
            [
                "time",
                "#comment",
                "\tx",
                "\x00x",
                "x\\",
                "a\\,b",
                "a\nb",
                "é",
                "\ud800",
                "",
                "k" * 17_000,  # with a long value: key_too_long
            ]
        ),
    ),
)
FLOATS = st.one_of(
    st.floats(),  # NaN and infinities included
    st.sampled_from(
        [
            0.0,
            -0.0,
            5e-324,
            -5e-324,
            2.2250738585072014e-308,
            1e16,
            1e-7,
            0.1,
            1.7976931348623157e308,
        ]
    ),
)
INT64 = 2**63
INTS = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([INT64 - 1, -INT64, INT64, -INT64 - 1, 0, -1]),
)


class MyInt(int):
    pass


class MyStr(str):
    pass


STRINGS = mostly(
    st.text(st.one_of(st.characters(max_codepoint=127), st.sampled_from('"\\')), max_size=30),
    st.one_of(
        HOSTILE,
        st.sampled_from(
            [
                "x" * 16_385,  # past the short-string limit: the Python path
                "é" * 40_000,  # past 64 KiB: truncated_string
                "a" * 5_000,  # a line longer than the compiled path's buffer
                'say "hi" \\ bye',
                'say "hi"',
                "back\\slash",
            ]
        ),
    ),
)
VALUES = mostly(
    st.one_of(FLOATS, INTS, st.booleans(), STRINGS),
    st.sampled_from([None, b"x", MyInt(3), MyStr("s"), 1j]),
)
TIMES = st.one_of(
    st.integers(T0, T0 + 10),
    st.sampled_from(
        [MIN_TIME_NS - 1, MIN_TIME_NS, MAX_TIME_NS, MAX_TIME_NS + 1, 2**64, -(2**64), 0, True]
    ),
)
TAGS = st.lists(st.tuples(NAMES, mostly(NAMES, st.just("v" * 70_000))), max_size=3).map(
    lambda pairs: tuple(sorted(pairs))
)
POINTS = st.builds(
    Point,
    NAMES,
    TAGS,
    st.dictionaries(NAMES, VALUES, min_size=1, max_size=4),
    TIMES,
)


def outcome(encode: Any, point: Point) -> tuple[str, object]:
    try:
        return "line", encode(point)
    except InvalidPointError as error:
        return "rejected", error.reason


@settings(max_examples=3000, deadline=None)
@given(
    st.one_of(
        st.floats(allow_nan=False, allow_infinity=False),
        st.integers(0, 2**64 - 1).map(
            lambda bits: struct.unpack("<d", bits.to_bytes(8, "little"))[0]
        ),
        st.integers(-330, 330).map(lambda e: float(f"1e{e}")),
    ).filter(math.isfinite)
)
def test_the_compiled_float_formatting_is_repr(value: float) -> None:
    """Ryu's shortest digits laid out as ``repr`` lays out ``dtoa``'s (exponent below 1e-4 and
    from 1e16, two exponent digits at least, ``.0`` on whole numbers, ``-0.0``)."""
    assert _native.float_repr(value) == repr(value)


def test_the_accelerator_is_built_and_used() -> None:
    assert _lineprotocol.NATIVE is _native
    assert LineProtocolEncoder().encode_point.func is _native.encode_point  # type: ignore[attr-defined]


@settings(max_examples=400, deadline=None)
@given(st.lists(POINTS, max_size=6))
def test_compiled_and_pure_python_write_the_same_bytes(points: list[Point]) -> None:
    compiled, pure = LineProtocolEncoder(), LineProtocolEncoder()
    for point in points + points:  # the second time, with warm caches
        assert outcome(compiled.encode_point, point) == outcome(
            LineProtocolEncoder.encode_point.__get__(pure), point
        )
        assert compiled.counts == pure.counts
    assert compiled.take_counts() == pure.take_counts()


COMMON_NAMES = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1).filter(
    lambda name: name[0] != "#" and "\\" not in name and name != "time"
)
COMMON_POINTS = st.builds(
    Point,
    COMMON_NAMES,
    st.dictionaries(COMMON_NAMES, COMMON_NAMES, max_size=3).map(lambda d: tuple(sorted(d.items()))),
    st.dictionaries(
        COMMON_NAMES,
        st.one_of(
            st.floats(allow_nan=False, allow_infinity=False),
            st.integers(-INT64, INT64 - 1),
            st.booleans(),
            st.text(st.characters(max_codepoint=127, exclude_characters='"\\'), max_size=40),
        ),
        min_size=1,
        max_size=5,
    ),
    st.integers(MIN_TIME_NS, MAX_TIME_NS),
)


EDGE_VALUES = st.one_of(
    FLOATS,
    INTS,
    STRINGS,
    HOSTILE,
    st.sampled_from([None, b"x", MyInt(3), MyStr("s"), 1j, True, False]),
)
EDGE_TIMES = st.sampled_from(
    [MIN_TIME_NS - 1, MIN_TIME_NS, MAX_TIME_NS, MAX_TIME_NS + 1, 2**64, -(2**64), 0, True]
)


@st.composite
def one_edge(draw: st.DrawFn) -> list[Point]:
    """A common point, then the same point with one part made an edge case: the caches are warm
    for the rest of it, so the compiled path meets the edge itself."""
    point = draw(COMMON_POINTS)
    measurement, tags, fields, time_ns = point
    part = draw(st.sampled_from(["time", "value", "field_key", "tag", "measurement"]))
    if part == "time":
        time_ns = draw(EDGE_TIMES)
    elif part == "value":
        fields = {**fields, draw(st.sampled_from(sorted(fields))): draw(EDGE_VALUES)}
    elif part == "field_key":
        fields = {**fields, draw(NAMES): draw(EDGE_VALUES)}
    elif part == "tag":
        tags = tuple(sorted({**dict(tags), draw(NAMES): draw(NAMES)}.items()))
    else:
        measurement = draw(NAMES)
    return [point, Point(measurement, tags, fields, time_ns)]


@settings(max_examples=500, deadline=None)
@given(one_edge())
def test_compiled_and_pure_python_agree_on_one_edge_in_a_common_point(points: list[Point]) -> None:
    compiled, pure = LineProtocolEncoder(), LineProtocolEncoder()
    for point in points + points:
        assert outcome(compiled.encode_point, point) == outcome(
            LineProtocolEncoder.encode_point.__get__(pure), point
        )
        assert compiled.counts == pure.counts


def never(point: Point) -> str:
    raise AssertionError(f"the compiled path handed {point!r} to Python")


@settings(max_examples=300, deadline=None)
@given(COMMON_POINTS)
def test_the_compiled_path_writes_common_points_itself(point: Point) -> None:
    encoder = LineProtocolEncoder()
    expected = LineProtocolEncoder.encode_point(encoder, point)  # fills the caches
    compiled = _native.encode_point(encoder._prefixes, encoder._field_keys, never, point)
    assert compiled == expected
    assert encoder.counts == Counter()
