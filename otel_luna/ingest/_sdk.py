"""SDK objects → records: ``ReadableSpan`` → :class:`SpanRecord`, ``MetricsData`` →
:class:`UsageSample`. What the in-process exporters hand to :class:`~otel_luna.ingest.Ingest`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from opentelemetry.sdk.metrics.export import AggregationTemporality, MetricsData, Sum
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from otel_luna._attributes import ESTIMATOR, SERVICE_NAME, USAGES_INSTRUMENT
from otel_luna.ingest._ingest import SpanFilter
from otel_luna.mapping._records import (
    SpanRecord,
    UsageSample,
    origin_of,
    resource_identity,
    stream_of,
)
from otel_luna.outcomes import Reason

_SERVER = SpanKind.SERVER
_ERROR = StatusCode.ERROR
_CUMULATIVE = AggregationTemporality.CUMULATIVE
_UNKNOWN_SERVICE = "unknown_service"
_UNFINISHED = Reason.UNFINISHED_SPAN
_UNREADABLE = Reason.EXPORT_ERROR
# A record without the NamedTuple's argument parsing: a third of the cost, on the hot path.
_record = tuple.__new__


def _attributes_of(span: ReadableSpan) -> Mapping[str, Any]:
    # The SDK wraps its BoundedAttributes in a MappingProxyType; read the plain dict under both
    # when it is there (see benchmarks/exporter_overhead.py), else the public mapping.
    try:
        plain = span._attributes._dict  # type: ignore[union-attr]
    except AttributeError:  # none (None), or not the SDK's
        plain = None
    if plain.__class__ is dict:
        return plain
    return span.attributes or {}


class ServiceNames:
    """(``service.name``, origin) of a resource, cached by identity (the SDK shares one per
    provider). The origin tells senders of one service apart (see ``UsageSample.origin``)."""

    def __init__(self) -> None:
        self._cache: dict[int, tuple[Resource, tuple[str, int]]] = {}

    def __call__(self, resource: Resource) -> tuple[str, int]:
        cached = self._cache.get(id(resource))
        if cached is not None and cached[0] is resource:
            return cached[1]
        name = str(resource.attributes.get(SERVICE_NAME) or _UNKNOWN_SERVICE)
        found = (name, origin_of(resource.attributes))
        if len(self._cache) > 64:
            self._cache.clear()
        self._cache[id(resource)] = (resource, found)
        return found


def span_records(
    spans: Sequence[ReadableSpan], services: ServiceNames, only: SpanFilter | None = None
) -> Iterator[SpanRecord | Reason]:
    """A record per ended span; :attr:`Reason.UNFINISHED_SPAN` for one without an end,
    :attr:`Reason.EXPORT_ERROR` for something that is no span at all. With ``only`` (the
    ingest's :attr:`~otel_luna.ingest.Ingest.span_filter`), nothing for a span its mapper does
    not want, decided from the kind, the attribute keys and the ids: no value converted; and
    where ``only`` has ``take`` (the compiled pass), nothing for the spans it maps itself: the
    records are made for the spans it leaves, each in its place between its calls."""
    prefix, wants, take = ("", None, None) if only is None else only
    resource = service = None  # the last span's: a provider's spans share one
    index, count = 0, len(spans)
    while index < count:
        if take is not None:
            index = take(spans, index, services)
            if index >= count:
                return
        span = spans[index]
        index += 1
        try:
            context = span.context
            end = span.end_time
            start = span.start_time
            if context is None or end is None or start is None:
                yield _UNFINISHED
                continue
            attributes = _attributes_of(span)
            is_server = span.kind is _SERVER
            parent = span.parent
            if wants is not None and not is_server:
                marked = False
                for key in attributes:
                    if key.startswith(prefix):
                        marked = True
                        break
                local_parent = None if parent is None or parent.is_remote else parent.span_id
                if not wants(False, marked, context.span_id, local_parent):
                    continue  # nothing to map: not rejected, not counted
            if span.resource is not resource:
                resource = span.resource
                service = services(resource)[0]
            record = _record(
                SpanRecord,
                (
                    attributes,
                    is_server,
                    context.trace_id,
                    context.span_id,
                    None if parent is None else parent.span_id,
                    start,
                    end,
                    span.status.status_code is _ERROR,
                    service,
                    parent is not None and parent.is_remote,
                ),
            )
        except Exception:  # noqa: BLE001 - not a ReadableSpan: it costs only itself
            yield _UNREADABLE
            continue
        yield record


def usage_samples(metrics_data: MetricsData, services: ServiceNames) -> Iterator[UsageSample]:
    """The data points of every ``luna.usages`` sum; other metrics are skipped by name."""
    for resource_metrics in metrics_data.resource_metrics:
        service: tuple[str, int] | None = None
        resource = b""
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                data = metric.data
                if metric.name != USAGES_INSTRUMENT or not isinstance(data, Sum):
                    continue
                if service is None:
                    service = services(resource_metrics.resource)
                    resource = resource_identity(resource_metrics.resource.attributes)
                scope = scope_metrics.scope
                cumulative = data.aggregation_temporality == _CUMULATIVE
                for point in data.data_points:
                    attributes = point.attributes or {}
                    yield UsageSample(
                        service[0],
                        attributes.get(ESTIMATOR),
                        point.start_time_unix_nano,
                        point.time_unix_nano,
                        point.value,
                        cumulative,
                        service[1],
                        stream_of(resource, scope.name, scope.version or "", attributes)
                        if cumulative
                        else 0,
                    )
