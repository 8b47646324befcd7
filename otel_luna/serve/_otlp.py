"""OTLP protobuf (and OTLP/JSON) → records. Pure: messages in, records out.

The receiver decodes requests here and hands the records to the same
:class:`~otel_luna.ingest.Ingest` the in-process exporters use (whose adapter is
``ingest/_sdk.py``): one set of rules for both ways in.
"""

from __future__ import annotations

import base64
import enum
import json
from collections.abc import Iterator
from typing import Any, NamedTuple

from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from otel_luna.ingest import SpanFilter
from otel_luna.mapping import (
    ESTIMATOR,
    HTTP_ROUTE,
    MAPPED_PREFIXES,
    ROUTE_FALLBACK_KEYS,
    SERVER_SPAN_KEYS,
    SERVICE_NAME,
    USAGES_INSTRUMENT,
    SpanRecord,
    UsageSample,
    origin_of,
    resource_identity,
    stream_of,
)
from otel_luna.outcomes import Reason

_SERVER = Span.SPAN_KIND_SERVER
_ERROR = Status.STATUS_CODE_ERROR
_CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
#: Span flags saying the parent is known to be remote (bits 8 and 9: HAS_IS_REMOTE, IS_REMOTE).
_REMOTE_PARENT = 0x300
_UNKNOWN_SERVICE = "unknown_service"

# A record without the NamedTuple's argument parsing (see ingest/_sdk.py).
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


class _Wanted(enum.IntEnum):
    """What the mapping reads of an attribute, by key (see :func:`_classify`): the attribute
    is kept when its class is above the least of the span's kind."""

    DROP = 0  # never read
    ROUTE_FALLBACK = 1  # the path or URL: read of a SERVER span without http.route
    SERVER_ONLY = 2  # read of a SERVER span only
    ANY_SPAN = 3  # read of every span (luna.*, watchdog.*)


# The classes as plain ints under module names: the loop over every attribute of every span
# compares them, and CPython 3.11 specializes comparisons of exact ints only (an IntEnum member
# is a subclass: 2 % more per span decoded, measured), nor is an enum class's attribute free.
_DROP, _ROUTE_FALLBACK, _SERVER_ONLY, _ANY_SPAN = (int(wanted) for wanted in _Wanted)
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


_NO_TRACE, _NO_SPAN = bytes(16), bytes(8)


def span_ids(request: ExportTraceServiceRequest) -> set[int]:
    """The span ids of ``request`` (a retry sends them again: :meth:`Ingest.write_spans`)."""
    return {
        int.from_bytes(span.span_id, "big")
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    }


def span_records(
    request: ExportTraceServiceRequest, only: SpanFilter | None = None
) -> Iterator[SpanRecord | Reason]:
    """One record per span, with only the attributes the mapping reads (``_attributes.py``):
    ``MAPPED_PREFIXES`` of any span; of a SERVER span also ``SERVER_SPAN_KEYS``, and
    ``ROUTE_FALLBACK_KEYS`` when it has no ``http.route``. Most of a span's attributes are the
    instrumentation's, which no mapper reads: they are never converted. With ``only`` (the
    ingest's :attr:`~otel_luna.ingest.Ingest.span_filter`), none for a span its mapper does not
    want (asked of a span other than a SERVER span that keeps no attribute, or none with
    the mapper's prefix).

    A span whose trace id is not 16 bytes, whose span id is not 8, either all zeros (invalid,
    says ``trace.proto``), or whose parent span id is neither empty nor 8 bytes, is
    ``Reason.INVALID_SPAN_ID``: the time and ``request_id`` of its points come from its ids.
    """
    classes = _classes
    prefix, wants = ("", None) if only is None else only[:2]
    for resource_spans in request.resource_spans:
        service = _service(resource_spans.resource.attributes)
        scopes: Any = resource_spans.scope_spans
        if not scopes:
            scopes = _deprecated_scope_spans(resource_spans)
        for scope_spans in scopes:
            if scope_spans is None:
                yield Reason.MALFORMED_SPAN
                continue
            for span in scope_spans.spans:
                trace_id, span_id, parent = span.trace_id, span.span_id, span.parent_span_id
                if (
                    len(trace_id) != 16
                    or len(span_id) != 8
                    or trace_id == _NO_TRACE
                    or span_id == _NO_SPAN
                    or (parent and len(parent) != 8)
                ):
                    yield Reason.INVALID_SPAN_ID
                    continue
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
                if (
                    wants is not None
                    and not is_server
                    and not wants(
                        False,
                        any(key.startswith(prefix) for key in kept),
                        int.from_bytes(span_id, "big"),
                        None
                        if not parent or span.flags & _REMOTE_PARENT == _REMOTE_PARENT
                        else int.from_bytes(parent, "big"),
                    )
                ):
                    continue  # nothing to map: not rejected, not counted
                yield _record(
                    SpanRecord,
                    (
                        kept,
                        is_server,
                        int.from_bytes(trace_id, "big"),
                        int.from_bytes(span_id, "big"),
                        int.from_bytes(parent, "big") if parent else None,
                        span.start_time_unix_nano,
                        span.end_time_unix_nano,
                        span.status.code == _ERROR,
                        service,
                        span.flags & _REMOTE_PARENT == _REMOTE_PARENT,
                    ),
                )


#: ``ResourceSpans.deprecated_scope_spans``, field 1000 (OTLP 0.15 to 0.18; ``reserved`` since).
_DEPRECATED_SCOPE_SPANS = 1000
_LENGTH_DELIMITED = 2


def _deprecated_scope_spans(resource_spans: ResourceSpans) -> list[ScopeSpans | None]:
    """The scope spans of a sender of OTLP 0.15-0.18, in the deprecated field 1000 (kept by the
    protobuf parser as an unknown field), for a ``ResourceSpans`` without ``scope_spans``: as
    the Collector's pdata does (``MigrateTraces``: used when ``scope_spans`` is empty, dropped
    otherwise). None for one that cannot be read."""
    found: list[ScopeSpans | None] = []
    for field in UnknownFieldSet(resource_spans):
        if field.field_number == _DEPRECATED_SCOPE_SPANS and field.wire_type == _LENGTH_DELIMITED:
            try:
                found.append(ScopeSpans.FromString(field.data))
            except DecodeError:
                found.append(None)
    return found


def usage_samples(request: ExportMetricsServiceRequest) -> Iterator[UsageSample]:
    """The data points of every ``luna.usages`` sum; other metrics are skipped by name."""
    for resource_metrics in request.resource_metrics:
        service = _service(resource_metrics.resource.attributes)
        origin: int | None = None
        resource = b""
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if metric.name != USAGES_INSTRUMENT or metric.WhichOneof("data") != "sum":
                    continue
                if origin is None:
                    resource_attributes = attributes(resource_metrics.resource.attributes)
                    origin = origin_of(resource_attributes)
                    resource = resource_identity(resource_attributes)
                scope = scope_metrics.scope
                cumulative = metric.sum.aggregation_temporality == _CUMULATIVE
                for point in metric.sum.data_points:
                    point_attributes = attributes(point.attributes)
                    estimator = point_attributes.get(ESTIMATOR)
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
                        stream_of(resource, scope.name, scope.version, point_attributes)
                        if cumulative
                        else 0,
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
_SCOPE_SPANS = ("scopeSpans", "scope_spans")
_SPANS = ("spans",)
_TRACE_LEVELS = (("resourceSpans", "resource_spans"), _SCOPE_SPANS, _SPANS)
#: ``ResourceSpans.deprecated_scope_spans`` (OTLP 0.15-0.18), as pdata reads it.
_DEPRECATED_SCOPE_SPANS_JSON = ("deprecatedScopeSpans", "deprecated_scope_spans")
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
    except (*errors, Refused) as error:  # the request's own fields; a value pdata refuses
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
    if isinstance(value, dict):
        return "an object"
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
    if names is _SCOPE_SPANS:
        _migrate_scope_spans(node)
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
                if names is _SPANS:
                    _check_span_enums(child, child_where)
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


class Refused(Exception):
    """A value for which the Collector refuses the whole request (400), not only its span."""


def _migrate_scope_spans(resource: dict[str, Any]) -> None:
    """A ``ResourceSpans`` of OTLP 0.15-0.18: its ``deprecatedScopeSpans`` are its scope spans
    when it has none, else dropped (pdata's ``MigrateTraces``)."""
    deprecated = [resource.pop(name) for name in _DEPRECATED_SCOPE_SPANS_JSON if name in resource]
    if not deprecated or any(resource.get(name) for name in _SCOPE_SPANS):
        return
    for name in _SCOPE_SPANS:
        resource.pop(name, None)  # empty
    if len(deprecated) == 1:
        resource[_SCOPE_SPANS[0]] = deprecated[0]
    elif all(isinstance(value, list) for value in deprecated):
        resource[_SCOPE_SPANS[0]] = [*deprecated[0], *deprecated[1]]
    else:
        raise ValueError(f"{' and '.join(_DEPRECATED_SCOPE_SPANS_JSON)} are not both lists")


_SPAN_KINDS = frozenset(Span.SpanKind.keys())
_STATUS_CODES = frozenset(Status.StatusCode.keys())
_INT32 = range(-(2**31), 2**31)


def _check_span_enums(span: dict[str, Any], where: str) -> None:
    """:class:`Refused` for a span kind or status code that is neither one of the enum's names
    nor an integer (32 bits): pdata's ``ReadEnumValue`` refuses the request for it (protobuf's
    JSON parser would silently read ``"baz"`` as unspecified and ``true`` as 1). Integers
    outside the enum are kept, as in protobuf, where an unknown value is valid."""
    kind = span.get("kind")
    if kind is not None and not _enum_ok(kind, _SPAN_KINDS):
        raise Refused(f"{where}.kind: {_shown(kind)} is not a span kind (SPAN_KIND_* or a number)")
    status = span.get("status")
    code = status.get("code") if isinstance(status, dict) else None
    if code is not None and not _enum_ok(code, _STATUS_CODES):
        raise Refused(
            f"{where}.status.code: {_shown(code)} is not a status code (STATUS_CODE_* or a number)"
        )


def _enum_ok(value: Any, names: frozenset[str]) -> bool:
    if isinstance(value, str):
        return value in names
    return type(value) is int and value in _INT32


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:60] + "..."


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
