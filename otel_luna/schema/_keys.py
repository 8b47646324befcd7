"""What a measurement, a key or a tag value may be: InfluxDB's rules, in one place.

The line-protocol encoder (:mod:`otel_luna.encoding._lineprotocol`) checks every name of a point
by them; the mapping (:mod:`otel_luna.mapping._requests`) refuses a user's ``luna.*`` key or tag
value by the same rules before it makes a point, so the request is written without it instead of
being rejected whole. Each rule says why, as a :class:`~otel_luna.outcomes.Reason`.
"""

from __future__ import annotations

import re

from otel_luna.outcomes import Reason

#: InfluxDB's ``max key length``: escaped series key, ``#!~#`` and one field key, in bytes.
MAX_KEY_BYTES = 65535
#: Longest user tag value accepted, in UTF-8 bytes: a quarter of InfluxDB's key length, so a
#: few of them cannot make a series key InfluxDB refuses.
MAX_TAG_VALUE_BYTES = MAX_KEY_BYTES // 4
#: Longest field key a name otel-luna makes a field key of (an estimator's
#: ``<estimator>_usages``) may give, in UTF-8 bytes: a quarter of InfluxDB's key length, so one
#: such key cannot make its point's series key too long and have the whole point refused.
MAX_FIELD_KEY_BYTES = MAX_KEY_BYTES // 4
#: The key InfluxDB reserves: it refuses it as a tag key and silently drops it as a field key.
RESERVED_KEY = "time"

# InfluxDB 1.x reads "\\" followed by these as an escape, whatever we send: not representable.
_AMBIGUOUS_BACKSLASH = re.compile(r'\\(?:[,= \\"]|$)')


def text_problem(kind: str, text: str) -> tuple[Reason, str] | None:
    """(reason, detail) if ``text`` cannot be a ``kind`` (``measurement``, ``tag_key``,
    ``tag_value``, ``field_key``, ``key``) whatever is escaped: empty, a newline, a backslash
    InfluxDB would read as an escape; None if it can."""
    if not text:
        return Reason.of(f"empty_{kind}"), f"{kind} is empty"
    if "\n" in text or "\r" in text:
        return Reason.of(f"newline_in_{kind}"), f"{kind} {text!r} contains a newline"
    if "\\" in text and _AMBIGUOUS_BACKSLASH.search(text):
        return (
            Reason.of(f"backslash_in_{kind}"),
            f'{kind} {text!r} has a backslash before , = space " or backslash, or at its end',
        )
    return None


def start_problem(kind: str, text: str) -> tuple[Reason, str] | None:
    """(reason, detail) if non-empty ``text`` cannot start a ``kind`` that follows a space or
    a line's start (``measurement``, ``field_key``, ``key``): the parser skips a tab or NUL."""
    if text[0] in "\t\x00":
        return (
            Reason.of(f"whitespace_start_{kind}"),
            f"{kind} {text!r} starts with a tab or NUL the parser skips",
        )
    return None


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot be a tag or field key (a short reason), or None if it can."""
    problem = text_problem("key", key) or start_problem("key", key)
    if problem is not None:
        return problem[0]
    try:
        key.encode()
    except UnicodeEncodeError:
        return "invalid_utf8_key"
    return "reserved_key" if key == RESERVED_KEY else None


def tag_value_problem(value: str) -> str | None:
    """Why ``value`` cannot be a tag value (a short reason), or None if it can."""
    problem = text_problem("tag_value", value)
    if problem is not None:
        return problem[0]
    try:
        size = len(value.encode())
    except UnicodeEncodeError:
        return "invalid_utf8"
    return "tag_value_too_long" if size > MAX_TAG_VALUE_BYTES else None
