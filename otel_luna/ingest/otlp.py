"""OTLP protobuf (and OTLP/JSON) → records. Pure: messages in, records out.

The receiver decodes requests here and hands the records to the same
:class:`~otel_luna.ingest.Ingest` the in-process exporters use (whose adapter is
``ingest/sdk.py``): one set of rules for both ways in.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from otel_luna._attributes import (
    ESTIMATOR,
    HTTP_ROUTE,
    MAPPED_PREFIXES,
    ROUTE_FALLBACK_KEYS,
    SERVER_SPAN_KEYS,
    SERVICE_NAME,
    USAGES_INSTRUMENT,
)
from otel_luna.mapping.records import SpanRecord, UsageSample
from otel_luna.mapping.usages import origin_of

_SERVER = Span.SPAN_KIND_SERVER
_ERROR = Status.STATUS_CODE_ERROR
_CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
_UNKNOWN_SERVICE = "unknown_service"

# A record without the NamedTuple's argument parsing (see ingest/sdk.py).
_record = tuple.__new__


def any_value(value: AnyValue) -> Any:
    """The Python value of an OTLP ``AnyValue``: str, int, float, bool, bytes, a tuple (array),
    a dict (kvlist), None (empty)."""
    # A oneof member that is not the one set reads as its default ("", 0, 0.0): a string, int
    # or double that is not the default is the value, without WhichOneof (which costs as much
    # as two field reads with upb). Defaults and the other kinds take WhichOneof.
    text = value.string_value
    return text if text else _not_a_string(value)


def _not_a_string(value: AnyValue) -> Any:
    """:func:`any_value` of a value whose ``string_value`` reads empty."""
    number = value.int_value
    if number:
        return number
    real = value.double_value
    if real:
        return real
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return ""
    if kind == "int_value":
        return number
    if kind == "double_value":
        return real
    if kind == "bool_value":
        return value.bool_value
    if kind == "array_value":
        return tuple(any_value(item) for item in value.array_value.values)
    if kind == "bytes_value":
        return value.bytes_value
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    return None


def attributes(key_values: Any) -> dict[str, Any]:
    """Every attribute, converted (resources; spans take only what the mapping reads)."""
    return {kv.key: any_value(kv.value) for kv in key_values}


def _service(resource_attributes: Any) -> str:
    for kv in resource_attributes:
        if kv.key == SERVICE_NAME:
            return str(any_value(kv.value)) or _UNKNOWN_SERVICE
    return _UNKNOWN_SERVICE


# What the mapping reads of an attribute, by key (see _classify): the attribute is kept when its
# class is above the least of the span's kind.
_DROP, _ROUTE_FALLBACK, _SERVER_ONLY, _ANY_SPAN = range(4)
_LEAST_OF_SERVER, _LEAST_OF_OTHER = _DROP, _SERVER_ONLY
# Bounded in keys and in key length: a client may send any keys it likes (a few MiB each).
_CLASS_CACHE_LIMIT = 4096
_CLASS_CACHE_KEY_LENGTH = 128
_classes: dict[str, int] = {}


def _classify(key: str) -> int:
    """The class of an attribute key, remembered (keys repeat from span to span)."""
    if key.startswith(MAPPED_PREFIXES):
        found = _ANY_SPAN
    elif key in SERVER_SPAN_KEYS:
        found = _SERVER_ONLY
    elif key in ROUTE_FALLBACK_KEYS:
        found = _ROUTE_FALLBACK
    else:
        found = _DROP
    if len(key) <= _CLASS_CACHE_KEY_LENGTH:
        if len(_classes) >= _CLASS_CACHE_LIMIT:
            _classes.clear()
        _classes[key] = found
    return found


def span_records(request: ExportTraceServiceRequest) -> Iterator[SpanRecord]:
    """One record per span, with only the attributes the mapping reads (``_attributes.py``):
    ``MAPPED_PREFIXES`` of any span; of a SERVER span also ``SERVER_SPAN_KEYS``, and
    ``ROUTE_FALLBACK_KEYS`` when it has no ``http.route``. Most of a span's attributes are the
    instrumentation's, which no mapper reads: they are never converted."""
    classes = _classes
    for resource_spans in request.resource_spans:
        service = _service(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                is_server = span.kind == _SERVER
                least = _LEAST_OF_SERVER if is_server else _LEAST_OF_OTHER
                kept: dict[str, Any] = {}
                fallback = None
                for kv in span.attributes:
                    key = kv.key
                    found = classes.get(key)
                    if found is None:
                        found = _classify(key)
                    if found > least:
                        if found == _ROUTE_FALLBACK:  # wanted only without http.route
                            if fallback is None:
                                fallback = [kv]
                            else:
                                fallback.append(kv)
                            continue
                        value = kv.value
                        text = value.string_value  # any_value, inline
                        kept[key] = text if text else _not_a_string(value)
                if fallback is not None and not kept.get(HTTP_ROUTE):
                    for kv in fallback:
                        kept[kv.key] = any_value(kv.value)
                parent = span.parent_span_id
                yield _record(
                    SpanRecord,
                    (
                        kept,
                        is_server,
                        int.from_bytes(span.trace_id, "big"),
                        int.from_bytes(span.span_id, "big"),
                        int.from_bytes(parent, "big") if parent else None,
                        span.start_time_unix_nano,
                        span.end_time_unix_nano,
                        span.status.code == _ERROR,
                        service,
                    ),
                )


def usage_samples(request: ExportMetricsServiceRequest) -> Iterator[UsageSample]:
    """The data points of every ``luna.usages`` sum; other metrics are skipped by name."""
    for resource_metrics in request.resource_metrics:
        service = _service(resource_metrics.resource.attributes)
        origin: int | None = None
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if metric.name != USAGES_INSTRUMENT or metric.WhichOneof("data") != "sum":
                    continue
                if origin is None:
                    origin = origin_of(attributes(resource_metrics.resource.attributes))
                cumulative = metric.sum.aggregation_temporality == _CUMULATIVE
                for point in metric.sum.data_points:
                    estimator = None
                    for kv in point.attributes:
                        if kv.key == ESTIMATOR:
                            estimator = any_value(kv.value)
                    is_int = point.WhichOneof("value") == "as_int"
                    value = point.as_int if is_int else point.as_double
                    yield UsageSample(
                        service,
                        estimator,
                        point.start_time_unix_nano,
                        point.time_unix_nano,
                        value,
                        cumulative,
                        origin,
                    )


# -- OTLP/JSON --------------------------------------------------------------------------------
# OTLP/JSON differs from the protobuf JSON mapping in one way that matters: trace and span ids
# are hex strings, not base64. Turn them into base64 before the protobuf parser sees them.

_ID_KEYS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


def _hex_ids_to_base64(node: Any) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str):
                node[key] = base64.b64encode(bytes.fromhex(value)).decode()
            else:
                _hex_ids_to_base64(value)
    elif isinstance(node, list):
        for item in node:
            _hex_ids_to_base64(item)


def parse_json(body: bytes, message: Any) -> None:
    """Fill ``message`` from an OTLP/JSON body; ``ValueError`` when it is not valid OTLP/JSON."""
    from google.protobuf import json_format

    document = json.loads(body)
    _hex_ids_to_base64(document)
    json_format.ParseDict(document, message, ignore_unknown_fields=True)
