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

from otel_luna._attributes import ESTIMATOR, LUNA_PREFIX, SERVICE_NAME, USAGES_INSTRUMENT
from otel_luna.mapping.records import SpanRecord, UsageSample
from otel_luna.mapping.usages import origin_of
from otel_luna.mapping.watchdog import PREFIX as WATCHDOG_PREFIX

_SERVER = Span.SPAN_KIND_SERVER
_ERROR = Status.STATUS_CODE_ERROR
_CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
_UNKNOWN_SERVICE = "unknown_service"

# A record without the NamedTuple's argument parsing (see ingest/sdk.py).
_record = tuple.__new__


def any_value(value: AnyValue) -> Any:
    """The Python value of an OTLP ``AnyValue`` (arrays become tuples)."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return value.double_value
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
    return {kv.key: any_value(kv.value) for kv in key_values}


_KEPT_PREFIXES = (LUNA_PREFIX, WATCHDOG_PREFIX)


def _luna_only(key_values: Any) -> dict[str, Any]:
    """The attributes a non-SERVER span can contribute: ``luna.*`` and ``watchdog.*``."""
    return {kv.key: any_value(kv.value) for kv in key_values if kv.key.startswith(_KEPT_PREFIXES)}


def _service(resource_attributes: Any) -> str:
    for kv in resource_attributes:
        if kv.key == SERVICE_NAME:
            return str(any_value(kv.value)) or _UNKNOWN_SERVICE
    return _UNKNOWN_SERVICE


def span_records(request: ExportTraceServiceRequest) -> Iterator[SpanRecord]:
    """One record per span. SERVER spans need every attribute; others their luna.* and
    watchdog.* ones."""
    for resource_spans in request.resource_spans:
        service = _service(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                is_server = span.kind == _SERVER
                parent = span.parent_span_id
                yield _record(
                    SpanRecord,
                    (
                        attributes(span.attributes) if is_server else _luna_only(span.attributes),
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
