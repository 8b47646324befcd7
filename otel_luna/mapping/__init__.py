"""Spans and samples → points of a profile's series. Pure: data in, data out.

The records (:class:`SpanRecord`, :class:`UsageSample`) are what a way in (the SDK exporters,
``otel-luna serve``) makes of a span or a ``luna.usages`` data point; the mappers are what a
profile is made of; ``origin_of``, ``resource_identity`` and ``stream_of`` give a usage
sample the identity of its stream, which every way in must compute alike.
"""

from __future__ import annotations

from otel_luna.mapping._records import SpanRecord, UsageSample
from otel_luna.mapping._requests import RequestMapper
from otel_luna.mapping._usages import UsageMapper, origin_of, resource_identity, stream_of
from otel_luna.mapping._watchdog import WatchdogMapper

__all__ = [
    "RequestMapper",
    "SpanRecord",
    "UsageMapper",
    "UsageSample",
    "WatchdogMapper",
    "origin_of",
    "resource_identity",
    "stream_of",
]
