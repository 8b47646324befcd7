"""One mapping: the same spans and metrics give identical lines in-process and through OTLP."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common._internal.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common._internal.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Metric,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind, Status, StatusCode
from test_mapping import GOLDEN, new_semconv, old_semconv

from otel_luna.exporter import LunaMetricExporter, LunaSpanExporter
from otel_luna.ingest import otlp
from otel_luna.receiver import Backpressure, Receiver
from otel_luna.settings import Settings
from otel_luna.testing import InMemorySink


def finished_spans() -> list[Any]:
    """Every golden case as a SERVER span (both conventions), with children and a licence check."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "luna-handlers"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("golden")
    for case in GOLDEN:
        for convention in (old_semconv, new_semconv):
            attributes = {**convention(case["http"]), **case["luna"]}
            with (
                tracer.start_as_current_span("r", kind=SpanKind.SERVER, attributes=attributes),
                tracer.start_as_current_span("child") as child,
            ):
                child.set_attribute("luna.time.match_policy_time", 0.25)
                child.set_attribute("luna.tag.from_child", "yes")
    with tracer.start_as_current_span("boom", kind=SpanKind.SERVER) as span:
        span.set_attribute("http.method", "GET")
        span.set_attribute("http.route", "/x")
        span.set_status(Status(StatusCode.ERROR))
    with tracer.start_as_current_span(
        "luna.license_check",
        attributes={
            "luna.license.status": "warning",
            "luna.license.liveness_balance": 5,
            "luna.license.warnings": ["low"],
        },
    ):
        pass
    provider.shutdown()
    return list(memory.get_finished_spans())


def memory_settings() -> Settings:
    return Settings.load({}, spool="memory", flush_interval=3600)


def test_spans_in_process_and_over_otlp_give_identical_lines() -> None:
    """LunaSpanExporter and the receiver map the same spans to the same lines."""
    spans = finished_spans()
    direct_sink, otlp_sink = InMemorySink(), InMemorySink()
    exporter = LunaSpanExporter(memory_settings(), sink=direct_sink)
    exporter.export(spans)
    exporter.shutdown()
    receiver = Receiver(memory_settings(), sink=otlp_sink)
    request = ExportTraceServiceRequest.FromString(encode_spans(spans).SerializeToString())
    assert receiver.accept_traces(request)[:2] == (0, "")
    receiver.shutdown()
    assert len(direct_sink.lines) == 2 * sum(len(c["expected"]) for c in GOLDEN) + 3
    assert otlp_sink.lines == direct_sink.lines
    assert any(
        "from_child=yes" in line and "match_policy_time=0.25" in line for line in otlp_sink.lines
    )


def test_otlp_json_gives_the_same_lines() -> None:
    """OTLP/JSON (hex trace ids) decodes to the same request as protobuf."""
    spans = finished_spans()
    request = encode_spans(spans)
    document = json.loads(json_format.MessageToJson(request))
    for resource in document["resourceSpans"]:
        for scope in resource["scopeSpans"]:
            for span in scope["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:  # protobuf JSON writes base64; OTLP/JSON wants hex
                        import base64

                        span[key] = base64.b64decode(span[key]).hex()
    parsed = ExportTraceServiceRequest()
    otlp.parse_json(json.dumps(document).encode(), parsed)
    assert parsed == request


def test_usage_metrics_in_process_and_over_otlp() -> None:
    """Delta usage sums give the same usages_statistic lines both ways."""
    points = [
        NumberDataPoint({"luna.estimator": name}, 101, 201, value, [])
        for name, value in (("face_detector", 3), ("liveness_estimator", 2))
    ]
    data = MetricsData(
        [
            ResourceMetrics(
                Resource.create({"service.name": "luna-handlers"}),
                [
                    ScopeMetrics(
                        InstrumentationScope("otel_luna"),
                        [
                            Metric(
                                "luna.usages",
                                None,
                                "{estimation}",
                                Sum(points, AggregationTemporality.DELTA, True),
                            ),
                            Metric(
                                "http.server.duration",
                                None,
                                "ms",
                                Sum(points, AggregationTemporality.DELTA, True),
                            ),
                        ],
                        "",
                    )
                ],
                "",
            )
        ]
    )
    direct_sink, otlp_sink = InMemorySink(), InMemorySink()
    exporter = LunaMetricExporter(memory_settings(), sink=direct_sink)
    exporter.export(data)
    exporter.shutdown()
    receiver = Receiver(memory_settings(), sink=otlp_sink)
    receiver.accept_metrics(encode_metrics(data))
    receiver.shutdown()
    assert direct_sink.lines == [
        "usages_statistic,service=luna-handlers face_detector_usages=3i,"
        "liveness_estimator_usages=2i 201"
    ]
    assert otlp_sink.lines == direct_sink.lines


def test_rejected_points_are_reported_as_partial_success() -> None:
    """A span whose point cannot be written is counted in the partial success."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span(
        "ok", kind=SpanKind.SERVER, attributes={"http.method": "GET", "http.route": "/a"}
    ):
        pass
    with tracer.start_as_current_span(
        "bad",
        kind=SpanKind.SERVER,
        attributes={"http.method": "GET", "http.route": "/b\nreak", "luna.tag.bad": "x\ny"},
    ):
        pass
    sink = InMemorySink()
    receiver = Receiver(memory_settings(), sink=sink)
    rejected, message, _ = receiver.accept_traces(encode_spans(memory.get_finished_spans()))
    receiver.shutdown()
    # The route cannot be written: the point is rejected. A bad user tag alone would only
    # be dropped (and named in the message): the point is written without it.
    assert rejected == 1 and "1 points rejected (newline_in_tag_value=1)" in message
    assert "attribute_newline_in_tag_value=1" in message
    assert len(sink.lines) == 1


def test_full_spool_refuses_with_backpressure() -> None:
    """Near a full spool the receiver refuses requests instead of dropping data."""
    sink = InMemorySink()
    receiver = Receiver(
        Settings.load({}, spool="memory", spool_max_bytes=100, flush_interval=3600), sink=sink
    )
    request = encode_spans(finished_spans())
    receiver.accept_traces(request)  # fills it beyond the high-water mark
    with pytest.raises(Backpressure):
        receiver.accept_traces(request)
    assert receiver.counts()["requests_refused_spool_full"] == 1
    receiver.ingest.force_flush(10)
    receiver.accept_traces(request)  # room again once delivered
    receiver.shutdown()
