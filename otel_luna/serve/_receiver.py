"""Decoded OTLP → the shared ingest → the spool. What ``otel-luna serve`` does per request.

Success is answered only after the request's lines are in the spool. When the spool is near
full, requests are refused with :class:`Backpressure` (gRPC ``RESOURCE_EXHAUSTED``, HTTP 503
with ``Retry-After``) so clients back off and retry instead of losing data.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from google.protobuf.message import Message
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otel_luna.delivery import SpoolUnavailable
from otel_luna.ingest import Ingest, Result
from otel_luna.outcomes import Counts, Reason
from otel_luna.serve import _otlp as otlp
from otel_luna.serve._budget import ByteBudget
from otel_luna.serve._settings import ServeSettings
from otel_luna.sinks import SinkLike

#: Share of SPOOL_MAX_BYTES above which requests are refused.
HIGH_WATER = 0.9
#: Seconds clients are asked to wait when refused.
RETRY_AFTER_SECONDS = 1


class Backpressure(Exception):
    """The spool is (nearly) full: the client should retry later."""


class Receiver:
    """OTLP requests into one :class:`~otel_luna.ingest.Ingest`. Thread-safe."""

    def __init__(self, settings: ServeSettings, sink: SinkLike | None = None) -> None:
        self.settings = settings
        # No silent switch to memory: what serve answers OK for is on disk, or it refuses.
        self.requests = Counts()  # shown by otel-luna status too
        self.ingest = Ingest(
            settings, sink, memory_fallback=False, host_counts=self.requests.snapshot
        )
        #: Request bytes being read, inflated and decoded (decoded ones at their bound), by both
        #: front ends: one ``serve_max_inflight_bytes`` per process.
        self.budget = ByteBudget(settings.serve_max_inflight_bytes)
        self._high_water = int(settings.spool_max_bytes * HIGH_WATER)
        # The most a request's re-encoded size can be: 4 x what is accepted on the wire (binary
        # protobuf re-encodes to at most 2 x its input: a negative enum read from 5 bytes comes
        # back in 10; OTLP/JSON to at most 4 x: ``1,`` in a repeated fixed64 or double is 8).
        self._largest_request = 4 * settings.serve_max_message_bytes
        #: Why the spool refused the last request it was given; None once one is stored again.
        self.spool_refused: str | None = None

    def accept_traces(self, request: ExportTraceServiceRequest) -> Result:
        """Map, encode and spool; what was rejected, for the partial success. A span that
        cannot be mapped is rejected alone (counted, never raised)."""
        self._check_room(request)
        ingest = self.ingest
        result = self._spooled(
            lambda: ingest.write_spans(
                otlp.span_records(request, ingest.span_filter), otlp.span_ids(request)
            )
        )
        self.requests.add(Reason.REQUESTS_TRACES)
        return result

    def accept_metrics(self, request: ExportMetricsServiceRequest) -> Result:
        self._check_room(request)
        result = self._spooled(lambda: self.ingest.write_usages(otlp.usage_samples(request)))
        self.requests.add(Reason.REQUESTS_METRICS)
        return result

    def _check_room(self, request: Message) -> None:
        """Refuse unless the request fits under the high-water mark. Its protobuf size bounds
        its line protocol (which drops the ids and most attributes)."""
        pending = self.ingest.pending_bytes()
        # An empty spool takes any request (else one bigger than the headroom never gets in).
        # Far below the mark no request can reach it: its size (a serialization with upb,
        # about 1 µs a span) is computed only near the mark.
        if not pending or pending + self._largest_request < self._high_water:
            return
        if pending + request.ByteSize() >= self._high_water:
            self.requests.add(Reason.REQUESTS_REFUSED_SPOOL_FULL)
            raise Backpressure("the spool is full; retry later")

    def _spooled(self, ingest: Callable[[], Result]) -> Result:
        """``ingest()``; a disk that refuses its lines is backpressure (the client retries and
        gets the identical points), never a silent switch to memory."""
        try:
            result = ingest()
        except SpoolUnavailable as error:
            self.spool_refused = str(error)
            self.requests.add(Reason.REQUESTS_REFUSED_SPOOL_UNAVAILABLE)
            raise Backpressure(
                f"the spool cannot store the request ({error}); retry later"
            ) from None
        self.spool_refused = None
        return result

    @property
    def spool_full(self) -> bool:
        """Whether the spool is above the mark where requests are refused."""
        return self.ingest.pending_bytes() >= self._high_water

    def counts(self) -> Counter[Reason]:
        return self.ingest.counts() + self.requests.snapshot()

    def shutdown(self) -> None:
        self.ingest.shutdown()
