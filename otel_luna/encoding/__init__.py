"""Points → bytes on the wire: InfluxDB line protocol and Ping Centre JSON. Pure."""

from __future__ import annotations

from otel_luna.encoding._reader import LineProtocolSyntaxError, LineReader, parse_line, parse_lines

__all__ = ["LineProtocolSyntaxError", "LineReader", "parse_line", "parse_lines"]
