"""Decoded OTLP → the shared mapping → the spool. What ``otel-luna serve`` does per request.

Success is answered only after the request's lines are in the spool. When the spool is near
full, requests are refused with :class:`Backpressure` (gRPC ``RESOURCE_EXHAUSTED``, HTTP 503
with ``Retry-After``) so clients back off and retry instead of losing data.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otel_luna.delivery.spool import SpoolUnavailable
from otel_luna.ingest import otlp
from otel_luna.mapping.usages import UsageMapper
from otel_luna.pipeline import Pipeline, span_mapper
from otel_luna.settings import Settings
from otel_luna.sinks import Sink

_logger = logging.getLogger(__name__)
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
        # No silent switch to memory: what serve answers OK for is on disk, or it refuses.
        self.traces = Pipeline(settings, sink, signal="traces", memory_fallback=False)
        self.metrics = Pipeline(settings, sink, signal="metrics", memory_fallback=False)
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
        """Map, encode and spool; (rejected points, message) for a partial success. A span
        that cannot be mapped is rejected alone (counted, never raised)."""
        self._check_room(self.traces, request.ByteSize())
        pipeline = self.traces
        lines: list[str] = []
        with pipeline.lock:
            before = _snapshot(pipeline, self._spans.counts)
            add = self._spans.add
            records = otlp.span_records(request)
            while True:
                try:
                    record = next(records, None)
                    if record is None:
                        break
                    points = add(*record)
                except Exception:  # a bug must cost one span, never the request
                    _logger.exception("otel-luna: could not map a span")
                    pipeline.failures["mapping_error"] += 1
                    continue
                if points:
                    pipeline.encode(points, lines)
            changes = _snapshot(pipeline, self._spans.counts) - before
        self._submit(pipeline, lines)
        self._count("traces")
        return _partial(changes)

    def accept_metrics(self, request: ExportMetricsServiceRequest) -> tuple[int, str]:
        self._check_room(self.metrics, request.ByteSize())
        pipeline = self.metrics
        lines: list[str] = []
        with pipeline.lock:
            before = _snapshot(pipeline, self._usages.counts)
            try:
                points = self._usages.points(otlp.usage_samples(request))
            except Exception:  # a bug must be an answer, never a dropped connection
                _logger.exception("otel-luna: could not map a metrics request")
                pipeline.failures["mapping_error"] += otlp.count_data_points(request)
                points = []
            pipeline.encode(points, lines)
            changes = _snapshot(pipeline, self._usages.counts) - before
        self._submit(pipeline, lines)
        self._count("metrics")
        return _partial(changes)

    def _submit(self, pipeline: Pipeline, lines: list[str]) -> None:
        """Spool ``lines``; a disk that refuses them is backpressure (the client retries and
        gets the identical points), never a silent switch to memory."""
        try:
            pipeline.submit(lines)
        except SpoolUnavailable as error:
            self._count("refused_spool_unavailable")
            raise Backpressure(
                f"the spool cannot store the request ({error}); retry later"
            ) from None

    def counts(self) -> Counter[str]:
        total = self.traces.counts() + self.metrics.counts()
        with self._requests_lock:
            total.update({f"requests_{key}": value for key, value in self.requests.items()})
        return total

    def shutdown(self) -> None:
        self.traces.shutdown()
        self.metrics.shutdown()


#: Mapper counts that mean a whole point (span or data point) was rejected; the pipeline's own
#: failures (encoder refusals, mapping errors) are all rejections.
_REJECTING = frozenset(
    {"invalid_license_status", "invalid_estimator", "nonfinite_usage", "negative_usage"}
)
#: Counts that are not about a problem with the data.
_NOT_PROBLEMS = frozenset({"mapped", "server_spans"})


def _snapshot(pipeline: Pipeline, mapper_counts: Counter[str]) -> Counter[str]:
    """Rejections and drops so far, by reason; ``!`` marks whole-point rejections."""
    snapshot: Counter[str] = Counter()
    for key, value in pipeline.failures.items():
        if key not in _NOT_PROBLEMS:
            snapshot["!" + key] += value
    for key, value in (*mapper_counts.items(), *pipeline.encoder.counts.items()):
        if key not in _NOT_PROBLEMS:
            snapshot[("!" if key in _REJECTING else "") + key] += value
    return snapshot


def _partial(changes: Counter[str]) -> tuple[int, str]:
    """(rejected points, message): the OTLP partial success of a request. Values or attributes
    dropped from points that were written are reported in the message with 0 rejected (the
    OTLP way to warn)."""
    if not changes:
        return 0, ""
    rejected = {key[1:]: value for key, value in changes.items() if key.startswith("!")}
    dropped = {key: value for key, value in changes.items() if not key.startswith("!")}
    parts = []
    if rejected:
        reasons = ", ".join(f"{key}={value}" for key, value in sorted(rejected.items()))
        parts.append(f"{sum(rejected.values())} points rejected ({reasons})")
    if dropped:
        reasons = ", ".join(f"{key}={value}" for key, value in sorted(dropped.items()))
        parts.append(f"values or attributes dropped ({reasons})")
    return sum(rejected.values()), "; ".join(parts)
