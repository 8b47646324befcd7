"""The mapping's input: one typed record per span and per usage data point.

The adapters of :mod:`otel_luna.ingest` make them from SDK objects (``ingest/sdk.py``) and from
OTLP messages (``ingest/otlp.py``); from here on the two ways in are one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple


class SpanRecord(NamedTuple):
    """What the mapping reads of one ended span."""

    attributes: Mapping[str, Any]
    is_server: bool
    trace_id: int
    span_id: int
    parent_span_id: int | None
    start_ns: int
    end_ns: int
    status_error: bool
    service: str


class UsageSample(NamedTuple):
    """One data point of the ``luna.usages`` counter."""

    service: str
    estimator: Any
    start_ns: int
    time_ns: int
    value: int | float
    cumulative: bool
    #: Who sent it (a checksum of the sender's resource): senders of one service whose clocks
    #: give the same time still write distinct points.
    origin: int = 0
    #: The identity of its cumulative stream but for the start time: resource, scope and point
    #: attributes (``mapping.usages.stream_of``). Two senders of one service and estimator, or
    #: one sender's two scopes, are two streams (0: told apart by service and estimator only).
    stream: int = 0
