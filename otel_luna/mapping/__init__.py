"""Spans and samples → points of a profile's series. Pure: data in, data out.

The records are the mapping's input, what every way in (an adapter) makes: one
:class:`SpanRecord` per ended span, one :class:`UsageSample` per ``luna.usages`` data point, whose
``origin`` and ``stream`` come from :func:`origin_of`, :func:`resource_identity` and
:func:`stream_of`. An adapter hands the mapping only the attributes it reads: every one under
:data:`MAPPED_PREFIXES`, of a SERVER span also :data:`SERVER_SPAN_KEYS`, and of a SERVER span
without ``http.route`` also :data:`ROUTE_FALLBACK_KEYS`.
"""

from __future__ import annotations

from otel_luna._attributes import (
    ESTIMATOR,
    HTTP_ROUTE,
    MAPPED_PREFIXES,
    ROUTE_FALLBACK_KEYS,
    SERVER_SPAN_KEYS,
    SERVICE_NAME,
    USAGES_INSTRUMENT,
)
from otel_luna.mapping._records import (
    SpanRecord,
    UsageSample,
    origin_of,
    resource_identity,
    stream_of,
)
from otel_luna.mapping._requests import RequestMapper
from otel_luna.mapping._usages import UsageMapper
from otel_luna.mapping._watchdog import WatchdogMapper

__all__ = [
    "ESTIMATOR",
    "HTTP_ROUTE",
    "MAPPED_PREFIXES",
    "ROUTE_FALLBACK_KEYS",
    "SERVER_SPAN_KEYS",
    "SERVICE_NAME",
    "USAGES_INSTRUMENT",
    "RequestMapper",
    "SpanRecord",
    "UsageMapper",
    "UsageSample",
    "WatchdogMapper",
    "origin_of",
    "resource_identity",
    "stream_of",
]
