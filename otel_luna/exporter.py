"""``LunaSpanExporter``: the SDK-facing edge. Spans in, lines handed to delivery, never raises."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode

from otel_luna._attributes import SERVICE_NAME
from otel_luna.delivery import BatchWriter
from otel_luna.lineprotocol import LineProtocolEncoder
from otel_luna.mapping import RequestMapper
from otel_luna.settings import Settings
from otel_luna.sinks import Sink, load_sink

_logger = logging.getLogger(__name__)
_SERVER = SpanKind.SERVER
_ERROR = StatusCode.ERROR
_UNKNOWN_SERVICE = "unknown_service"


def _attributes_of(span: ReadableSpan) -> Mapping[str, Any]:
    # The SDK wraps its BoundedAttributes in a MappingProxyType; read the plain dict under both
    # when it is there (a third of the mapping's cost), else the public mapping.
    raw = getattr(span, "_attributes", None)
    plain = getattr(raw, "_dict", None)
    if isinstance(plain, dict):
        return plain
    return span.attributes or {}


class LunaSpanExporter(SpanExporter):
    """Writes SERVER spans as LUNA ``requests`` / ``errors`` points.

    With no arguments it reads :class:`~otel_luna.settings.Settings` from the environment, so
    ``OTEL_TRACES_EXPORTER=luna opentelemetry-instrument python app.py`` needs no code change.
    ``export()`` maps, encodes and queues; a background thread does the network I/O.
    """

    def __init__(self, settings: Settings | None = None, *, sink: Sink | None = None) -> None:
        self.settings = settings if settings is not None else Settings.load()
        self._mapper = RequestMapper()
        self._encoder = LineProtocolEncoder()
        self._lock = threading.Lock()
        self._services: dict[int, tuple[object, str]] = {}
        self._failures: Counter[str] = Counter()
        self._shutdown = False
        self._writer: BatchWriter | None = None
        if self.settings.enabled:
            self._writer = BatchWriter(
                sink if sink is not None else load_sink(self.settings),
                flush_interval=self.settings.flush_interval,
                batch_size=self.settings.batch_size,
                max_queue_size=self.settings.max_queue_size,
            )

    @property
    def counts(self) -> Counter[str]:
        """What the exporter mapped, dropped and wrote, by reason."""
        total: Counter[str] = Counter()
        total.update(self._mapper.counts)
        total.update(self._encoder.counts)
        total.update(self._failures)
        if self._writer is not None:
            total.update(self._writer.counts)
        return total

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._writer is None:
            return SpanExportResult.SUCCESS
        if self._shutdown:
            return SpanExportResult.FAILURE
        try:
            lines = self._encode(spans)
        except Exception:
            self._failures["export_error"] += len(spans)
            _logger.exception("otel-luna: could not map %d spans", len(spans))
            return SpanExportResult.FAILURE
        self._writer.submit(lines)
        return SpanExportResult.SUCCESS

    def _encode(self, spans: Sequence[ReadableSpan]) -> list[str]:
        add = self._mapper.add
        encode_point = self._encoder.encode_point
        lines: list[str] = []
        with self._lock:
            for span in spans:
                context = span.context
                parent = span.parent
                end = span.end_time
                start = span.start_time
                if context is None or end is None or start is None:
                    self._failures["unfinished_span"] += 1
                    continue
                is_server = span.kind is _SERVER
                points = add(
                    _attributes_of(span),
                    is_server,
                    context.trace_id,
                    context.span_id,
                    None if parent is None else parent.span_id,
                    start,
                    end,
                    span.status.status_code is _ERROR,
                    self._service(span) if is_server else "",
                )
                for point in points:
                    try:
                        lines.append(encode_point(point))
                    except ValueError as error:
                        self._failures[getattr(error, "reason", "invalid_point")] += 1
        return lines

    def _service(self, span: ReadableSpan) -> str:
        resource = span.resource
        cached = self._services.get(id(resource))
        if cached is not None and cached[0] is resource:
            return cached[1]
        name = str(resource.attributes.get(SERVICE_NAME) or _UNKNOWN_SERVICE)
        self._services[id(resource)] = (resource, name)
        return name

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        if self._writer is None:
            return True
        return self._writer.force_flush(timeout_millis / 1000)

    def shutdown(self) -> None:
        if self._shutdown:
            return
        self._shutdown = True
        if self._writer is not None:
            self._writer.shutdown(self.settings.timeout * 3)
