"""One mapping: the same spans and metrics give identical lines in-process and through OTLP."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common._internal.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common._internal.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
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

from otel_luna import _attributes as attr
from otel_luna._exporter import LunaMetricExporter, LunaSpanExporter
from otel_luna.ingest import _sdk as sdk
from otel_luna.mapping._records import SpanRecord
from otel_luna.mapping._requests import RequestMapper
from otel_luna.mapping._watchdog import WatchdogMapper
from otel_luna.serve import ServeSettings
from otel_luna.serve import _otlp as otlp
from otel_luna.serve._receiver import Backpressure, Receiver
from otel_luna.testing import InMemorySink
from tests.mapping.test_mapping import GOLDEN, new_semconv, old_semconv


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


def memory_settings() -> ServeSettings:
    return ServeSettings.load({}, spool="memory", flush_interval=3600)


def realistic_spans() -> list[Any]:
    """What instrumentations send beside the golden cases: their own attributes (of every type
    the SDK takes) around the luna.* ones in both conventions and in both at once, an empty
    http.route, HTTP attributes on spans that are no SERVER span, and watchdog events."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "luna-api"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("aiohttp-like")
    host = {"net.host.name": "luna-api.example", "http.host": "luna-api.example"}
    theirs = {
        "http.scheme": "http",
        **host,
        "net.host.port": 5000,
        "server.port": 5000,
        "http.user_agent": "python-requests/2.31",
        "http.flavor": "1.1",
        "http.server_name": "luna-api.example:5000",
        "custom.flag": True,
        "custom.ratio": 0.5,
        "custom.list": ["a", "b"],
        "custom.counts": [1, 2],
    }
    luna = {
        "luna.tag.handler_id": "3f1c",
        "luna.time.load_images_for_processing_time": 0.01,
        "luna.time.event_storage_policy_time": 0.02,
    }
    for convention in (old_semconv, new_semconv, "dup"):
        for http in (
            {
                "method": "POST",
                "route": "/6/handlers/{h}/events",
                "path": "/6/handlers/3f1c/events",
                "query": "city=msk",
                "status": 201,
            },
            {"method": "GET", "route": "", "path": "/6/images/1", "status": 200},
            {"method": "GET", "path": "/nowhere", "status": 404},
            {"method": "PATCH", "route": "/6/lists", "path": "/6/lists", "status": 500},
        ):
            if convention == "dup":
                attributes = {**old_semconv(http), **new_semconv(http)}
            else:
                attributes = convention(http)
            with tracer.start_as_current_span(
                "request", kind=SpanKind.SERVER, attributes={**attributes, **theirs}
            ) as span:
                with tracer.start_as_current_span(
                    "db", kind=SpanKind.CLIENT, attributes={**attributes, "db.system": "pg"}
                ):
                    pass
                span.set_attributes(luna)
                if http["status"] >= 500:
                    span.set_status(Status(StatusCode.ERROR))
    with tracer.start_as_current_span(
        "weird",
        kind=SpanKind.SERVER,
        attributes={
            "http.request.method": "_OTHER",
            "http.request.method_original": "PURGE",
            "url.full": "http://h/a/b?c",
            "http.response.status_code": 200,
            **theirs,
        },
    ):
        pass
    for event in (
        {
            "watchdog.event": "new_item",
            "watchdog.consumer_name": "c",
            "watchdog.watchdog_id": "w",
            "watchdog.type": "image/jpeg",
        },
        {
            "watchdog.event": "worker_works",
            "watchdog.is_error": False,
            "watchdog.is_match": True,
            "custom.flag": True,
        },
    ):
        tracer.start_span("watchdog." + str(event["watchdog.event"]), attributes=event).end()
    provider.shutdown()
    return list(memory.get_finished_spans())


def read_by_the_mapping(key: str, record: SpanRecord) -> bool:
    """Whether a mapper may read attribute ``key`` of ``record``: the receiver keeps exactly
    these (``_attributes.py``: MAPPED_PREFIXES, SERVER_SPAN_KEYS, ROUTE_FALLBACK_KEYS)."""
    if key.startswith(attr.MAPPED_PREFIXES):
        return True
    if not record.is_server:
        return False
    if key in attr.SERVER_SPAN_KEYS:
        return True
    return key in attr.ROUTE_FALLBACK_KEYS and not record.attributes.get(attr.HTTP_ROUTE)


def records_both_ways(spans: list[Any]) -> tuple[list[SpanRecord], list[SpanRecord]]:
    """(SDK adapter's records, OTLP adapter's records of the same spans sent over the wire),
    in span id order."""
    request = ExportTraceServiceRequest.FromString(encode_spans(spans).SerializeToString())
    from_sdk = [r for r in sdk.span_records(spans, sdk.ServiceNames()) if type(r) is SpanRecord]
    from_otlp = list(otlp.span_records(request))
    return sorted(from_sdk, key=lambda r: r.span_id), sorted(from_otlp, key=lambda r: r.span_id)


def lines_both_ways(spans: list[Any]) -> tuple[list[str], list[str]]:
    """(lines of LunaSpanExporter, lines of the receiver) for the same spans."""
    direct_sink, otlp_sink = InMemorySink(), InMemorySink()
    exporter = LunaSpanExporter(memory_settings(), sink=direct_sink)
    exporter.export(spans)
    exporter.shutdown()
    receiver = Receiver(memory_settings(), sink=otlp_sink)
    request = ExportTraceServiceRequest.FromString(encode_spans(spans).SerializeToString())
    assert receiver.accept_traces(request)[:2] == (0, "")
    receiver.shutdown()
    return direct_sink.lines, otlp_sink.lines


def test_spans_in_process_and_over_otlp_give_identical_lines() -> None:
    """LunaSpanExporter and the receiver map the same spans to the same lines."""
    direct_lines, otlp_lines = lines_both_ways(finished_spans())
    assert len(direct_lines) == 2 * sum(len(c["expected"]) for c in GOLDEN) + 3
    assert otlp_lines == direct_lines
    assert any("from_child=yes" in line and "match_policy_time=0.25" in line for line in otlp_lines)
    direct_lines, otlp_lines = lines_both_ways(realistic_spans())
    assert len(direct_lines) == 19  # 12 requests, 6 of them failed (404, 500); PURGE
    assert otlp_lines == direct_lines


def test_otlp_records_are_the_sdk_records_of_what_the_mapping_reads() -> None:
    """Span for span, the OTLP adapter's record is the SDK adapter's with the attributes the
    mapping reads: the same values and types (arrays as tuples), every other field equal."""
    from_sdk, from_otlp = records_both_ways(finished_spans() + realistic_spans())
    assert len(from_otlp) == len(from_sdk) > 40
    for sdk_record, otlp_record in zip(from_sdk, from_otlp, strict=True):
        kept = {
            key: value
            for key, value in sdk_record.attributes.items()
            if read_by_the_mapping(key, sdk_record)
        }
        assert otlp_record == sdk_record._replace(attributes=kept)
        assert {k: type(v) for k, v in otlp_record.attributes.items()} == {
            k: type(v) for k, v in kept.items()
        }


def test_attributes_the_mapping_does_not_read_never_reach_it() -> None:
    """The receiver hands the mapper none of the instrumentation's own attributes; the path and
    URL only of a SERVER span without a route."""
    receiver = Receiver(memory_settings(), sink=InMemorySink())
    mapper = receiver.ingest._span_mapper
    seen: list[SpanRecord] = []
    add = mapper.add

    def spy(record: SpanRecord) -> Any:
        seen.append(record)
        return add(record)

    mapper.add = spy  # type: ignore[method-assign]
    spans = realistic_spans()
    receiver.accept_traces(encode_spans(spans))
    receiver.shutdown()
    # the early skip: the spans it reaches are the SERVER spans and those with luna.* keys
    # (tests/ingest/test_early_skip.py); none waits for a child's data here
    wanted = [
        span
        for span in spans
        if span.kind is SpanKind.SERVER or any(key.startswith("luna.") for key in span.attributes)
    ]
    assert len(seen) == len(wanted) > 0
    for record in seen:
        assert all(read_by_the_mapping(key, record) for key in record.attributes), record
        assert not {"http.user_agent", "net.host.port", "custom.flag", "custom.list"} & set(
            record.attributes
        )
    routed = [r for r in seen if r.is_server and r.attributes.get("http.route")]
    unrouted = [r for r in seen if r.is_server and not r.attributes.get("http.route")]
    assert routed and unrouted
    assert not any({"http.target", "url.path", "http.url"} & set(r.attributes) for r in routed)
    assert all({"http.target", "url.path", "url.full"} & set(r.attributes) for r in unrouted)
    others = [r for r in seen if not r.is_server]  # licence checks, watchdog events, children
    assert all(r.attributes for r in others)  # the rest reach no mapper at all


class _Reads(dict):  # type: ignore[type-arg]
    """A dict that notes every key read from it."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.read: set[str] = set()

    def get(self, key: Any, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: Any) -> Any:
        self.read.add(key)
        return super().__getitem__(key)


def test_the_mappers_read_only_what_the_receiver_keeps() -> None:
    """Every attribute RequestMapper and WatchdogMapper read of a span is one the OTLP adapter
    keeps (``_attributes.py``): a mapper reading another must add it there."""
    from_sdk, _ = records_both_ways(finished_spans() + realistic_spans())
    for mapper in (RequestMapper(), WatchdogMapper()):
        for record in from_sdk:
            attributes = _Reads(record.attributes)
            mapper.add(record._replace(attributes=attributes))
            unexpected = {k for k in attributes.read if not read_by_the_mapping(k, record)}
            assert not unexpected, (type(mapper).__name__, unexpected, dict(record.attributes))


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
        ServeSettings.load({}, spool="memory", spool_max_bytes=100, flush_interval=3600), sink=sink
    )
    request = encode_spans(finished_spans())
    receiver.accept_traces(request)  # fills it beyond the high-water mark
    with pytest.raises(Backpressure):
        receiver.accept_traces(request)
    assert receiver.counts()["requests_refused_spool_full"] == 1
    receiver.ingest.force_flush(10)
    receiver.accept_traces(request)  # room again once delivered
    receiver.shutdown()


def test_the_key_classes_remembered_are_bounded() -> None:
    """The receiver remembers what it makes of attribute keys, but never more than a bounded
    number of short ones, whatever keys clients send; the records are right all the same."""
    request = ExportTraceServiceRequest()
    spans = request.resource_spans.add().scope_spans.add().spans
    long_key = "luna.tag." + "k" * 10_000
    for i in range(otlp._CLASS_CACHE_LIMIT + 10):
        span = spans.add(
            trace_id=b"\x01" * 16, span_id=(i + 1).to_bytes(8, "big"), kind=Span.SPAN_KIND_SERVER
        )
        span.attributes.add(key=f"custom.{i}", value=AnyValue(string_value="x"))
        span.attributes.add(key=f"luna.field.f{i}", value=AnyValue(int_value=i))
        span.attributes.add(key=long_key, value=AnyValue(string_value="v"))
    records = list(otlp.span_records(request))
    assert [r.attributes for r in records] == [
        {f"luna.field.f{i}": i, long_key: "v"} for i in range(len(records))
    ]
    assert 0 < len(otlp._classes) <= otlp._CLASS_CACHE_LIMIT
    assert long_key not in otlp._classes
