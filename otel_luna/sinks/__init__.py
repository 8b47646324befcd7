"""Sinks move bytes to a destination; the plugin interface for new destinations.

A sink author needs :class:`Sink`, :class:`SinkError` with a :class:`Failure`, ``classify``
(and its helpers for HTTP replies and connection errors) and the entry-point group
:data:`SINK_GROUP`; ``load_sink`` builds the sink the settings choose. ``file_path`` and
``basic_auth`` read a file endpoint and credentials the way the built-in sinks do (the report
reads from the same destinations).
"""

from __future__ import annotations

from otel_luna.sinks._base import (
    SINK_GROUP,
    Failure,
    Sink,
    SinkError,
    classify,
    classify_connection_error,
    connection_trouble,
    load_sink,
    parse_retry_after,
    server_reason,
    suppress_instrumentation,
)
from otel_luna.sinks._file import file_path
from otel_luna.sinks._http import basic_auth

__all__ = [
    "SINK_GROUP",
    "Failure",
    "Sink",
    "SinkError",
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
