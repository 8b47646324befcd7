"""Sinks move bytes to a destination; the plugin interface for new destinations.

A sink author needs :class:`Sink`, :class:`SinkError` with a :class:`Failure`, ``classify``
(and its helpers for HTTP replies and connection errors) and the entry-point group
:data:`SINK_GROUP`; ``load_sink`` builds the sink the settings choose. ``file_path`` reads a
file endpoint the way the file sink does (the report reads from the same destinations). Nothing
here imports urllib3: the HTTP sinks do, when they are loaded.
"""

from __future__ import annotations

from otel_luna.sinks._base import (
    JSON,
    LINE_PROTOCOL,
    SINK_GROUP,
    Failure,
    Sink,
    SinkError,
    SinkLike,
    basic_auth,
    classify,
    classify_connection_error,
    connection_trouble,
    load_sink,
    parse_retry_after,
    server_reason,
    suppress_instrumentation,
)
from otel_luna.sinks._file import file_path

__all__ = [
    "JSON",
    "LINE_PROTOCOL",
    "SINK_GROUP",
    "Failure",
    "Sink",
    "SinkError",
    "SinkLike",
    "basic_auth",
    "classify",
    "classify_connection_error",
    "connection_trouble",
    "file_path",
    "load_sink",
    "parse_retry_after",
    "server_reason",
    "suppress_instrumentation",
]
