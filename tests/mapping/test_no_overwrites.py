"""No point overwrites another: InfluxDB keeps one point per (measurement, tag set, time), so
every request must get its own time, whatever the sender's clock, and the same span must always
get the same time (retries and replays stay idempotent). Checked in a real InfluxDB 1.x."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_luna import LunaSpanExporter, Settings
from otel_luna.mapping._records import SpanRecord, UsageSample
from otel_luna.mapping._requests import RequestMapper
from otel_luna.mapping._timestamps import MOVE_WINDOW, SeriesTimes, spread
from otel_luna.mapping._usages import UsageMapper
from otel_luna.mapping._watchdog import WatchdogMapper
from tests.support.servehelpers import (
    Serve,
    grpc_call,
    run_node_app,
    serve_env,
    stored_ids,
    trace_request,
)
from tests.support.servers import InfluxDB1
from tests.support.waiting import wait_until

BURST = 1000
#: A nanosecond time that identical starts share (explicit start times, a µs float clock).
T_NS = 1_700_000_000_123_456_789
#: A millisecond-aligned time, as a Node.js or browser clock gives.
MS_ALIGNED = (time.time_ns() // 10**6 - 60_000) * 10**6


# --------------------------------------------------------------------------- pure rules


def test_spread_fills_only_the_digits_below_the_clock_resolution() -> None:
    """A nanosecond time is kept; a coarse one moves within its millisecond at most."""
    assert spread(1_700_000_000_123_456_789, 987_654_321) == 1_700_000_000_123_456_789
    assert spread(1_700_000_000_123_000_000, 987_654_321) == 1_700_000_000_123_654_321
    assert spread(1_700_000_000_123_456_700, 987_654_321) == 1_700_000_000_123_456_721
    assert spread(1_700_000_000_000_000_000, 987_654_321) == 1_700_000_000_000_654_321
    assert spread(1_700_000_000_120_000_000, 987_654_321) == 1_700_000_000_120_654_321
    assert spread(0, 12) == 12


def test_series_times_move_collisions_by_owner_not_by_arrival() -> None:
    """A second owner of a time moves to a time drawn from its own number within the next
    millisecond; a resend finds its old time, also after the memory is lost, in any order."""
    times = SeriesTimes(limit=4)
    first = times.claim(1_000_001, 5)
    second = times.claim(1_000_001, 6)
    third = times.claim(1_000_001, 7)
    assert first == 1_000_001
    assert len({first, second, third}) == 3
    assert all(1_000_001 < moved <= 1_000_001 + MOVE_WINDOW for moved in (second, third))
    assert times.claim(1_000_001, 6) == second and times.claim(1_000_001, 5) == first
    forgetful = SeriesTimes()  # a restart: the resend of 7 comes first, then 6
    forgetful.claim(1_000_001, 99)  # another request holds the base time meanwhile
    assert forgetful.claim(1_000_001, 7) == third
    assert forgetful.claim(1_000_001, 6) == second


def test_identical_times_cost_no_more_per_point_as_they_pile_up() -> None:
    """20,000 points of one time: moves are drawn, not walked one nanosecond at a time."""
    times = SeriesTimes()
    claimed = {times.claim(1_000_001, owner) for owner in range(1, 20_001)}
    assert len(claimed) == 20_000
    assert times.collisions < 20_000 + 1_000  # about one move each, not 20,000²/2


def test_every_series_spreads_its_times() -> None:
    """requests/errors, licensing, usages_statistic and the watchdog points all get distinct
    times for distinct senders at one millisecond, and the same time for the same input."""
    mapper = RequestMapper()
    http = {"http.request.method": "GET", "http.route": "/x", "http.response.status_code": 500}
    a = mapper.add(SpanRecord(http, True, 1, 11, None, MS_ALIGNED, MS_ALIGNED + 5, False, "s"))
    b = mapper.add(SpanRecord(http, True, 2, 22, None, MS_ALIGNED, MS_ALIGNED + 5, False, "s"))
    assert len({point.time_ns for point in a}) == 1  # requests and errors share the request's time
    assert a[0].time_ns != b[0].time_ns
    assert (
        mapper.add(SpanRecord(http, True, 1, 11, None, MS_ALIGNED, MS_ALIGNED + 5, False, "s")) == a
    )
    same_span_id = mapper.add(
        SpanRecord(http, True, 3, 11, None, MS_ALIGNED, MS_ALIGNED + 5, False, "s")
    )
    assert same_span_id[0].time_ns not in (a[0].time_ns, b[0].time_ns)  # another trace

    licence = {"luna.license.status": "ok", "luna.license.liveness_balance": 1}
    times = {
        mapper.add(SpanRecord(licence, False, 3, span, None, MS_ALIGNED, MS_ALIGNED, False, "s"))[
            0
        ].time_ns
        for span in (31, 32)
    }
    assert len(times) == 2

    usages = UsageMapper()
    one = UsageSample("s", "face_detector", MS_ALIGNED, MS_ALIGNED, 3, False, origin=1)
    two = one._replace(origin=2)
    assert len({point.time_ns for point in usages.points([one, two])}) == 2

    watchdog = WatchdogMapper()
    event = {"watchdog.event": "new_item", "watchdog.is_error": False}
    points = [
        watchdog.add(SpanRecord(event, False, 1, span, None, MS_ALIGNED, MS_ALIGNED, False, "w"))[0]
        for span in (41, 42)
    ]
    assert points[0].time_ns != points[1].time_ns
    assert all(point.time_ns // 10**6 == MS_ALIGNED // 10**6 for point in points)  # same ms ping


# --------------------------------------------------------------------------- in-process


def same_start_spans(count: int, start_ns: int) -> tuple[list[ReadableSpan], list[str]]:
    """``count`` SERVER spans of one route and status, all starting at ``start_ns``."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "burst"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("burst")
    ids = [f"burst-{index}" for index in range(count)]
    for request_id in ids:
        span = tracer.start_span(
            "GET /items/{id}",
            kind=trace.SpanKind.SERVER,
            start_time=start_ns,
            attributes={
                "http.request.method": "GET",
                "http.route": "/items/{id}",
                "http.response.status_code": 200,
                "luna.request_id": request_id,
            },
        )
        span.end(end_time=start_ns + 1_000_000)
    provider.shutdown()
    return list(memory.get_finished_spans()), ids


def settle(influx: InfluxDB1, database: str, expected: int) -> list[str]:
    return wait_until(
        lambda: stored_ids(influx, database),
        lambda ids: len(ids) >= expected,
        30,
        "points in InfluxDB",
    )


def test_in_process_identical_start_times_give_one_point_per_request(
    influxdb1: InfluxDB1, influxdb1_database: str
) -> None:
    """1,000 spans of one route with the very same start time → 1,000 points; exporting the
    same spans again (a replay) adds none."""
    spans, ids = same_start_spans(BURST, MS_ALIGNED)
    exporter = LunaSpanExporter(
        Settings.load({}, endpoint=influxdb1.url, database=influxdb1_database, flush_interval=0.1)
    )
    try:
        exporter.export(spans)
        assert exporter.force_flush(30_000)
        exporter.export(spans)
        assert exporter.force_flush(30_000)
    finally:
        exporter.shutdown()
    stored = stored_ids(influxdb1, influxdb1_database)
    assert Counter(stored) == Counter(ids)


# --------------------------------------------------------------------------- through serve


def node_burst(count: int, start_ns: int | None) -> list[dict[str, Any]]:
    spec: dict[str, Any] = {"name": "GET /items/{id}", "duration_ms": 1.0}
    if start_ns is not None:
        spec["start_ns"] = str(start_ns)
    return [
        {
            **spec,
            "attributes": {
                "http.request.method": "GET",
                "http.route": "/items/{id}",
                "http.response.status_code": 200,
                "luna.request_id": f"node-{index}",
            },
        }
        for index in range(count)
    ]


@pytest.mark.node  # runs tests/node
def test_node_burst_through_serve_gives_one_point_per_request(
    influxdb1: InfluxDB1, influxdb1_database: str, tmp_path: Path
) -> None:
    """@opentelemetry/sdk-node sends 1,000 SERVER spans of one route in a burst, over gRPC with
    the SDK's own clock and over OTLP/HTTP with one millisecond start for all: every request id
    is exactly one point in InfluxDB."""
    env = serve_env(influxdb1.url, influxdb1_database)
    node_env = {
        "OTEL_SERVICE_NAME": "node-burst",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_TRACES_EXPORTER": "none",
    }
    sdk_clock = tmp_path / "sdk-clock.json"
    sdk_clock.write_text(json.dumps(node_burst(BURST, None)))
    one_ms = tmp_path / "one-ms.json"
    one_ms.write_text(
        json.dumps(
            [
                {**s, "attributes": {**s["attributes"], "luna.request_id": f"http-{i}"}}
                for i, s in enumerate(node_burst(BURST, MS_ALIGNED))
            ]
        )
    )
    with Serve(env) as serve:
        run_node_app(
            "grpc",
            f"http://{serve.grpc_target}",
            [],
            {**node_env, "OTEL_LUNA_TEST_CLOCK": "sdk"},
            spans_file=sdk_clock,
        )
        run_node_app(
            "http/protobuf", f"{serve.http_url}/v1/traces", [], node_env, spans_file=one_ms
        )
        stored = settle(influxdb1, influxdb1_database, 2 * BURST)
    expected = [f"node-{i}" for i in range(BURST)] + [f"http-{i}" for i in range(BURST)]
    assert Counter(stored) == Counter(expected)


def test_resent_identical_request_adds_no_point(
    influxdb1: InfluxDB1, influxdb1_database: str
) -> None:
    """An OTLP client retrying the very same request (spans of one start time) writes the same
    points again: InfluxDB still holds one per request."""
    spans, ids = same_start_spans(200, MS_ALIGNED)
    body = trace_request(spans).SerializeToString()
    with Serve(serve_env(influxdb1.url, influxdb1_database)) as serve:
        for _ in range(2):
            code, details, _, _ = grpc_call(serve.grpc_target, body)
            assert code is grpc.StatusCode.OK, details
        settle(influxdb1, influxdb1_database, len(ids))
    assert Counter(stored_ids(influxdb1, influxdb1_database)) == Counter(ids)


def test_zipkin_style_root_spans_stay_apart_and_cheap() -> None:
    """Zipkin-style senders give a root span the low 64 bits of its trace id as span id: the
    span's identity (not a mix of its ids) keeps such spans of one tick apart, and their moves
    are drawn apart too (no walk through every held time)."""
    mapper = RequestMapper()
    http = {"http.request.method": "GET", "http.route": "/z", "http.response.status_code": 200}
    times = set()
    for trace_id in range(1, 4001):  # 64-bit trace ids, span id = trace id
        (point,) = mapper.add(
            SpanRecord(http, True, trace_id, trace_id, None, T_NS, T_NS + 5, False, "s")
        )
        times.add(point.time_ns)
    assert len(times) == 4000
    assert mapper.times.collisions < 4000 + 400
