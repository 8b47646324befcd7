"""One InfluxDB type per field, whatever arrives, and span times bounded around the clock.

InfluxDB fixes a field's type in a shard at its first write and refuses every later point that
disagrees ("field type conflict"): one span with a string where the others send floats used to
spoil the rest of the shard, and a span dated weeks ahead spoiled shards not yet made. The type
of a field now follows from its name (``schema.luna.field_type``); a value that does not fit
costs only itself, counted. Points dated too far ahead (or, if set, too old) are rejected,
counted.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import otel_luna
from otel_luna._exporter import LunaSpanExporter
from otel_luna.encoding._lineprotocol import LineProtocolEncoder
from otel_luna.encoding._reader import parse_line
from otel_luna.mapping._records import SpanRecord
from otel_luna.mapping._requests import RequestMapper
from otel_luna.mapping._timestamps import time_window
from otel_luna.schema import luna as schema
from otel_luna.schema._point import FieldValue
from otel_luna.schema.luna import field_type, fitted, name_words
from otel_luna.serve import ServeSettings
from otel_luna.serve._receiver import Receiver
from otel_luna.settings import Settings
from otel_luna.testing import InMemorySink
from tests.support.servehelpers import (
    Serve,
    grpc_call,
    serve_env,
    server_spans,
    stored_ids,
    trace_request,
)
from tests.support.servers import InfluxDB1
from tests.support.waiting import wait_until

T0 = 1_700_000_000_123_456_789
WEEK_NS = 7 * 86400 * 10**9
BASE = {"http.request.method": "POST", "http.route": "/detector", "http.response.status_code": 200}


# --------------------------------------------------------------------------- the rule


def test_the_series_own_fields_follow_the_rule() -> None:
    """The seed's fields have the types the rule gives their names: request_id string,
    execution_time and every stage timing float, every <estimator>_usages integer."""
    assert field_type("request_id") is str
    assert field_type("execution_time") is float
    assert {field_type(name) for name in schema.STAGE_TIME_FIELDS} == {float}
    usages = {field_type(name + schema.USAGES_SUFFIX) for name in schema.ESTIMATORS}
    assert usages == {int}


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("download_images_time", float),
        ("decode_seconds", float),
        ("seconds", float),
        ("faces_count", int),
        ("count", int),
        ("face_detector_usages", int),
        ("is_cached", bool),
        ("has_body", bool),
        ("is_retry_count", int),  # the last word decides first
        ("account", str),
        ("timeout", str),  # a word, not a suffix: "timeout" is not "_time"
        ("is", str),
        ("count_of_faces", str),
    ],
)
def test_a_fields_type_follows_from_its_name_alone(name: str, kind: type) -> None:
    """The rule: last word time/seconds float, count/usages integer; first word is/has boolean;
    else string."""
    assert field_type(name) is kind


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("downloadTime", float),
        ("DOWNLOAD_TIME", float),
        ("downloadImagesTime", float),
        ("decodeSeconds", float),
        ("faceCount", int),
        ("FACE_COUNT", int),
        ("faceDetectorUsages", int),
        ("isCached", bool),
        ("IS_CACHED", bool),
        ("hasBody", bool),
        ("HTTPTime", float),  # an acronym, then a word
        ("face2Count", int),
        ("FACE2COUNT", str),  # one word in UPPER_SNAKE
        ("Time", float),
        ("timeout", str),
        ("Timeout", str),
        ("downloadtime", str),  # one word: no boundary to read
        ("island", str),
        ("requestId", str),
    ],
)
def test_camel_case_and_upper_snake_names_follow_the_same_rule(name: str, kind: type) -> None:
    """JavaScript's ``downloadTime`` and a constant's ``DOWNLOAD_TIME`` have the type of
    ``download_time``: the rule reads a name's words, whatever their case convention."""
    assert field_type(name) is kind


@given(st.from_regex(r"[a-z0-9_]{0,30}", fullmatch=True))
def test_a_snake_case_name_is_read_as_it_is(name: str) -> None:
    """The rule is a pure function of the name, and lower snake_case names (the seed's, all
    names before camelCase was read) keep their type: they are their own words."""
    assert name_words(name) == name
    assert name_words(name.upper()) == name


@pytest.mark.parametrize(
    ("value", "kind", "expected"),
    [
        (3, float, 3.0),
        (2**53 + 1, float, None),  # no float equals it
        (10**400, float, None),
        (3.0, int, 3),
        (2.5, int, None),
        (float("nan"), int, None),
        (1e30, int, None),
        (True, int, None),
        (1, bool, None),
        (True, float, None),
        ("0.5", float, None),
        (3, str, None),
        ("x", str, "x"),
        (0.25, float, 0.25),
    ],
)
def test_only_exact_conversions_between_numbers(
    value: Any, kind: type[FieldValue], expected: Any
) -> None:
    """int ↔ float when nothing is lost; a bool is no number; nothing becomes a string."""
    got = fitted(value, kind)
    assert got == expected and (expected is None or type(got) is kind)


# --------------------------------------------------------------------------- the mapping


def lines_of(mapper: RequestMapper, attributes: dict[str, Any], span_id: int = 7) -> list[str]:
    encoder = LineProtocolEncoder()
    record = SpanRecord({**BASE, **attributes}, True, 1, span_id, None, T0, T0 + 10, False, "s")
    lines = encoder.encode(mapper.add(record))
    mapper.counts.update(encoder.counts)
    return lines


def test_a_value_of_the_wrong_type_costs_only_that_value() -> None:
    """luna.field.download_images_time="x" is left out and counted; the request is written with
    its other fields, also on errors."""
    mapper = RequestMapper()
    lines = lines_of(
        mapper,
        {
            "luna.field.download_images_time": "x",
            "luna.field.note": "kept",
            "luna.field.faces_count": 2.0,  # integral: written as the integer 2
            "luna.error_code": 11009,
        },
    )
    points = [parse_line(line) for line in lines]
    assert [p.measurement for p in points] == ["requests", "errors"]
    for point in points:
        assert "download_images_time" not in point.fields
        assert point.fields["note"] == "kept"
        assert point.fields["faces_count"] == 2 and type(point.fields["faces_count"]) is int
    assert mapper.counts["attribute_type_mismatch"] == 1


def test_a_timing_into_a_field_that_is_not_float_is_dropped_and_counted() -> None:
    """luna.time.<name> is float seconds: a name the rule does not make float would give the
    field a second type, so the timing is dropped and counted."""
    mapper = RequestMapper()
    (line,) = lines_of(mapper, {"luna.time.decode": 0.5, "luna.time.decode_time": 0.25})
    fields = parse_line(line).fields
    assert "decode" not in fields and fields["decode_time"] == 0.25
    assert mapper.counts["attribute_type_mismatch"] == 1


def test_a_liveness_balance_sent_as_an_integral_float_is_an_integer() -> None:
    """A JSON sender's 5.0 for luna.license.liveness_balance is written as 5i, not dropped."""
    mapper = RequestMapper()
    attributes = {"luna.license.status": "ok", "luna.license.liveness_balance": 5.0}
    record = SpanRecord(attributes, False, 1, 2, None, T0, T0, False, "s")
    (point,) = mapper.add(record)
    assert point.fields["liveness_balance"] == 5 and type(point.fields["liveness_balance"]) is int


KEYS = ["download_images_time", "decode_seconds", "faces_count", "is_cached", "note", "score"]
VALUES = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False),
    st.booleans(),
    st.text(max_size=5),
)
SPAN = st.fixed_dictionaries(
    {},
    optional={
        **{f"luna.field.{key}": VALUES for key in KEYS},
        **{f"luna.time.{key}": VALUES for key in KEYS},
        "luna.error_code": st.just(11009),
    },
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spans=st.lists(SPAN, min_size=1, max_size=20))
def test_whatever_arrives_a_field_key_has_one_type(spans: list[dict[str, Any]]) -> None:
    """Any values of any types, in any order, for luna.field.* and luna.time.* keys: the lines
    never give one field key of a measurement two types, and each is the one the rule gives."""
    mapper = RequestMapper()
    seen: dict[tuple[str, str], set[type]] = {}
    for span_id, attributes in enumerate(spans, 1):
        for line in lines_of(mapper, attributes, span_id):
            point = parse_line(line)
            for key, value in point.fields.items():
                seen.setdefault((point.measurement, key), set()).add(type(value))
    for (_, key), types in seen.items():
        assert types == {field_type(key)}, (key, types)


def test_add_fields_warns_of_a_value_its_field_cannot_take(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The helper leaves out (with a warning naming the rule) what the mapping would drop."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("t")
    with (
        caplog.at_level(logging.WARNING, logger="otel_luna"),
        tracer.start_as_current_span("s", kind=SpanKind.SERVER),
    ):
        otel_luna.add_fields(load_time="slow", faces_count=3, note="n")
        with otel_luna.monitor_time("decoding"):
            pass
    (span,) = memory.get_finished_spans()
    assert dict(span.attributes or {}) == {"luna.field.faces_count": 3, "luna.field.note": "n"}
    assert "'load_time' is float by its name" in caplog.text
    assert "ends in _time or _seconds, got 'decoding'" in caplog.text


# --------------------------------------------------------------------------- span times


def test_the_time_window_is_open_where_its_bound_is_zero() -> None:
    """0 turns a bound off; otherwise the window is [now - age, now + ahead]."""
    assert time_window(100, 10, 20) == (80, 110)
    earliest, latest = time_window(100, 0, 0)
    assert earliest < -(2**63) and latest > 2**63


def test_points_dated_too_far_ahead_or_too_old_are_rejected_and_counted() -> None:
    """Spans dated a week and three weeks ahead are rejected (time_too_far_ahead), one older
    than max_time_age too (time_too_old); the span of now is written."""
    sink = InMemorySink()
    exporter = LunaSpanExporter(
        Settings.load({}, spool="memory", flush_interval=30, max_time_age=86400), sink=sink
    )
    try:
        now = time.time_ns()
        spans: list[Any] = []
        for start in (now - 10**9, now + WEEK_NS, now + 3 * WEEK_NS, now - 2 * 86400 * 10**9):
            spans += server_spans(1, start_ns=start)[0]
        assert exporter.export(spans).name == "SUCCESS"
        assert exporter.force_flush(10_000)
        counts = Counter(exporter.counts)
    finally:
        exporter.shutdown()
    assert len(sink.lines) == 1
    assert counts["time_too_far_ahead"] == 2 and counts["time_too_old"] == 1


def test_a_usage_data_point_dated_weeks_ahead_is_rejected_and_counted() -> None:
    """The window holds for luna.usages too (serve's metrics path): the point of now is
    written, the one dated a week ahead rejected and answered in the partial success."""
    sink = InMemorySink()
    receiver = Receiver(ServeSettings.load({}, spool="memory", flush_interval=30), sink=sink)
    try:
        request = ExportMetricsServiceRequest()
        resource = request.resource_metrics.add()
        resource.resource.attributes.add(key="service.name", value=AnyValue(string_value="u"))
        metric = resource.scope_metrics.add().metrics.add(name="luna.usages")
        metric.sum.aggregation_temporality = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
        now = time.time_ns()
        for end in (now, now + WEEK_NS):
            point = metric.sum.data_points.add(
                start_time_unix_nano=end - 10**9, time_unix_nano=end, as_int=3
            )
            point.attributes.add(key="luna.estimator", value=AnyValue(string_value="face_detector"))
        rejected, message, _ = receiver.accept_metrics(request)
        assert receiver.ingest.force_flush(10)
    finally:
        receiver.shutdown()
    assert rejected == 1 and "time_too_far_ahead=1" in message
    (line,) = sink.lines
    assert parse_line(line).fields == {"face_detector_usages": 3}


# --------------------------------------------------------------------------- real InfluxDB 1.x

STORE_TIMEOUT = 30.0


def wait_stored(influx: InfluxDB1, database: str, ids: list[str]) -> None:
    wait_until(
        lambda: sorted(stored_ids(influx, database)),
        lambda stored: stored == sorted(ids),
        STORE_TIMEOUT,
        f"{len(ids)} requests stored",
    )


def test_one_poisoning_request_no_longer_spoils_the_shard_for_everyone(
    influxdb1: InfluxDB1, influxdb1_database: str, tmp_path: Path
) -> None:
    """The finding, through serve to a real InfluxDB 1.x: a span with download_images_time="x"
    now, and two dated +1 and +3 weeks, then 300 spans timing download_images_time: all 300 are
    stored with their float, the bad value and the future spans are counted and answered, and
    nothing is dead-lettered."""
    database = influxdb1_database
    dead = tmp_path / "dead.jsonl"
    now = time.time_ns()
    poison = {"luna.field.download_images_time": "x"}
    bad, bad_ids = server_spans(1, attributes=poison, start_ns=now - 120 * 10**9)
    for weeks in (1, 3):
        bad += server_spans(1, attributes=poison, start_ns=now + weeks * WEEK_NS)[0]
    good, good_ids = server_spans(300, attributes={"luna.time.download_images_time": 0.004})
    env = serve_env(influxdb1.url, database, OTEL_EXPORTER_LUNA_DEAD_LETTER=str(dead))
    with Serve(env) as serve:
        code, _, _, answer = grpc_call(serve.grpc_target, trace_request(bad).SerializeToString())
        assert code.name == "OK" and answer is not None
        partial = ExportTraceServiceResponse.FromString(answer).partial_success
        assert partial.rejected_spans == 2
        assert "time_too_far_ahead=2" in partial.error_message
        assert "attribute_type_mismatch=3" in partial.error_message  # all three spans
        wait_stored(influxdb1, database, bad_ids)
        code, _, _, _ = grpc_call(serve.grpc_target, trace_request(good).SerializeToString())
        assert code.name == "OK"
        wait_stored(influxdb1, database, [*bad_ids, *good_ids])
        serve.stop_ok()
    rows = influxdb1.select("SELECT download_images_time FROM requests", database)
    assert sorted(row["download_images_time"] for row in rows if row["download_images_time"]) == [
        0.004
    ] * len(good)
    assert influxdb1.select("SELECT request_id FROM requests WHERE time > now()", database) == []
    assert not dead.exists() or dead.read_text() == ""
