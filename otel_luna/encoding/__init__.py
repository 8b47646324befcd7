"""Points → bytes on the wire: InfluxDB line protocol and Ping Centre JSON. Pure.

The encoders turn :class:`~otel_luna.schema.Point` objects into bytes; the reader parses line
protocol back into points (the report and the demo read what a file sink wrote with it).
"""

from __future__ import annotations

from otel_luna.encoding._jsonping import PingEncoder
from otel_luna.encoding._lineprotocol import InvalidPointError, LineProtocolEncoder, split_lines
from otel_luna.encoding._reader import (
    LineProtocolSyntaxError,
    LineReader,
    parse_line,
    parse_lines,
)

__all__ = [
    "InvalidPointError",
    "LineProtocolEncoder",
    "LineProtocolSyntaxError",
    "LineReader",
    "PingEncoder",
    "parse_line",
    "parse_lines",
    "split_lines",
]
