"""Span → point mapping: golden cases in both HTTP semantic conventions, merging, edge cases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from otel_luna._exporter import LunaSpanExporter
from otel_luna.encoding._lineprotocol import LineProtocolEncoder
from otel_luna.mapping._records import SpanRecord
from otel_luna.mapping._requests import RequestMapper
from otel_luna.outcomes import Reason
from otel_luna.testing import InMemorySink, in_memory_exporter

GOLDEN = json.loads((Path(__file__).parent.parent / "golden" / "spans.json").read_text())
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


#: An end time in 2100: span times are the sender's to choose.
YEAR_2100 = 4_102_444_800 * 10**9


def child(span_id: int, parent: int, attributes: dict[str, Any], end_ns: int = START) -> SpanRecord:
    """An ended INTERNAL span below ``parent``."""
    return SpanRecord(attributes, False, TRACE_ID, span_id, parent, end_ns, end_ns, False, "svc")


def test_pending_child_data_expires_by_arrival_not_span_time() -> None:
    """Child data whose SERVER ancestor never comes is dropped a TTL after it *arrived*
    (counted), whatever span times it carries: an end time in 2100 does not keep it, and
    children whose span times lie an hour apart but that arrive together do not expire."""
    mapper = RequestMapper(pending_ttl_ns=1000)
    mapper.arrived_ns = 10_000
    mapper.add(child(2, 100, {"luna.tag.x": "1"}, end_ns=YEAR_2100))
    mapper.add(child(3, 101, {"luna.tag.x": "1"}, end_ns=START))
    mapper.add(child(4, 102, {"luna.tag.x": "1"}, end_ns=START + 3600 * 10**9))
    assert (mapper.pending, mapper.counts["expired_luna_attributes"]) == (3, 0)
    mapper.arrived_ns = 10_000 + 1001
    mapper.add(child(5, 103, {"luna.tag.x": "1"}, end_ns=START))
    assert (mapper.pending, mapper.counts["expired_luna_attributes"]) == (1, 3)


def test_pending_child_data_is_bounded_in_entries_and_bytes() -> None:
    """Waiting child data take at most ``pending_limit`` entries and ``pending_bytes`` bytes:
    the oldest go first, counted; 4 MB values per request cannot pile up."""
    mapper = RequestMapper(pending_limit=10, pending_bytes=10 * 1024 * 1024)
    for span_id in range(2, 30):
        mapper.add(child(span_id, span_id + 10_000, {"luna.field.image": "x" * 4_000_000}))
        assert mapper.pending_bytes <= 10 * 1024 * 1024
    assert mapper.pending == 2
    assert mapper.counts["evicted_luna_attributes"] == 26
    for span_id in range(30, 60):
        mapper.add(child(span_id, span_id + 10_000, {"luna.tag.x": "1"}))
    assert mapper.pending == 10
    assert mapper.counts["evicted_luna_attributes"] == 26 + 22
    # the newest waiting data still reach their request
    (point,) = mapper.add(
        SpanRecord({"http.route": "/r"}, True, TRACE_ID, 10_059, None, START, START + 1, False, "s")
    )
    assert dict(point.tags)["x"] == "1"


def test_fields_merged_into_one_point_are_capped() -> None:
    """One parent collecting 8,000 children's fields writes at most ``user_key_limit`` user
    tags, fields and timings; the rest are counted, and a name it has keeps being updated."""
    mapper = RequestMapper(user_key_limit=256)
    for span_id in range(2, 8002):
        mapper.add(
            child(span_id, 1, {f"luna.field.f{span_id}": "y" * 10, "luna.time.stage_time": 0.5})
        )
    server = {f"luna.field.own{n}_count": n for n in range(300)}
    (point,) = mapper.add(SpanRecord(server, True, TRACE_ID, 1, None, START, START + 1, False, "s"))
    assert len(point.fields) == 256 + 2  # + request_id and execution_time
    assert point.fields["stage_time"] == 0.5 * 8000
    assert mapper.counts["too_many_luna_attributes"] == 8000 - 255 + 300


def test_route_budgets_are_bounded_in_all() -> None:
    """The per-service route budgets remember at most ``route_budget_limit`` routes, all
    services together: 300 services of distinct paths keep 100, the least recently used
    services' forgotten first (counted); a service in use keeps its budget."""
    mapper = RequestMapper(route_limit=2, route_budget_limit=100)

    def request(span_id: int, service: str, path: str) -> str:
        attributes = {"http.request.method": "GET", "url.path": path}
        record = SpanRecord(
            attributes, True, TRACE_ID, span_id, None, START, START + 1, False, service
        )
        (point,) = mapper.add(record)
        return dict(point.tags)["route"]

    assert request(1, "busy", "/a") == "GET:/a"
    assert request(2, "busy", "/b") == "GET:/b"
    for n in range(300):
        request(10 + n, f"service-{n}", f"/p{n}")
        assert request(1000 + n, "busy", "/c") == "{overflow}"  # busy keeps its budget
    assert mapper.routes_held == 100
    assert mapper.counts["routes_forgotten"] == 300 + 2 - 100


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


def test_other_methods_on_one_route_keep_their_own_names() -> None:
    """PROPFIND, LOCK and MKCOL on one route and status, each reported as _OTHER with its
    original spelling, are three routes — not the first one's name three times (the tag-set
    cache is keyed on http.request.method_original too)."""
    mapper = RequestMapper()
    routes = []
    for span_id, original in enumerate(["PROPFIND", "LOCK", "MKCOL", "PROPFIND"], start=1):
        attributes = {
            "http.request.method": "_OTHER",
            "http.request.method_original": original,
            "http.route": "/dav/{path}",
            "http.response.status_code": 207,
        }
        record = SpanRecord(attributes, True, TRACE_ID, span_id, None, START, START + 1, False, "s")
        (point,) = mapper.add(record)
        routes.append(dict(point.tags)["route"])
    dav = "/dav/{path}"
    assert routes == [f"PROPFIND:{dav}", f"LOCK:{dav}", f"MKCOL:{dav}", f"PROPFIND:{dav}"]


#: Attribute values as senders put them, the odd ones included (types that compare equal
#: across types, empty strings, numbers where strings belong).
_METHODS = st.sampled_from([None, "GET", "POST", "_OTHER", "PROPFIND", "", 1, True, 1.0])
_ORIGINALS = st.sampled_from([None, "PROPFIND", "LOCK", "GET", "POST", "get"])
_ROUTES = st.sampled_from(
    [None, "", "/dav/{path}", "/items/<int:item_id>", "items/<id>", 1, True, 1.0]
)
_STATUSES = st.sampled_from([None, 200, 207, 404, 500, "200", "404", True, 200.0, 1, 1.0, "x"])
_PATHS = st.sampled_from([None, "/a", "/b?q=1", "/dav/x"])
_URLS = st.sampled_from([None, "/api/v1/users", "http://h:1/p/q?x=1", "//h/r"])


_VALUES = {
    "http.request.method": _METHODS,
    "http.method": _METHODS,
    "http.request.method_original": _ORIGINALS,
    "http.route": _ROUTES,
    "http.response.status_code": _STATUSES,
    "http.status_code": _STATUSES,
    "url.path": _PATHS,
    "http.url": _URLS,
    "luna.tag.kind": st.sampled_from([None, "face", "body"]),
    # not attributes: the span's error status and its service
    "status_error": st.booleans(),
    "service": st.sampled_from(["s1", "s2"]),
}


@st.composite
def _server_spans(draw: st.DrawFn) -> list[tuple[dict[str, Any], bool, str]]:
    """SERVER spans that differ from one another in a few attributes each: neighbours that a
    cache keyed on too little would confuse."""
    base = {key: draw(values) for key, values in _VALUES.items()}
    spans = []
    for _ in range(draw(st.integers(min_value=2, max_value=20))):
        attributes = dict(base)
        for key in draw(st.lists(st.sampled_from(sorted(_VALUES)), max_size=2)):
            attributes[key] = draw(_VALUES[key])
        status_error, service = attributes.pop("status_error"), attributes.pop("service")
        present = {key: value for key, value in attributes.items() if value is not None}
        spans.append((present, status_error, service))
    return spans


@settings(max_examples=1000, deadline=None)
@given(_server_spans(), st.integers(min_value=1, max_value=3))
@pytest.mark.slow  # seconds of CPU
def test_cached_and_uncached_mapping_give_the_same_points(
    spans: list[tuple[dict[str, Any], bool, str]], route_limit: int
) -> None:
    """The tag-set cache changes nothing: a mapper that remembers tag sets and one that makes
    each anew write the same points for any sequence of SERVER spans, and count the same."""
    cached = RequestMapper(route_limit=route_limit)
    uncached = RequestMapper(route_limit=route_limit, tagset_cache_limit=0)
    for span_id, (attributes, status_error, service) in enumerate(spans, start=1):
        record = SpanRecord(
            attributes, True, TRACE_ID, span_id, None, START, START + 1, status_error, service
        )
        assert cached.add(record) == uncached.add(record), attributes
    assert cached.counts == uncached.counts


@pytest.mark.parametrize(
    ("url", "route"),
    [
        ("/api/v1/users", "GET:/api/v1/users"),  # the Collector's pdata example
        ("/api/v1/users?page=2#top", "GET:/api/v1/users"),
        ("http://127.0.0.1:8080/api/v1/users?page=2", "GET:/api/v1/users"),
        ("https://example.com", "GET:/"),
        ("//example.com/a/b", "GET:/a/b"),
    ],
)
def test_path_only_http_url_is_read_as_a_path(url: str, route: str) -> None:
    """An http.url that holds a path (no scheme, no host) gives that path as the route, not
    ``/`` for every request."""
    lines = map_lines({"http.method": "GET", "http.url": url, "http.status_code": 200})
    assert lines[0].startswith(f"requests,route={route},")


@pytest.mark.parametrize(
    ("template", "luna"),
    [
        ("/items/<int:item_id>", "/items/{item_id}"),  # Flask/Werkzeug converter
        ("/items/<item_id>", "/items/{item_id}"),
        ("/codes/<string(length=2):code>/<path:rest>", "/codes/{code}/{rest}"),
        ("items/<int:item_id>", "/items/{item_id}"),  # Django path()
        ("^items/(?P<item_id>[0-9]+)/$", "/items/{item_id}/"),  # Django re_path()
        (r"^api/v(?P<v>\d)/files/(?P<name>[^/]+)\.json\Z", "/api/v{v}/files/{name}.json"),
        ("/files/{file_path:path}", "/files/{file_path}"),  # Starlette/FastAPI convertor
        (r"/items/{id:\d{3}}/{name}", "/items/{id}/{name}"),  # aiohttp regex
        ("/items/{item_id}", "/items/{item_id}"),
        ("/", "/"),
    ],
)
def test_route_templates_are_written_in_luna_form(template: str, luna: str) -> None:
    """Every framework's route template is written in LUNA's ``{name}`` form: one service
    ported between frameworks keeps its series."""
    lines = map_lines({"http.method": "GET", "http.route": template, "http.status_code": 200})
    assert lines[0].startswith(f"requests,route=GET:{luna},")


def test_exporter_expires_waiting_child_data_by_its_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """In the exporter (and serve: both go through the ingest), waiting child data expire by
    the monotonic time their batch arrived, not by the end time in 2100 the span says."""
    from otel_luna.ingest import _ingest

    now = [10**12]
    monkeypatch.setattr(_ingest.time, "monotonic_ns", lambda: now[0])
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("t")
    for _ in range(2):
        with tracer.start_as_current_span("request", kind=SpanKind.SERVER):
            tracer.start_span("stage", attributes={"luna.tag.kind": "face"}).end(YEAR_2100)
    children = [span for span in memory.get_finished_spans() if span.name == "stage"]
    exporter, _ = in_memory_exporter()
    exporter.export(children[:1])  # its SERVER span never comes
    now[0] += 301 * 10**9
    exporter.export(children[1:])
    assert exporter.counts["expired_luna_attributes"] == 1
    exporter.shutdown()


def test_a_mapper_hands_over_what_it_counted_and_counts_anew() -> None:
    """``take_counts`` returns what the mapper counted since the last call (no counter is
    handed to it), and the next call starts from none."""
    mapper = RequestMapper()
    attributes = {"http.request.method": "GET", "http.route": "/r", "luna.tag.t": "a\nb"}
    record = SpanRecord(attributes, True, TRACE_ID, 1, None, START, START + 1, False, "s")
    mapper.add(record)
    mapper.add(record._replace(span_id=2))
    newline = Reason.of("attribute_newline_in_tag_value")
    assert mapper.take_counts() == {Reason.SERVER_SPANS: 2, newline: 2}
    assert mapper.take_counts() == {}
    mapper.add(record._replace(span_id=3))
    assert mapper.take_counts() == {Reason.SERVER_SPANS: 1, newline: 1}
