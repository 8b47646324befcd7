"""OTLP protobuf (and OTLP/JSON) → records. Pure: messages in, records out.

The receiver decodes requests here and hands the records to the same
:class:`~otel_luna.ingest.Ingest` the in-process exporters use (whose adapter is
``ingest/sdk.py``): one set of rules for both ways in.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any, NamedTuple

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
#
# Each span (metric) is parsed on its own: one that cannot be read is left out of the request and
# reported (:class:`Malformed`), the others are kept — the OTLP partial success. A body that is not
# OTLP/JSON at all (no object, broken syntax, nesting too deep, no span readable) is a ValueError.

_ID_KEYS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")
#: Attribute values hold no ids: not walked.
_NO_IDS = ("attributes",)


def _hex_ids_to_base64(node: Any) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str):
                node[key] = base64.b64encode(bytes.fromhex(value)).decode()
            elif key not in _NO_IDS:
                _hex_ids_to_base64(value)
    elif isinstance(node, list):
        for item in node:
            _hex_ids_to_base64(item)


class Malformed(NamedTuple):
    """A part of an OTLP/JSON body that could not be read and was left out of the request."""

    #: Spans, or data points of a metric, lost with it (at least 1).
    items: int
    #: Where it was, e.g. ``resourceSpans[0].scopeSpans[1].spans[2]``.
    where: str
    #: Why, in a line.
    error: str


#: The lists of a request down to its items, each as (lowerCamelCase, snake_case) JSON names.
_TRACE_LEVELS = (("resourceSpans", "resource_spans"), ("scopeSpans", "scope_spans"), ("spans",))
_METRIC_LEVELS = (
    ("resourceMetrics", "resource_metrics"),
    ("scopeMetrics", "scope_metrics"),
    ("metrics",),
)
_LEVELS = {
    ExportTraceServiceRequest.DESCRIPTOR.full_name: _TRACE_LEVELS,
    ExportMetricsServiceRequest.DESCRIPTOR.full_name: _METRIC_LEVELS,
}
_METRIC_DATA = (
    "gauge",
    "sum",
    "histogram",
    "exponentialHistogram",
    "exponential_histogram",
    "summary",
)
#: What reading one part of a decoded document can raise besides json_format.ParseError (values
#: of the wrong JSON type deep inside, a bad hex id).
_PART_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    AttributeError,
    KeyError,
    IndexError,
    RecursionError,
)
_ERROR_CHARS = 300


def parse_json(body: bytes | bytearray, message: Any) -> list[Malformed]:
    """Fill ``message`` (an ``Export*ServiceRequest``) from an OTLP/JSON body; the spans or
    metrics that could not be read and were left out. ``ValueError`` when the body is not
    OTLP/JSON at all: broken JSON, not an object, a list that is not a list, or no span or
    metric readable while some were not."""
    from google.protobuf import json_format

    document = _load_json(body)
    if not isinstance(document, dict):
        raise ValueError(f"not an OTLP/JSON object but {_json_type(document)}")
    levels = _LEVELS.get(message.DESCRIPTOR.full_name)
    errors = (json_format.ParseError, *_PART_ERRORS)
    malformed: list[Malformed] = []
    try:
        if levels is None:  # another message: all or nothing
            _hex_ids_to_base64(document)
            json_format.ParseDict(document, message, ignore_unknown_fields=True)
            return []
        kept = _parse_level(document, message, levels, "", errors, malformed)
    except RecursionError:
        raise ValueError("nesting too deep") from None
    except errors as error:  # the request's own fields
        raise ValueError(str(error)) from None
    if malformed and not kept:
        first = malformed[0]
        raise ValueError(f"nothing readable; {first.where}: {first.error}")
    return malformed


def _load_json(body: bytes | bytearray) -> Any:
    try:
        return json.loads(body)
    except RecursionError:
        raise ValueError("nesting too deep") from None
    except json.JSONDecodeError:
        raise
    except UnicodeDecodeError as error:
        raise ValueError(f"not UTF-8: {error}") from None
    except ValueError:  # an integer literal past int's digit limit: read it as a float
        try:
            return json.loads(body, parse_int=_int_or_float)
        except RecursionError:
            raise ValueError("nesting too deep") from None


def _int_or_float(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:  # too many digits: no integer field takes it, a double field gets inf
        return float(text)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list"


def _parse_level(
    node: dict[str, Any],
    message: Any,
    levels: tuple[tuple[str, ...], ...],
    where: str,
    errors: tuple[type[Exception], ...],
    malformed: list[Malformed],
) -> int:
    """Fill ``message`` from ``node``: its own fields, then each entry of its list ``levels[0]``
    (recursively down to the items). Entries that cannot be read are left out and added to
    ``malformed``; the items kept."""
    from google.protobuf import json_format

    names = levels[0]
    found = [name for name in names if name in node]
    if len(found) > 1:
        raise ValueError(f"{where or 'the request'} has both {' and '.join(found)}")
    children = node.get(found[0]) if found else None
    if children is None:
        children = []
    elif not isinstance(children, list):
        raise ValueError(f"{_joined(where, found[0])} is {_json_type(children)}, not a list")
    own = {key: value for key, value in node.items() if key not in names}
    if own:
        json_format.ParseDict(own, message, ignore_unknown_fields=True)
    field = getattr(message, names[-1] if len(names) == 1 else names[1])
    last = len(levels) == 1
    kept = 0
    for index, child in enumerate(children):
        child_where = f"{_joined(where, names[0])}[{index}]"
        element = field.add()
        try:
            if not isinstance(child, dict):
                raise ValueError(f"{_json_type(child)}, not an object")
            if last:
                _hex_ids_to_base64(child)
                json_format.ParseDict(child, element, ignore_unknown_fields=True)
                kept += 1
            else:
                kept += _parse_level(child, element, levels[1:], child_where, errors, malformed)
        except errors as error:
            del field[-1]
            reason = str(error) or type(error).__name__
            if len(reason) > _ERROR_CHARS:
                reason = reason[:_ERROR_CHARS] + "..."
            reason = reason.encode("utf-8", "backslashreplace").decode()  # it may quote a surrogate
            points = levels[-1] == ("metrics",)
            malformed.append(Malformed(_items(child, levels[1:], points), child_where, reason))
    return kept


def _joined(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _items(node: Any, levels: tuple[tuple[str, ...], ...], points: bool) -> int:
    """Spans, or data points (``points``), in a part left out (at least 1: something was lost)."""
    if not levels:  # an item: a span is one, a metric its data points
        count = 0
        if points and isinstance(node, dict):
            for key in _METRIC_DATA:
                data = node.get(key)
                if isinstance(data, dict):
                    found = data.get("dataPoints", data.get("data_points"))
                    if isinstance(found, list):
                        count += len(found)
        return max(1, count)
    total = 0
    if isinstance(node, dict):
        for name in levels[0]:
            children = node.get(name)
            if isinstance(children, list):
                total += sum(_items(child, levels[1:], points) for child in children)
    return max(1, total)
