"""Hostile values are per-point (or per-attribute) rejections, counted with a reason: never an
exception into the application or the receiver, never a good point taken down with a bad one.

The Hypothesis tests feed arbitrary attribute keys and values (lone surrogates, newlines,
reserved and shadowing names, huge integers, NaN) through the in-process exporter and through the
receiver behind ``otel-luna serve``: each input is written exactly, or counted with a reason.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from otel_luna._attributes import ROUTE_FALLBACK_KEYS, SERVER_SPAN_KEYS
from otel_luna._exporter import LunaSpanExporter
from otel_luna.encoding._lineprotocol import (
    MAX_TIME_NS,
    MIN_TIME_NS,
    InvalidPointError,
    LineProtocolEncoder,
)
from otel_luna.encoding._reader import parse_line
from otel_luna.mapping._records import SpanRecord
from otel_luna.mapping._requests import OVERFLOW_ROUTE, UNMATCHED_ROUTE, RequestMapper
from otel_luna.schema._keys import MAX_KEY_BYTES
from otel_luna.schema._point import Point
from otel_luna.schema.luna import field_type
from otel_luna.serve import ServeSettings
from otel_luna.serve._receiver import Receiver
from otel_luna.settings import Settings
from otel_luna.testing import InMemorySink
from tests.support.servers import InfluxDB1, ServerHTTPError

T0 = 1_700_000_000_123_456_789
BASE = {
    "http.request.method": "GET",
    "http.route": "/h",
    "http.response.status_code": 200,
}
#: Counter keys that report normal work, not a problem with the input.
NORMAL = frozenset(
    {"mapped", "spooled", "written", "server_spans", "requests_traces", "requests_metrics"}
)
SURROGATES = st.sampled_from(["\ud800", "\udc80", "\udfff"])
TEXT = st.text(st.one_of(st.characters(exclude_categories=()), SURROGATES), max_size=12)
NAMES = st.one_of(
    TEXT,
    st.sampled_from(
        [
            "time",
            "route",
            "service",
            "status_code",
            "error_code",
            "request_id",
            "execution_time",
            "a\nb",
            "x\\",
            "\tx",
            "ok_name",
            "a b,c=d",
            "\ud800",
        ]
    ),
)
VALUES = st.one_of(
    TEXT,
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.lists(TEXT, max_size=3),
)
PREFIXES = st.sampled_from(["luna.tag.", "luna.field.", "luna.time.", "luna.", "other."])


def problems(delta: Counter[str]) -> Counter[str]:
    return Counter({key: value for key, value in delta.items() if key not in NORMAL and value})


def check_written(prefix: str, name: str, value: Any, point: Point, delta: Counter[str]) -> None:
    """The attribute is in the point exactly as given, or a problem was counted."""
    if prefix == "luna.tag.":
        text = str(value).lower() if isinstance(value, bool) else str(value)
        written = dict(point.tags).get(name) == text
    elif prefix == "luna.field.":
        got = point.fields.get(name, object())
        written = got == value and type(got) is field_type(name)  # 3 → 3.0 for a float field
    elif prefix == "luna.time.":
        got = point.fields.get(name)
        number = type(value) in (int, float)
        written = number and isinstance(got, float) and got == float(value)
    else:
        return
    assert written or problems(delta), (prefix, name, value, point, delta)


# --------------------------------------------------------------------------- in-process


@pytest.fixture(scope="module")
def exporter_and_sink() -> Any:
    sink = InMemorySink()
    exporter = LunaSpanExporter(Settings.load({}, spool="memory", flush_interval=30), sink=sink)
    provider = TracerProvider(resource=Resource.create({"service.name": "hostile"}))
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    yield exporter, sink, provider.get_tracer("hostile"), memory
    exporter.shutdown()


_ids = itertools.count()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=PREFIXES, name=NAMES, value=VALUES)
def test_exporter_writes_exactly_or_counts(
    exporter_and_sink: Any, prefix: str, name: str, value: Any
) -> None:
    """export() never raises and returns SUCCESS; the request is written with the attribute
    exactly, or the attribute (or the point) is counted as rejected with a reason."""
    exporter, sink, tracer, memory = exporter_and_sink
    request_id = f"r{next(_ids)}"
    memory.clear()
    span = tracer.start_span("GET /h", kind=SpanKind.SERVER, start_time=T0)
    span.set_attributes({**BASE, "luna.request_id": request_id})
    span.set_attribute(prefix + name, value)  # the SDK itself drops types it does not take
    span.end(end_time=T0 + 1000)
    (finished,) = memory.get_finished_spans()
    given_value = (finished.attributes or {}).get(prefix + name)
    before, seen = Counter(exporter.counts), len(sink.lines)
    assert exporter.export([finished]).name == "SUCCESS"
    assert exporter.force_flush(10_000)
    delta = Counter(exporter.counts) - before
    lines = sink.lines[seen:]
    if not lines:
        assert problems(delta), delta
        return
    point = parse_line(lines[0])
    assert point.measurement == "requests"
    if prefix + name != "luna.request_id":
        assert point.fields["request_id"] == request_id
    if given_value is not None:
        check_written(prefix, name, given_value, point, delta)


# --------------------------------------------------------------------------- the receiver


def any_value(value: Any) -> AnyValue | None:
    """``value`` as OTLP; None where protobuf itself cannot carry it (a lone surrogate)."""
    try:
        if isinstance(value, bool):
            return AnyValue(bool_value=value)
        if isinstance(value, int):
            return AnyValue(int_value=value) if -(2**63) <= value < 2**63 else None
        if isinstance(value, float):
            return AnyValue(double_value=value)
        if isinstance(value, str):
            return AnyValue(string_value=value)
        items = [any_value(item) for item in value]
        if any(item is None for item in items):
            return None
        array = AnyValue()
        array.array_value.values.extend(items)
        return array
    except (UnicodeEncodeError, ValueError):
        return None


@pytest.fixture(scope="module")
def receiver_and_sink() -> Any:
    sink = InMemorySink()
    receiver = Receiver(ServeSettings.load({}, spool="memory", flush_interval=30), sink=sink)
    yield receiver, sink
    receiver.shutdown()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=PREFIXES, name=NAMES, value=VALUES)
def test_receiver_writes_exactly_or_reports_partial_success(
    receiver_and_sink: Any, prefix: str, name: str, value: Any
) -> None:
    """serve's accept never raises; a span is written with the attribute exactly, or the
    attribute is counted and named in the partial-success message, or the span is rejected and
    counted in ``rejected``."""
    receiver, sink = receiver_and_sink
    encoded = any_value(value)
    try:
        key = KeyValue(key=prefix + name, value=encoded) if encoded is not None else None
    except (UnicodeEncodeError, ValueError):
        key = None
    if key is None:  # not representable in OTLP: the wire cannot carry it
        return
    request_id = f"r{next(_ids)}"
    request = ExportTraceServiceRequest()
    resource = request.resource_spans.add()
    resource.resource.attributes.add(key="service.name", value=AnyValue(string_value="hostile"))
    span = resource.scope_spans.add().spans.add(
        trace_id=b"\x01" * 16,
        span_id=next(_ids).to_bytes(8, "big"),
        kind=Span.SPAN_KIND_SERVER,
        start_time_unix_nano=T0,
        end_time_unix_nano=T0 + 1000,
    )
    for base_key, base_value in {**BASE, "luna.request_id": request_id}.items():
        span.attributes.add(key=base_key, value=any_value(base_value))
    span.attributes.append(key)
    before, seen = Counter(receiver.counts()), len(sink.lines)
    rejected, message, _ = receiver.accept_traces(request)
    assert receiver.ingest.force_flush(10)
    delta = Counter(receiver.counts()) - before
    lines = sink.lines[seen:]
    if not lines:
        assert rejected >= 1 and problems(delta), (rejected, delta)
        return
    assert rejected == 0
    point = parse_line(lines[0])
    if prefix + name != "luna.request_id":
        assert point.fields["request_id"] == request_id
    check_written(
        prefix, name, value if not isinstance(value, list) else tuple(value), point, delta
    )
    if problems(delta):
        assert message, delta


def test_nonfinite_usage_is_a_rejected_data_point(receiver_and_sink: Any) -> None:
    """A NaN or infinite luna.usages value is rejected and counted; the good one is written."""
    receiver, sink = receiver_and_sink
    request = ExportMetricsServiceRequest()
    resource = request.resource_metrics.add()
    resource.resource.attributes.add(key="service.name", value=AnyValue(string_value="u"))
    metric = resource.scope_metrics.add().metrics.add(name="luna.usages")
    metric.sum.aggregation_temporality = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
    for estimator, value in (
        ("face_detector", math.nan),
        ("eye_estimator", math.inf),
        ("mouth_estimator", 3.0),
    ):
        point = metric.sum.data_points.add(
            start_time_unix_nano=T0, time_unix_nano=T0 + 1, as_double=value
        )
        point.attributes.add(key="luna.estimator", value=AnyValue(string_value=estimator))
    seen = len(sink.lines)
    rejected, message, _ = receiver.accept_metrics(request)
    assert receiver.ingest.force_flush(10)
    assert rejected == 2 and "nonfinite_usage=2" in message
    (line,) = sink.lines[seen:]
    assert line.startswith("usages_statistic,service=u mouth_estimator_usages=3i ")


# --------------------------------------------------------------------------- the rules


def map_one(
    attributes: dict[str, Any], mapper: RequestMapper | None = None
) -> tuple[list[str], Counter[str]]:
    mapper = mapper or RequestMapper()
    encoder = LineProtocolEncoder()
    points = mapper.add(
        SpanRecord({**BASE, **attributes}, True, 1, 7, None, T0, T0 + 10, False, "s")
    )
    return encoder.encode(points), mapper.counts + encoder.counts


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("luna.field.route", "attribute_shadows_schema"),
        ("luna.field.service", "attribute_shadows_schema"),
        ("luna.tag.request_id", "attribute_shadows_schema"),
        ("luna.time.execution_time", "attribute_shadows_schema"),
        ("luna.tag.error_code", "attribute_shadows_schema"),
        ("luna.tag.time", "attribute_reserved_key"),
        ("luna.field.time", "attribute_reserved_key"),
        ("luna.tag.a\nb", "attribute_newline_in_key"),
        ("luna.field.\ud800", "attribute_invalid_utf8_key"),
    ],
)
def test_user_keys_never_shadow_the_schema(key: str, reason: str) -> None:
    """A user key InfluxDB reserves, or named like the series' own tags and fields, is dropped
    and counted; the request is written with its base tags and fields intact."""
    lines, counts = map_one({key: "x"})
    assert lines == [
        f'requests,route=GET:/h,service=s,status_code=200 request_id="{1:032x}",'
        f"execution_time=1e-08 {T0}"
    ]
    assert counts[reason] == 1


@pytest.mark.parametrize(
    ("attributes", "reason"),
    [
        ({"luna.tag.h": "a\ud800b"}, "attribute_invalid_utf8"),
        ({"luna.tag.h": "two\nlines"}, "attribute_newline_in_tag_value"),
        ({"luna.tag.h": "ends\\"}, "attribute_backslash_in_tag_value"),
        ({"luna.tag.h": "x" * 20_000}, "attribute_tag_value_too_long"),
        ({"luna.field.note": "a\udcff"}, "attribute_invalid_utf8"),
        ({"luna.request_id": "bad-\udcff-2"}, "attribute_invalid_utf8"),  # the trace id stands in
    ],
)
def test_a_bad_user_value_costs_that_value_not_the_request(
    attributes: dict[str, Any], reason: str
) -> None:
    """A user tag or field InfluxDB cannot take is dropped and counted; the request point is
    written with everything else."""
    lines, counts = map_one(attributes)
    assert lines == [
        f'requests,route=GET:/h,service=s,status_code=200 request_id="{1:032x}",'
        f"execution_time=1e-08 {T0}"
    ]
    assert counts[reason] == 1


def test_a_name_used_as_tag_and_field_stays_a_tag() -> None:
    lines, counts = map_one({"luna.tag.account": "a", "luna.field.account": "b"})
    assert lines[0].startswith("requests,account=a,route=GET:/h,")
    assert "account=" not in lines[0].split(" ")[1]
    assert counts["attribute_tag_and_field"] == 1


@pytest.mark.parametrize(
    ("method", "status", "route"),
    [
        ("GET", 404, f"GET:{UNMATCHED_ROUTE}"),
        ("DELETE", 405, f"DELETE:{UNMATCHED_ROUTE}"),  # the path exists, not for this method
        ("GET", 307, f"GET:{UNMATCHED_ROUTE}"),  # FastAPI's trailing-slash redirect
        ("XYZZY", 404, f"_OTHER:{UNMATCHED_ROUTE}"),  # a method of the client's choosing
    ],
)
def test_requests_the_router_did_not_match_have_a_fixed_route(
    method: str, status: int, route: str
) -> None:
    """A request that matched no route (a scanner's 404s and 405s, a redirect) is written as
    METHOD:{unmatched}, whatever its path and method: not one series per URL."""
    attributes = {
        "http.request.method": method,
        "url.path": "/wp-admin/x.php",
        "http.response.status_code": status,
    }
    points = RequestMapper().add(SpanRecord(attributes, True, 1, 7, None, T0, T0 + 1, False, "s"))
    assert dict(points[0].tags)["route"] == route


def test_route_values_are_bounded_per_service() -> None:
    """Past route_limit distinct routes the application does not bound (paths, clients'
    methods), new ones are written as {overflow}; routes seen before keep their value; route
    templates with standard methods are always written as they are; each service has its own
    budget."""
    mapper = RequestMapper(route_limit=3)

    def route(path: str, service: str = "s", *, template: bool = False, method: str = "GET") -> str:
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "http.response.status_code": 200,
            "url.path": path,
        }
        if template:
            attributes["http.route"] = path
        points = mapper.add(SpanRecord(attributes, True, 1, 7, None, T0, T0 + 1, False, service))
        return dict(points[0].tags)["route"]

    assert [route(f"/p{i}") for i in range(5)] == [
        "GET:/p0",
        "GET:/p1",
        "GET:/p2",
        OVERFLOW_ROUTE,
        OVERFLOW_ROUTE,
    ]
    assert route("/p1") == "GET:/p1"
    assert route("/items/{id}", template=True) == "GET:/items/{id}"  # a real route, first seen late
    assert route("/items/{id}", template=True, method="PURGE") == OVERFLOW_ROUTE
    assert route("/p9", service="other") == "GET:/p9"
    assert mapper.counts["route_overflow"] == 3


@pytest.mark.parametrize("time_ns", [MIN_TIME_NS - 1, MAX_TIME_NS + 1, 2**64 - 1])
def test_times_outside_influxdb_range_are_rejected(time_ns: int) -> None:
    with pytest.raises(InvalidPointError, match="time_out_of_range"):
        LineProtocolEncoder().encode_point(Point("m", (), {"f": 1}, time_ns))


def test_encoder_refuses_exactly_what_influxdb_refuses(
    influxdb1: InfluxDB1, influxdb1_database: str
) -> None:
    """At the edges of InfluxDB's time range and key length, the encoder accepts exactly the
    points the real server stores, and rejects the ones it would refuse."""
    encoder = LineProtocolEncoder()
    longest = MAX_KEY_BYTES - len("m,t=") - len("#!~#") - len("f")
    cases = [
        Point("m", (("t", "a"),), {"f": 1}, MIN_TIME_NS),
        Point("m", (("t", "b"),), {"f": 1}, MAX_TIME_NS),
        Point("m", (("t", "x" * longest),), {"f": 1}, 5),
        Point("m", (("t", "é" * (longest // 2)),), {"f": 1}, 6),
        Point("m", (("t", "x" * (longest + 1)),), {"f": 1}, 7),
        Point("m", (("t", "é" * (longest // 2 + 1)),), {"f": 1}, 8),
        Point("m", (("t", "y" * longest),), {"ff": 1}, 9),
        Point("m", (("time", "c"),), {"f": 1}, 10),
        Point("m", (), {"time": 1, "g": 2}, 11),
    ]
    for point in cases:
        try:
            line = encoder.encode_point(point)
        except InvalidPointError:
            line = None
        try:
            influxdb1.write(
                f"{encoder.encode_point(point) if line else _raw(point)}\n", influxdb1_database
            )
            stored = True
        except ServerHTTPError:
            stored = False
        if point.fields.get("time") is not None:
            stored = False  # InfluxDB answers 204 but silently drops the field: a loss
        assert (line is not None) == stored, point.measurement + repr(point.tags)[:60]


def _raw(point: Point) -> str:
    """The line a naive encoder would send, to see what InfluxDB does with it."""
    tags = "".join(f",{key}={value}" for key, value in point.tags)
    fields = ",".join(f"{key}={value}i" for key, value in point.fields.items())
    return f"{point.measurement}{tags} {fields} {point.time_ns}"


def test_a_string_field_with_newlines_survives_the_isolation_of_a_bad_line(
    influxdb1: InfluxDB1, influxdb1_database: str
) -> None:
    """InfluxDB stores newlines and carriage returns inside string fields. When a batch is
    split to isolate a bad line, such a line must be split as one line, not cut at its \\n."""
    exporter = LunaSpanExporter(
        Settings.load({}, endpoint=influxdb1.url, database=influxdb1_database, flush_interval=30)
    )
    influxdb1.write(
        f"requests,route=GET:/h,service=s,status_code=200 account=1i {T0 - 10}\n",
        influxdb1_database,
    )  # account is an integer in this shard: a string account conflicts
    delivery = exporter._ingest.delivery
    assert delivery is not None
    series = "requests,route=GET:/h,service=s,status_code=200"
    lines = [
        f'{series} request_id="ok",note="line 1\nline 2\r" {T0}',
        f'{series} request_id="bad",account="x" {T0 + 1}',
        f'{series} request_id="ok2" {T0 + 2}',
    ]
    delivery.submit(lines)
    assert exporter.force_flush(30_000)
    exporter.shutdown()
    rows = influxdb1.select(
        f"SELECT request_id, note FROM requests WHERE time >= {T0}", influxdb1_database
    )
    assert sorted((row["request_id"], row["note"]) for row in rows) == [
        ("ok", "line 1\nline 2\r"),
        ("ok2", None),
    ]
    assert exporter.counts["dead_lettered"] == 1


# --------------------------------------------------------------------------- what the mapping reads

_TRACE_HEX = f"{1:032x}"


@pytest.mark.parametrize(
    ("method", "original", "route"),
    [
        ("_OTHER", "PROPFIND", "PROPFIND:/h"),
        ("_OTHER", "", "_OTHER:/h"),  # once ":/h"
        ("_OTHER", "PRO PFIND", "_OTHER:/h"),
        ("_OTHER", "esc\x1b[2J", "_OTHER:/h"),
        ("_OTHER", "A" * 33, "_OTHER:/h"),
        ("_OTHER", ("GET",), "_OTHER:/h"),
        ("_OTHER", {"a": 1}, "_OTHER:/h"),
        ("G\x1bET", None, "_OTHER:/h"),
        ("", None, "_OTHER:/h"),
        (5, None, "_OTHER:/h"),
        (b"GET", None, "_OTHER:/h"),
    ],
)
def test_an_http_method_is_a_token_else_other(method: Any, original: Any, route: str) -> None:
    """``http.request.method`` and ``method_original`` go into ``route`` only as RFC 9110 tokens
    of at most 32 characters; anything else (empty, a space, an escape sequence, 33
    characters, not a string) is ``_OTHER``, counted."""
    attributes = {"http.request.method": method}
    if original is not None:
        attributes["http.request.method_original"] = original
    mapper = RequestMapper()
    lines, counts = map_one(attributes, mapper)
    assert len(lines) == 1
    assert dict(parse_line(lines[0]).tags)["route"] == route
    invalid = 0 if route == "PROPFIND:/h" else 1
    assert problems(counts) == Counter({"invalid_http_method": invalid})
    map_one(attributes, mapper)  # counted at every span, cached tag set or not
    assert mapper.counts["invalid_http_method"] == 2 * invalid


@pytest.mark.parametrize("status", [{"a": 1}, (200,), b"200", "²", "2000", "9" * 5000, 1000, 200.0])
def test_a_status_that_is_no_http_status_is_left_out_counted(status: Any) -> None:
    """A status code of another type or no 1-3 digits is left out (no ``status_code`` tag),
    counted: never a mapping error (a kvlist once failed the tag-set cache's key, ``"²"`` and
    5000 digits ``int()``), never a tag of Python text."""
    mapper = RequestMapper()
    lines, counts = map_one({"http.response.status_code": status}, mapper)
    assert len(lines) == 1
    assert "status_code" not in dict(parse_line(lines[0]).tags)
    assert problems(counts) == Counter({"invalid_http_status": 1})
    map_one({"http.response.status_code": status}, mapper)
    assert mapper.counts["invalid_http_status"] == 2


@pytest.mark.parametrize("value", [(1,), ("a", "b"), {"a": "b"}, b"id", ()])
def test_a_request_id_that_is_no_scalar_is_left_out_counted(value: Any) -> None:
    """``luna.request_id`` as an array, kvlist or bytes is left out, counted; the trace id
    stands in for it (it was written as the Python text ``"(1,)"``)."""
    lines, counts = map_one({"luna.request_id": value})
    assert parse_line(lines[0]).fields["request_id"] == _TRACE_HEX
    assert problems(counts) == Counter({"unsupported_attribute_type": 1})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("http.route", ("/a",)),
        ("http.route", {"a": "/b"}),
        ("http.route", b"/c"),
        ("http.route", 5),
        ("luna.error_code", {"a": 1}),
        ("luna.error_code", (1, 2)),
    ],
)
def test_a_route_or_error_code_that_is_no_string_is_left_out_counted(key: str, value: Any) -> None:
    """A route (or error code) of another type is left out, counted — never Python text in a
    tag; without a route the path stands in."""
    lines, counts = map_one({key: value, "url.path": "/p"})
    tags = dict(parse_line(lines[0]).tags)
    assert tags["route"] == ("GET:/h" if key == "luna.error_code" else "GET:/p")
    assert "error_code" not in tags
    assert problems(counts) == Counter({"unsupported_attribute_type": 1})


@pytest.mark.parametrize("messages", [3, 2.5, True, b"x", {"a": "b"}, ("a", 1), (("a",),)])
def test_licence_messages_of_another_type_are_left_out_counted(messages: Any) -> None:
    """``luna.license.warnings``/``errors`` are a string or an array of strings; anything else
    (an int once raised ``TypeError`` for every span) is left out, counted, the check written."""
    mapper = RequestMapper()
    attributes = {
        "luna.license.status": "warning",
        "luna.license.liveness_balance": 3,
        "luna.license.warnings": messages,
        "luna.license.errors": ("e1", "e2"),
    }
    points = mapper.add(SpanRecord(attributes, False, 1, 7, None, T0, T0, False, "s"))
    assert [point.fields for point in points] == [
        {"liveness_balance": 3, "warnings": "", "errors": "e1; e2"}
    ]
    assert mapper.counts["unsupported_attribute_type"] == 1


@pytest.mark.parametrize(
    ("code", "reason"),
    [("\n", "newline_in_tag_value"), ("", "empty_tag_value"), ("x\\", "backslash_in_tag_value")],
)
def test_an_error_code_no_tag_can_hold_is_an_unknown_error(code: str, reason: str) -> None:
    """A ``luna.error_code`` that cannot be a tag value still marks the request failed: its
    ``errors`` point is written with error code 0 and the value counted (the errors point was
    refused while the requests point was written)."""
    lines, counts = map_one({"luna.error_code": code})
    assert [dict(parse_line(line).tags).get("error_code") for line in lines] == [None, "0"]
    assert problems(counts) == Counter({"attribute_" + reason: 1})


@pytest.mark.parametrize(
    "key", ["luna.tag.t", "luna.request_id", "luna.error_code", "luna.time.t_time"]
)
@pytest.mark.parametrize("value", [10**400, -(10**5000), 2**63], ids=["1e400", "-1e5000", "2**63"])
def test_an_integer_beyond_int64_is_left_out_counted(key: str, value: int) -> None:
    """An in-process span may carry any Python int (OTLP's are int64): one beyond int64 as a
    tag, request id, error code or timing is left out, counted — ``str()`` of 5001 digits and
    ``float()`` of 10**400 raised."""
    lines, counts = map_one({key: value})
    assert len(lines) == 1
    assert problems(counts) == Counter({"int_out_of_range": 1})


def test_a_span_ending_before_it_starts_takes_no_time() -> None:
    """A SERVER span whose end is before its start (the sender's clock stepped back) is
    written with ``execution_time`` 0, counted: the request happened, its status and route
    count; only its duration is unknown."""
    mapper = RequestMapper()
    points = mapper.add(SpanRecord(BASE, True, 1, 7, None, T0, T0 - 5_000_000_000, False, "s"))
    assert points[0].fields["execution_time"] == 0.0
    assert mapper.counts["negative_execution_time"] == 1


#: Every type an OTLP attribute value can have (as ``ingest/otlp.py`` reads it): string, int64,
#: double, bool, bytes, array (tuple), kvlist (dict), empty (None).
OTLP_VALUES = st.recursive(
    st.one_of(
        st.none(),
        TEXT,
        st.sampled_from(["GET", "_OTHER", "200", "ok", "warning", "/a/<b>", "{x:y}"]),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(),
        st.binary(max_size=4),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(tuple), st.dictionaries(TEXT, inner, max_size=2)
    ),
    max_leaves=6,
)
#: Every key the request and licence mappings read.
READ_KEYS = sorted(
    {
        *SERVER_SPAN_KEYS,
        *ROUTE_FALLBACK_KEYS,
        "luna.request_id",
        "luna.error_code",
        "luna.license.status",
        "luna.license.liveness_balance",
        "luna.license.warnings",
        "luna.license.errors",
        "luna.tag.t",
        "luna.field.f",
        "luna.field.f_count",
        "luna.time.t_time",
    }
)


@settings(max_examples=500, deadline=None)
@given(
    attributes=st.dictionaries(st.sampled_from(READ_KEYS), OTLP_VALUES, max_size=8),
    is_server=st.booleans(),
    status_error=st.booleans(),
    duration=st.integers(min_value=-(10**12), max_value=10**12),
)
def test_no_attribute_value_makes_the_mapping_raise(
    attributes: dict[str, Any], is_server: bool, status_error: bool, duration: int
) -> None:
    """Any value of any OTLP type on any key the mapping reads is mapped, or left out and
    counted — never an exception (which serve counted ``mapping_error`` and logged with a
    traceback, span after span); a request id is never the text of an array, kvlist or bytes."""
    mapper = RequestMapper()
    encoder = LineProtocolEncoder()
    for parent in (2, None):  # a child's data merged into its SERVER parent, and on its own
        record = SpanRecord(attributes, is_server, 1, 7, parent, T0, T0 + duration, False, "s")
        encoder.encode(mapper.add(record))
    server = SpanRecord(attributes, True, 1, 2, None, T0, T0 + duration, status_error, "s")
    points = mapper.add(server)
    encoder.encode(points)
    for point in points:
        request_id = point.fields.get("request_id", _TRACE_HEX)
        assert type(request_id) is str
        assert type(attributes.get("luna.request_id")) in (str, int, float, bool) or (
            request_id == _TRACE_HEX
        )
        if "execution_time" in point.fields:
            assert point.fields["execution_time"] >= 0


def _kvlist(**items: str) -> AnyValue:
    value = AnyValue()
    for key, text in items.items():
        value.kvlist_value.values.add(key=key, value=AnyValue(string_value=text))
    return value


@pytest.mark.parametrize(
    ("key", "value", "license_check"),
    [
        *[
            (key, any_value(value), True)
            for key in ("luna.license.warnings", "luna.license.errors")
            for value in (3, 2.5, True)
        ],
        ("http.request.method", _kvlist(a="GET"), False),
        ("http.request.method_original", _kvlist(a="PURGE"), False),
        ("http.response.status_code", _kvlist(a="200"), False),
        ("http.route", _kvlist(a="/r"), False),
        ("luna.request_id", any_value([1]), False),
        ("luna.request_id", AnyValue(bytes_value=b"id"), False),
        ("luna.error_code", _kvlist(a="1"), False),
    ],
    ids=lambda item: item if isinstance(item, str) else None,
)
def test_serve_maps_every_attribute_type_without_a_mapping_error(
    receiver_and_sink: Any,
    caplog: pytest.LogCaptureFixture,
    key: str,
    value: Any,
    license_check: bool,
) -> None:
    """The review's triggers of ``mapping_error`` and a traceback per span (int/float/bool
    licence messages, a kvlist method, original method or status, ...) through serve's
    receiver: the span is written, the value counted and named in the partial success; nothing
    is logged."""
    receiver, sink = receiver_and_sink
    request = ExportTraceServiceRequest()
    resource = request.resource_spans.add()
    resource.resource.attributes.add(key="service.name", value=AnyValue(string_value="hostile"))
    span = resource.scope_spans.add().spans.add(
        trace_id=b"\x01" * 16,
        span_id=(next(_ids) + 1).to_bytes(8, "big"),  # not 0: an invalid span id
        kind=Span.SPAN_KIND_INTERNAL if license_check else Span.SPAN_KIND_SERVER,
        start_time_unix_nano=T0,
        end_time_unix_nano=T0 + 1000,
    )
    base = {"luna.license.status": "ok"} if license_check else {**BASE, "url.path": "/p"}
    if key == "http.request.method_original":
        base["http.request.method"] = "_OTHER"
    for base_key, base_value in base.items():
        span.attributes.add(key=base_key, value=any_value(base_value))
    span.attributes.add(key=key, value=value)
    before, seen = Counter(receiver.counts()), len(sink.lines)
    with caplog.at_level("WARNING"):
        rejected, message, _ = receiver.accept_traces(request)
    assert receiver.ingest.force_flush(10)
    delta = problems(Counter(receiver.counts()) - before)
    assert rejected == 0, message
    assert len(sink.lines) == seen + 1
    assert "mapping_error" not in delta and delta, delta
    assert all(reason in message for reason in delta), (message, delta)
    assert not caplog.records
