"""Ping Centre JSON encoder: watchdog points in, one JSON object per line out. Pure.

Same interface as :class:`~otel_luna.encoding._lineprotocol.LineProtocolEncoder` (``encode_point``,
``take_counts``), so the pipeline and the spool do not care which one they carry.
"""

from __future__ import annotations

import json
from typing import Any

from otel_luna.encoding._lineprotocol import InvalidPointError
from otel_luna.outcomes import Counting, Reason
from otel_luna.schema._point import Point
from otel_luna.schema.watchdog import EVENTS, TOPIC


class PingEncoder(Counting):
    """``{"topic", "timestamp" (epoch ms, integer), "event", <the event's fields>}``.

    Fields the event documents but the point lacks are ``null``; types follow the event table
    (tags come back as booleans where the table says so).
    """

    def encode_point(self, point: Point) -> str:
        spec = EVENTS.get(point.measurement)
        if spec is None:
            raise InvalidPointError(
                Reason.UNKNOWN_WATCHDOG_EVENT, f"no event {point.measurement!r}"
            )
        tags = dict(point.tags)
        ping: dict[str, Any] = {
            "topic": TOPIC,
            "timestamp": point.time_ns // 1_000_000,
            "event": point.measurement,
        }
        for name, kind in spec:
            if name in tags:
                text = tags[name]
                ping[name] = text == "true" if kind is bool else text
            else:
                ping[name] = point.fields.get(name)
        line = json.dumps(ping, separators=(",", ":"), ensure_ascii=False)
        if not line.isascii():
            try:
                line.encode()
            except UnicodeEncodeError:
                raise InvalidPointError(
                    Reason.INVALID_UTF8, "a lone surrogate in a value"
                ) from None
        return line

    def encode(self, points: list[Point]) -> list[str]:
        return [self.encode_point(point) for point in points]
