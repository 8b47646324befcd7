"""The SDK-facing edge: spans and metrics in, lines handed to delivery, never raises."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.metrics import Counter as SdkCounter
from opentelemetry.sdk.metrics import ObservableCounter
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode

from otel_luna import lifecycle
from otel_luna._attributes import ESTIMATOR, SERVICE_NAME, USAGES_INSTRUMENT
from otel_luna.mapping.usages import UsageMapper, UsageSample, origin_of
from otel_luna.pipeline import Pipeline, span_mapper
from otel_luna.settings import Settings
from otel_luna.sinks import Sink

_logger = logging.getLogger(__name__)
_SERVER = SpanKind.SERVER
_ERROR = StatusCode.ERROR
_CUMULATIVE = AggregationTemporality.CUMULATIVE
_UNKNOWN_SERVICE = "unknown_service"


def _attributes_of(span: ReadableSpan) -> Mapping[str, Any]:
    # The SDK wraps its BoundedAttributes in a MappingProxyType; read the plain dict under both
    # when it is there (see benchmarks/exporter_overhead.py), else the public mapping.
    raw = getattr(span, "_attributes", None)
    plain = getattr(raw, "_dict", None)
    if isinstance(plain, dict):
        return plain
    return span.attributes or {}


class _ServiceNames:
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


class LunaSpanExporter(SpanExporter):
    """Writes SERVER spans as LUNA ``requests`` / ``errors`` points, licence checks as
    ``licensing`` points.

    With no arguments it reads :class:`~otel_luna.settings.Settings` from the environment, so
    ``OTEL_TRACES_EXPORTER=luna opentelemetry-instrument python app.py`` needs no code change.
    ``export()`` maps, encodes and queues; a background thread does the network I/O.
    """

    def __init__(self, settings: Settings | None = None, *, sink: Sink | None = None) -> None:
        self.settings = settings if settings is not None else Settings.load()
        self._pipeline = Pipeline(self.settings, sink)
        self._mapper = span_mapper(self.settings)
        self._pipeline.track(self._mapper.counts)
        self._service = _ServiceNames()
        self._shutdown = False
        lifecycle.watch(self._pipeline, self.settings)  # SIGTERM flushes it (lifecycle.py)

    @property
    def counts(self) -> Any:
        """What the exporter mapped, dropped and wrote, by reason (a ``Counter``)."""
        return self._pipeline.counts()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._pipeline.writer is None:
            return SpanExportResult.SUCCESS
        if self._shutdown:
            return SpanExportResult.FAILURE
        try:
            self._pipeline.submit(self._encode(spans))
        except Exception:  # never into the application; _encode already isolates each span
            self._pipeline.failures["export_error"] += len(spans)
            _logger.exception("otel-luna: could not export %d spans", len(spans))
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def _encode(self, spans: Sequence[ReadableSpan]) -> list[str]:
        add = self._mapper.add
        pipeline = self._pipeline
        lines: list[str] = []
        with pipeline.lock:
            for span in spans:
                context = span.context
                parent = span.parent
                end = span.end_time
                start = span.start_time
                if context is None or end is None or start is None:
                    pipeline.failures["unfinished_span"] += 1
                    continue
                try:
                    points = add(
                        _attributes_of(span),
                        span.kind is _SERVER,
                        context.trace_id,
                        context.span_id,
                        None if parent is None else parent.span_id,
                        start,
                        end,
                        span.status.status_code is _ERROR,
                        self._service(span.resource)[0],
                    )
                except Exception:  # a bug must cost one span, never the batch
                    _logger.exception("otel-luna: could not map a span")
                    pipeline.failures["mapping_error"] += 1
                    continue
                if points:
                    pipeline.encode(points, lines)
        return lines

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._pipeline.force_flush(timeout_millis / 1000)

    def shutdown(self) -> None:
        if not self._shutdown:
            self._shutdown = True
            self._pipeline.shutdown()


class LunaMetricExporter(MetricExporter):
    """Writes the ``luna.usages`` counter as ``usages_statistic`` points, one per service and
    export interval. Other metrics are skipped. Asks the SDK for delta temporality on counters;
    cumulative data (other SDKs, the OTLP receiver) is turned into deltas per stream.
    """

    def __init__(self, settings: Settings | None = None, *, sink: Sink | None = None) -> None:
        super().__init__(
            preferred_temporality={
                SdkCounter: AggregationTemporality.DELTA,
                ObservableCounter: AggregationTemporality.DELTA,
            }
        )
        self.settings = settings if settings is not None else Settings.load()
        self._pipeline = Pipeline(self.settings, sink, signal="metrics")
        self._mapper = UsageMapper()
        self._pipeline.track(self._mapper.counts)
        self._service = _ServiceNames()
        self._shutdown = False
        lifecycle.watch(self._pipeline, self.settings)  # SIGTERM flushes it (lifecycle.py)

    @property
    def counts(self) -> Any:
        """What the exporter mapped, dropped and wrote, by reason (a ``Counter``)."""
        return self._pipeline.counts()

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        if self._pipeline.writer is None:
            return MetricExportResult.SUCCESS
        if self._shutdown:
            return MetricExportResult.FAILURE
        try:
            samples = list(self._samples(metrics_data))
            lines: list[str] = []
            if samples:
                with self._pipeline.lock:
                    self._pipeline.encode(self._mapper.points(samples), lines)
            self._pipeline.submit(lines)
        except Exception:  # never into the application
            self._pipeline.failures["export_error"] += 1
            _logger.exception("otel-luna: could not export metrics")
            return MetricExportResult.FAILURE
        return MetricExportResult.SUCCESS

    def _samples(self, metrics_data: MetricsData) -> Any:
        for resource_metrics in metrics_data.resource_metrics:
            service: tuple[str, int] | None = None
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    data = metric.data
                    if metric.name != USAGES_INSTRUMENT or not isinstance(data, Sum):
                        continue
                    if service is None:
                        service = self._service(resource_metrics.resource)
                    cumulative = data.aggregation_temporality == _CUMULATIVE
                    for point in data.data_points:
                        estimator = (point.attributes or {}).get(ESTIMATOR)
                        yield UsageSample(
                            service[0],
                            estimator,
                            point.start_time_unix_nano,
                            point.time_unix_nano,
                            point.value,
                            cumulative,
                            service[1],
                        )

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._pipeline.force_flush(timeout_millis / 1000)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        if not self._shutdown:
            self._shutdown = True
            self._pipeline.shutdown()
