"""Sinks move bytes to a destination; the plugin interface for new destinations."""

from __future__ import annotations

from otel_luna.sinks._base import (
    JSON,
    LINE_PROTOCOL,
    MESSAGE_LIMIT,
    REPLY_LIMIT,
    SINK_GROUP,
    Failure,
    Sink,
    SinkError,
    SinkLike,
    classify,
    classify_connection_error,
    connection_trouble,
    load_sink,
    parse_retry_after,
    server_reason,
    sink_factory,
    sink_settings,
    suppress_instrumentation,
    wire_format,
)

__all__ = [
    "JSON",
    "LINE_PROTOCOL",
    "MESSAGE_LIMIT",
    "REPLY_LIMIT",
    "SINK_GROUP",
    "Failure",
    "Sink",
    "SinkError",
    "SinkLike",
    "classify",
    "classify_connection_error",
    "connection_trouble",
    "load_sink",
    "parse_retry_after",
    "server_reason",
    "sink_factory",
    "sink_settings",
    "suppress_instrumentation",
    "wire_format",
]
