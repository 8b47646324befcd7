"""Span → point mapping: golden cases in both HTTP semantic conventions, merging, edge cases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from otel_luna.encoding.lineprotocol import LineProtocolEncoder
from otel_luna.exporter import LunaSpanExporter
from otel_luna.mapping.records import SpanRecord
from otel_luna.mapping.requests import RequestMapper
from otel_luna.testing import InMemorySink

GOLDEN = json.loads((Path(__file__).parent / "golden" / "spans.json").read_text())
START = 1_700_000_000_000_000_000
DURATION = 250_000_000
TRACE_ID = 0xABCD


def old_semconv(http: dict[str, Any]) -> dict[str, Any]:
    """Attributes as contrib instrumentations write them by default."""
    target = http["path"] + (f"?{http['query']}" if "query" in http else "")
    attributes = {
        "http.method": http["method"],
        "http.scheme": "http",
        "http.host": "127.0.0.1:8080",
        "http.target": target,
        "http.url": f"http://127.0.0.1:8080{target}",
        "net.peer.ip": "127.0.0.1",
        "http.status_code": http["status"],
    }
    if "route" in http:
        attributes["http.route"] = http["route"]
    return attributes


def new_semconv(http: dict[str, Any]) -> dict[str, Any]:
    """Attributes under OTEL_SEMCONV_STABILITY_OPT_IN=http."""
    attributes = {
        "http.request.method": http["method"],
        "url.scheme": "http",
        "server.address": "127.0.0.1",
        "url.path": http["path"],
        "client.address": "127.0.0.1",
        "http.response.status_code": http["status"],
    }
    if "query" in http:
        attributes["url.query"] = http["query"]
    if "route" in http:
        attributes["http.route"] = http["route"]
    return attributes


def map_lines(attributes: dict[str, Any], status_error: bool = False) -> list[str]:
    """Map one SERVER span through the mapper and the encoder, as the exporter does."""
    points = RequestMapper().add(
        SpanRecord(
            attributes,
            True,
            TRACE_ID,
            1,
            None,
            START,
            START + DURATION,
            status_error,
            "luna-handlers",
        )
    )
    return LineProtocolEncoder().encode(points)


@pytest.mark.parametrize("case", GOLDEN, ids=[case["name"] for case in GOLDEN])
@pytest.mark.parametrize("convention", [old_semconv, new_semconv, "dup"])
def test_golden(case: dict[str, Any], convention: Any) -> None:
    """Old, new and duplicated HTTP semantic conventions give exactly the golden lines."""
    if convention == "dup":
        attributes = {**old_semconv(case["http"]), **new_semconv(case["http"])}
    else:
        attributes = convention(case["http"])
    assert map_lines({**attributes, **case["luna"]}) == case["expected"]


def test_span_status_error_marks_failure() -> None:
    """A span with status ERROR and a 200 response still gives an errors point."""
    lines = map_lines(
        new_semconv({"method": "GET", "route": "/x", "path": "/x", "status": 200}),
        status_error=True,
    )
    assert [line.split(",")[0] for line in lines] == ["requests", "errors"]
    assert ",error_code=0," in lines[1]


def test_other_method_uses_original() -> None:
    """An HTTP method reported as _OTHER is written with its original spelling."""
    attributes = {
        "http.request.method": "_OTHER",
        "http.request.method_original": "PURGE",
        "http.route": "/cache",
        "http.response.status_code": 204,
    }
    assert map_lines(attributes)[0].startswith("requests,route=PURGE:/cache,")


def test_base_tags_win_over_additional_tags() -> None:
    """An additional tag cannot overwrite route, service or status_code."""
    attributes = {
        **new_semconv({"method": "GET", "route": "/v", "path": "/v", "status": 200}),
        "luna.tag.route": "spoofed",
        "luna.tag.service": "spoofed",
    }
    assert "spoofed" not in map_lines(attributes)[0]


def test_non_server_spans_give_nothing() -> None:
    """CLIENT, INTERNAL, PRODUCER and CONSUMER spans map to no point."""
    mapper = RequestMapper()
    attributes = old_semconv({"method": "GET", "route": "/x", "path": "/x", "status": 500})
    for span_id in range(1, 5):
        assert (
            mapper.add(
                SpanRecord(attributes, False, TRACE_ID, span_id, None, START, START + 1, True, "s")
            )
            == []
        )


def test_unsupported_luna_values_are_counted() -> None:
    """A luna attribute of an unusable type is skipped and counted, the point still written."""
    mapper = RequestMapper()
    attributes = {
        "http.method": "GET",
        "http.route": "/x",
        "http.status_code": 200,
        "luna.tag.list": ("a", "b"),
        "luna.time.stage_time": "slow",
        "luna.bogus": 1,
    }
    points = mapper.add(
        SpanRecord(attributes, True, TRACE_ID, 1, None, START, START + 1, False, "s")
    )
    assert len(points) == 1
    assert "list" not in dict(points[0].tags) and "stage_time" not in points[0].fields
    assert mapper.counts["unsupported_attribute_type"] == 2
    assert mapper.counts["unknown_luna_attribute"] == 1


def test_children_merge_into_server_ancestor() -> None:
    """luna attributes of grandchildren reach the SERVER span; timings of one field add up."""
    mapper = RequestMapper()
    http = new_semconv({"method": "POST", "route": "/detector", "path": "/detector", "status": 200})
    # span ids: 1 server, 2 child, 3 and 4 grandchildren; children end first.
    assert (
        mapper.add(
            SpanRecord(
                {"luna.time.save_samples_time": 0.5},
                False,
                TRACE_ID,
                3,
                2,
                START,
                START + 5,
                False,
                "",
            )
        )
        == []
    )
    assert (
        mapper.add(
            SpanRecord(
                {"luna.time.save_samples_time": 0.25, "luna.tag.kind": "face"},
                False,
                TRACE_ID,
                4,
                2,
                START,
                START + 6,
                False,
                "",
            )
        )
        == []
    )
    assert (
        mapper.add(
            SpanRecord(
                {"luna.request_id": "r-1"}, False, TRACE_ID, 2, 1, START, START + 7, False, ""
            )
        )
        == []
    )
    assert mapper.pending == 1
    (point,) = mapper.add(SpanRecord(http, True, TRACE_ID, 1, None, START, START + 8, False, "svc"))
    assert point.fields["save_samples_time"] == 0.75
    assert point.fields["request_id"] == "r-1"
    assert dict(point.tags)["kind"] == "face"
    assert mapper.pending == 0


def test_pending_child_data_expires() -> None:
    """Child data whose SERVER ancestor never ends is dropped after the TTL and counted."""
    mapper = RequestMapper(pending_ttl_ns=1000, pending_limit=10)
    for span_id in range(2, 1100):
        mapper.add(
            SpanRecord(
                {"luna.tag.x": "1"},
                False,
                TRACE_ID,
                span_id,
                span_id + 10_000,
                START + span_id * 10,
                START + span_id * 10,
                False,
                "",
            )
        )
    assert mapper.pending <= 10
    assert mapper.counts["expired_luna_attributes"] >= 1088


def test_sdk_span_through_exporter_with_nested_helpers() -> None:
    """Helpers used in child spans of an SDK SERVER span land on the request's points."""
    import otel_luna

    sink = InMemorySink()
    exporter = LunaSpanExporter(sink=sink)
    provider = TracerProvider(resource=Resource.create({"service.name": "luna-handlers"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    http = old_semconv(
        {
            "method": "POST",
            "route": "/handlers/{handler_id}/events",
            "path": "/handlers/h1/events",
            "status": 200,
        }
    )
    with tracer.start_as_current_span("request", kind=SpanKind.SERVER, attributes=http) as span:
        otel_luna.add_tags(handler_id="h1")
        with (
            tracer.start_as_current_span("inner"),
            tracer.start_as_current_span("deeper"),
            otel_luna.monitor_time("face_storage_policy_time"),
        ):
            otel_luna.set_error(31001)
        span.set_status(Status(StatusCode.OK))
    assert exporter.force_flush(5000)
    lines = sink.lines
    assert len(lines) == 2
    assert lines[0].startswith("requests,handler_id=h1,route=POST:/handlers/{handler_id}/events,")
    assert "face_storage_policy_time=" in lines[0]
    assert lines[1].startswith("errors,error_code=31001,handler_id=h1,")
    assert "face_storage_policy_time" not in lines[1]
    provider.shutdown()


def test_helpers_outside_a_request_do_nothing() -> None:
    """The helpers are harmless no-ops with no recording span."""
    import otel_luna

    assert not trace.get_current_span().is_recording()
    otel_luna.add_tags(a="b")
    otel_luna.add_fields(a=1)
    otel_luna.set_request_id("x")
    otel_luna.set_error(1)
    with otel_luna.monitor_time("download_images_time"):
        pass


def test_in_memory_span_exporter_sees_helper_attributes() -> None:
    """The helpers set the documented attribute names, so other languages can do the same."""
    import otel_luna

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer("t").start_as_current_span("s", kind=SpanKind.SERVER):
        otel_luna.set_request_id("rid")
        otel_luna.set_error(11009)
        otel_luna.add_tags(handler_id="h")
        otel_luna.add_fields(count=3)
        with otel_luna.monitor_time("save_warps_time"):
            pass
    (span,) = memory.get_finished_spans()
    attributes = dict(span.attributes or {})
    assert attributes["luna.request_id"] == "rid"
    assert attributes["luna.error_code"] == 11009
    assert attributes["luna.tag.handler_id"] == "h"
    assert attributes["luna.field.count"] == 3
    assert isinstance(attributes["luna.time.save_warps_time"], float)
    provider.shutdown()


def test_unhandled_exception_without_status_is_a_500() -> None:
    """An HTTP span that ended in ERROR with no status recorded is written as status 500."""
    attributes = {"http.method": "POST", "http.route": "/detector"}
    lines = map_lines(attributes, status_error=True)
    assert lines[0].startswith(
        "requests,route=POST:/detector,service=luna-handlers,status_code=500 "
    )
    assert lines[1].startswith("errors,error_code=0,route=POST:/detector,")
    assert ",status_code=" not in map_lines(attributes)[0]  # no error, no status: none invented
