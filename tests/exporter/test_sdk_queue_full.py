"""Spans the SDK's BatchSpanProcessor drops in front of a luna exporter (its queue full) are
counted as ``sdk_queue_full``; the SDK's warning is still logged."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind

from otel_luna._exporter import LunaSpanExporter
from otel_luna.outcomes import Outcome, Reason
from otel_luna.selfmetrics import totals
from otel_luna.settings import Settings
from otel_luna.testing import InMemorySink
from tests.support.waiting import wait_until


class _Gate:
    """Holds the first export() until released: the processor's queue fills behind it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def wait(self) -> None:
        self.entered.set()
        assert self.release.wait(30)


class _HeldLunaExporter(LunaSpanExporter):
    def __init__(self, gate: _Gate, sink: InMemorySink) -> None:
        super().__init__(Settings.load({}, spool="memory"), sink=sink)
        self.gate = gate

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.gate.wait()
        return super().export(spans)


class _HeldOtherExporter(SpanExporter):
    def __init__(self, gate: _Gate) -> None:
        self.gate = gate
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.gate.wait()
        self.exported += len(spans)
        return SpanExportResult.SUCCESS


QUEUE = 2
DROPPED = 5


def _fill(exporter: SpanExporter, gate: _Gate) -> TracerProvider:
    """One span taken by the held export(), QUEUE waiting, DROPPED dropped by the SDK."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": "luna-handlers"}), shutdown_on_exit=False
    )
    provider.add_span_processor(
        BatchSpanProcessor(
            exporter, max_queue_size=QUEUE, max_export_batch_size=1, schedule_delay_millis=60_000
        )
    )
    tracer = provider.get_tracer("test")

    def request() -> None:
        span = tracer.start_span("GET /6/healthcheck", kind=SpanKind.SERVER)
        span.set_attribute("http.method", "GET")
        span.set_attribute("http.route", "/6/healthcheck")
        span.set_attribute("http.status_code", 200)
        span.end()

    request()
    wait_until(gate.entered.is_set, what="the first export() to start")
    for _ in range(QUEUE + DROPPED):
        request()
    return provider


@pytest.fixture
def sdk_warnings(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.WARNING, logger="opentelemetry.sdk._shared_internal"):
        yield caplog


def test_spans_dropped_by_the_sdk_queue_are_counted(
    sdk_warnings: pytest.LogCaptureFixture,
) -> None:
    """Every span the BatchSpanProcessor drops in front of a luna exporter is counted (not only
    the one warning per 20 s the SDK logs); the spans that got through are written."""
    gate, sink = _Gate(), InMemorySink()
    exporter = _HeldLunaExporter(gate, sink)
    provider = _fill(exporter, gate)
    gate.release.set()
    provider.force_flush()
    exporter.force_flush()
    assert exporter.counts[Reason.SDK_QUEUE_FULL] == DROPPED
    assert [line.split(",", 1)[0] for line in sink.lines] == ["requests"] * (1 + QUEUE)
    assert "Queue full, dropping Span." in sdk_warnings.text  # the SDK's line is still there
    assert Reason.SDK_QUEUE_FULL.outcome is Outcome.EVENT
    _, events = totals(("traces", reason, value) for reason, value in exporter.counts.items())
    assert events[("traces", Reason.SDK_QUEUE_FULL)] == DROPPED  # an event of the self-metrics
    provider.shutdown()


def test_drops_in_front_of_other_exporters_are_not_counted() -> None:
    """A full queue in front of another exporter of the process is not luna's to count."""
    luna = LunaSpanExporter(Settings.load({}, spool="memory"), sink=InMemorySink())
    gate = _Gate()
    other = _HeldOtherExporter(gate)
    provider = _fill(other, gate)
    gate.release.set()
    provider.force_flush()
    assert other.exported == 1 + QUEUE  # the SDK dropped the rest
    assert luna.counts[Reason.SDK_QUEUE_FULL] == 0
    provider.shutdown()
    luna.shutdown()
