"""Decoded OTLP → the shared mapping → the spool. What ``otel-luna serve`` does per request.

Success is answered only after the request's lines are in the spool. When the spool is near
full, requests are refused with :class:`Backpressure` (gRPC ``RESOURCE_EXHAUSTED``, HTTP 503
with ``Retry-After``) so clients back off and retry instead of losing data.
"""

from __future__ import annotations

import threading
from collections import Counter

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otel_luna import otlp
from otel_luna.pipeline import Pipeline, span_mapper
from otel_luna.settings import Settings
from otel_luna.sinks import Sink
from otel_luna.usages import UsageMapper

#: Share of SPOOL_MAX_BYTES above which requests are refused.
HIGH_WATER = 0.9
#: Seconds clients are asked to wait when refused.
RETRY_AFTER_SECONDS = 1


class Backpressure(Exception):
    """The spool is (nearly) full: the client should retry later."""


class Receiver:
    """Two pipelines (traces, metrics) fed with decoded OTLP requests. Thread-safe."""

    def __init__(self, settings: Settings, sink: Sink | None = None) -> None:
        self.settings = settings
        self.traces = Pipeline(settings, sink, signal="traces")
        self.metrics = Pipeline(settings, sink, signal="metrics")
        self._spans = span_mapper(settings)
        self._usages = UsageMapper()
        self.traces.track(self._spans.counts)
        self.metrics.track(self._usages.counts)
        self.requests: Counter[str] = Counter()
        self._requests_lock = threading.Lock()
        self._high_water = int(settings.spool_max_bytes * HIGH_WATER)

    def _count(self, key: str) -> None:
        with self._requests_lock:
            self.requests[key] += 1

    def _check_room(self, pipeline: Pipeline, request_bytes: int) -> None:
        """Refuse unless the request fits under the high-water mark. Its protobuf size bounds
        its line protocol (which drops the ids and most attributes)."""
        writer = pipeline.writer
        if writer is None:
            return
        pending = writer.spool.pending_bytes
        # An empty spool takes any request (else one bigger than the headroom never gets in).
        if pending and pending + request_bytes >= self._high_water:
            self._count("refused_spool_full")
            raise Backpressure("the spool is full; retry later")

    def accept_traces(self, request: ExportTraceServiceRequest) -> tuple[int, str]:
        """Map, encode and spool; (rejected points, message) for a partial success."""
        self._check_room(self.traces, request.ByteSize())
        pipeline = self.traces
        lines: list[str] = []
        with pipeline.lock:
            before = _rejections(pipeline)
            add = self._spans.add
            for record in otlp.span_records(request):
                points = add(*record)
                if points:
                    pipeline.encode(points, lines)
            rejected = _rejections(pipeline) - before
        pipeline.submit(lines)
        self._count("traces")
        return _partial(rejected)

    def accept_metrics(self, request: ExportMetricsServiceRequest) -> tuple[int, str]:
        self._check_room(self.metrics, request.ByteSize())
        pipeline = self.metrics
        lines: list[str] = []
        with pipeline.lock:
            before = _rejections(pipeline) + self._usages.counts["invalid_estimator"]
            pipeline.encode(self._usages.points(otlp.usage_samples(request)), lines)
            rejected = _rejections(pipeline) + self._usages.counts["invalid_estimator"] - before
        pipeline.submit(lines)
        self._count("metrics")
        return _partial(rejected)

    def counts(self) -> Counter[str]:
        total = self.traces.counts() + self.metrics.counts()
        with self._requests_lock:
            total.update({f"requests_{key}": value for key, value in self.requests.items()})
        return total

    def shutdown(self) -> None:
        self.traces.shutdown()
        self.metrics.shutdown()


def _rejections(pipeline: Pipeline) -> int:
    """Points the encoder refused so far (``failures`` also counts the lines it mapped)."""
    return sum(pipeline.failures.values()) - pipeline.failures["mapped"]


def _partial(rejected: int) -> tuple[int, str]:
    if not rejected:
        return 0, ""
    return rejected, f"{rejected} points could not be written as line protocol (see counters)"
