"""usages_statistic per request: ``record_usages`` inside a request adds to its span's
``luna.usages.<estimator>`` attributes, and the request mapper writes one point per request
that used an estimator, at its ``requests`` point's time. Units (Hypothesis over span trees),
the helper, the setting, and end to end into a real InfluxDB 1.x (in process, through
``otel-luna serve``, and apps under ``opentelemetry-instrument`` in both modes)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

import otel_luna
from otel_luna import _helpers
from otel_luna._exporter import LunaSpanExporter
from otel_luna.mapping._records import SpanRecord
from otel_luna.mapping._requests import RequestMapper
from otel_luna.outcomes import Reason
from otel_luna.schema import luna as schema
from otel_luna.schema._point import Point
from otel_luna.settings import Settings, SettingsError
from otel_luna.settings._settings import usages_requested
from tests.support.servehelpers import (
    Serve,
    grpc_call,
    serve_env,
    server_spans,
    trace_request,
)
from tests.support.servers import InfluxDB1
from tests.support.waiting import wait_until

T0 = 1_700_000_000_000_000_000
SERVICE = "luna-handlers"
HTTP = {"http.request.method": "POST", "http.route": "/detector", "http.response.status_code": 200}
APPS = Path(__file__).parent.parent / "apps"
VENV_BIN = Path(sys.executable).parent
USAGES = "luna.usages."


def record(
    attributes: dict[str, Any],
    *,
    server: bool = False,
    trace_id: int = 1,
    span_id: int = 2,
    parent: int | None = None,
    start_ns: int = T0,
) -> SpanRecord:
    return SpanRecord(
        attributes, server, trace_id, span_id, parent, start_ns, start_ns + 10**6, False, SERVICE
    )


def problems(mapper: RequestMapper) -> Counter[Reason]:
    """What the mapper counted, but the SERVER spans it saw."""
    counts = mapper.take_counts()
    counts.pop(Reason.SERVER_SPANS, None)
    return counts


def of(points: list[Point], measurement: str) -> list[Point]:
    return [point for point in points if point.measurement == measurement]


# -- the mapper ------------------------------------------------------------------------------


def test_a_request_with_usages_gives_one_point_at_its_requests_time() -> None:
    """A SERVER span with usages: its requests point and one usages_statistic point, tag
    service only, integer fields ``<estimator>_usages``, at the requests point's time."""
    mapper = RequestMapper()
    points = mapper.add(
        record({**HTTP, USAGES + "face_detector": 2, USAGES + "mask_estimator": 1}, server=True)
    )
    (requests,) = of(points, schema.REQUESTS)
    (usages,) = of(points, schema.USAGES_STATISTIC)
    assert usages.tags == (("service", SERVICE),)
    assert usages.fields == {"face_detector_usages": 2, "mask_estimator_usages": 1}
    assert usages.time_ns == requests.time_ns
    assert len(points) == 2 and not problems(mapper)


def test_a_request_without_usages_gives_no_usages_point() -> None:
    """No ``luna.usages.*`` (or only zeros): no usages_statistic point, nothing counted."""
    mapper = RequestMapper()
    assert of(mapper.add(record(HTTP, server=True)), schema.USAGES_STATISTIC) == []
    zero = mapper.add(record({**HTTP, USAGES + "face_detector": 0}, server=True, span_id=3))
    assert of(zero, schema.USAGES_STATISTIC) == [] and len(zero) == 1
    assert not problems(mapper)


def test_a_failed_request_gives_its_usages_point_too() -> None:
    """A request that failed still performed its estimations: requests, errors, usages."""
    points = RequestMapper().add(
        record({**HTTP, "http.response.status_code": 500, USAGES + "face_detector": 1}, server=True)
    )
    assert [point.measurement for point in points] == ["requests", "errors", "usages_statistic"]
    assert len({point.time_ns for point in points}) == 1


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (-1, Reason.ATTRIBUTE_INVALID_USAGE),
        (2.5, Reason.ATTRIBUTE_INVALID_USAGE),
        (True, Reason.ATTRIBUTE_INVALID_USAGE),
        ("3", Reason.ATTRIBUTE_INVALID_USAGE),
        ((1, 2), Reason.ATTRIBUTE_INVALID_USAGE),
        (2**63, Reason.ATTRIBUTE_INVALID_USAGE),
        (float("nan"), Reason.ATTRIBUTE_INVALID_USAGE),
    ],
)
def test_a_bad_usage_value_is_dropped_and_counted(value: Any, reason: Reason) -> None:
    """A value that is no integer >= 0 is left out and counted; the request's other usages
    are written."""
    mapper = RequestMapper()
    points = mapper.add(
        record({**HTTP, USAGES + "face_detector": value, USAGES + "eye_estimator": 4}, server=True)
    )
    (usages,) = of(points, schema.USAGES_STATISTIC)
    assert usages.fields == {"eye_estimator_usages": 4}
    assert problems(mapper) == {reason: 1}


def test_an_integral_float_is_a_count() -> None:
    """3.0 (OTLP/JSON senders may send a whole number as a double) counts as 3."""
    points = RequestMapper().add(record({**HTTP, USAGES + "face_detector": 3.0}, server=True))
    (usages,) = of(points, schema.USAGES_STATISTIC)
    assert usages.fields == {"face_detector_usages": 3}
    assert type(usages.fields["face_detector_usages"]) is int


@pytest.mark.parametrize("name", ["Face", "face detector", "", "1face", "face-detector"])
def test_an_estimator_name_that_is_no_identifier_is_counted(name: str) -> None:
    mapper = RequestMapper()
    points = mapper.add(
        record({**HTTP, USAGES + name: 1, USAGES + "face_detector": 1}, server=True)
    )
    (usages,) = of(points, schema.USAGES_STATISTIC)
    assert usages.fields == {"face_detector_usages": 1}
    assert problems(mapper) == {Reason.ATTRIBUTE_INVALID_ESTIMATOR: 1}


def test_a_root_span_that_is_no_request_writes_its_own_point() -> None:
    """A background job's root span (no parent, not SERVER) with usages: its own point at its
    start; other luna.* data of it stays orphaned (counted) as before."""
    mapper = RequestMapper()
    (point,) = mapper.add(record({USAGES + "body_detector": 5}, start_ns=T0 + 7))
    assert point.measurement == schema.USAGES_STATISTIC and point.time_ns == T0 + 7
    assert point.fields == {"body_detector_usages": 5}
    assert not problems(mapper)
    (point,) = mapper.add(
        record({USAGES + "body_detector": 1, "luna.tag.kind": "job"}, span_id=3, start_ns=T0 + 9)
    )
    assert point.fields == {"body_detector_usages": 1}
    assert problems(mapper) == {Reason.ORPHAN_LUNA_ATTRIBUTES: 1}
    assert mapper.add(record({"luna.tag.kind": "job"}, span_id=4)) == []
    assert problems(mapper) == {Reason.ORPHAN_LUNA_ATTRIBUTES: 1}


def test_a_span_whose_parent_is_remote_writes_its_own_point() -> None:
    """A span continuing a trace from another process (a message consumer, a job started with
    a propagated context) is the root of its process's part: no request of this process takes
    its usages, so it writes its own point at its start; its other luna.* data waits for the
    parent as before."""
    mapper = RequestMapper()
    remote = record(
        {USAGES + "face_detector": 2, "luna.tag.kind": "job"}, span_id=5, parent=9, start_ns=T0 + 3
    )._replace(parent_is_remote=True)
    (point,) = mapper.add(remote)
    assert point.measurement == schema.USAGES_STATISTIC and point.time_ns == T0 + 3
    assert point.fields == {"face_detector_usages": 2}
    assert mapper.pending == 1  # the tag waits for its parent
    (requests,) = mapper.add(record(HTTP, server=True, span_id=9))
    assert ("kind", "job") in requests.tags
    assert not problems(mapper)


def test_the_adapters_tell_a_remote_parent_alike() -> None:
    """The SDK adapter (``parent.is_remote``) and serve's OTLP adapter (span flags) give the
    same records: a remote parent, a local one, none."""
    from otel_luna.ingest._sdk import ServiceNames
    from otel_luna.ingest._sdk import span_records as sdk_records
    from otel_luna.serve import _otlp as otlp

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("remote")
    parent = trace.SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=trace.TraceFlags(1))
    remote = trace.set_span_in_context(trace.NonRecordingSpan(parent))
    with (
        tracer.start_as_current_span("consume", context=remote, kind=trace.SpanKind.CONSUMER),
        tracer.start_as_current_span("inner"),
    ):
        pass
    with tracer.start_as_current_span("job"):
        pass
    spans = memory.get_finished_spans()
    in_process = [r for r in sdk_records(spans, ServiceNames()) if isinstance(r, SpanRecord)]
    over_otlp = [r for r in otlp.span_records(trace_request(spans)) if isinstance(r, SpanRecord)]
    assert [r.parent_is_remote for r in in_process] == [False, True, False]
    assert [r.parent_is_remote for r in over_otlp] == [False, True, False]
    assert [r.parent_span_id for r in in_process] == [r.parent_span_id for r in over_otlp]


def test_usages_of_children_are_summed_into_the_request() -> None:
    """Usages set on spans below the SERVER span (and on it) add up in its one point."""
    mapper = RequestMapper()
    assert mapper.add(record({USAGES + "face_detector": 1}, span_id=4, parent=3)) == []
    assert mapper.add(record({USAGES + "face_detector": 2}, span_id=5, parent=3)) == []
    assert mapper.add(record({USAGES + "eye_estimator": 1}, span_id=3, parent=2)) == []
    points = mapper.add(record({**HTTP, USAGES + "face_detector": 4}, server=True, span_id=2))
    (usages,) = of(points, schema.USAGES_STATISTIC)
    assert usages.fields == {"face_detector_usages": 7, "eye_estimator_usages": 1}
    assert mapper.pending == 0


def test_estimators_count_against_the_user_key_limit() -> None:
    """A request takes at most ``user_key_limit`` user names, estimators included: names past
    it (a child's new estimators, the SERVER span's own new tag) are left out and counted; an
    estimator already held still adds up."""
    mapper = RequestMapper(user_key_limit=3)
    child = {USAGES + f"estimator_{index}": 1 for index in range(5)}
    assert mapper.add(record(child, span_id=3, parent=2)) == []
    assert problems(mapper) == {Reason.TOO_MANY_LUNA_ATTRIBUTES: 2}
    again = {USAGES + "estimator_0": 4, USAGES + "estimator_9": 1}
    assert mapper.add(record(again, span_id=4, parent=2)) == []
    points = mapper.add(record({**HTTP, "luna.tag.kind": "x"}, server=True, span_id=2))
    (usages,) = of(points, schema.USAGES_STATISTIC)
    assert usages.fields == {f"estimator_{i}_usages": 5 if i == 0 else 1 for i in range(3)}
    (requests,) = of(points, schema.REQUESTS)
    assert "kind" not in dict(requests.tags)
    assert problems(mapper) == {Reason.TOO_MANY_LUNA_ATTRIBUTES: 2}  # estimator_9, the tag


def test_spans_without_usages_keep_their_classification_cached() -> None:
    """The new kind costs spans without ``luna.usages.*`` nothing: their key tuple is
    classified once, and holds no usage."""
    mapper = RequestMapper()
    for span_id in range(2, 50):
        mapper.add(record({**HTTP, "luna.time.save_warps_time": 0.1}, server=True, span_id=span_id))
    assert len(mapper._classified) == 1
    ((key, *_),) = next(iter(mapper._classified.values()))
    assert key == "luna.time.save_warps_time"


@st.composite
def requests_trees(draw: st.DrawFn) -> tuple[list[SpanRecord], list[Counter[str]]]:
    """Several requests, each a random span tree with random usages on random spans, their
    spans arriving interleaved in a random order in which every span comes after its
    children (a span ends after the spans it waits for); the usages each request recorded."""
    rng = random.Random(draw(st.integers(0, 2**32)))
    estimators = schema.ESTIMATORS[:4]
    queues: list[list[SpanRecord]] = []
    totals: list[Counter[str]] = []
    next_id = 1
    for request in range(draw(st.integers(1, 5))):
        size = draw(st.integers(1, 12))
        ids = list(range(next_id, next_id + size))
        next_id += size
        parents = [None] + [ids[rng.randrange(index)] for index in range(1, size)]
        total: Counter[str] = Counter()
        records: dict[int, SpanRecord] = {}
        for index, span_id in enumerate(ids):
            usages = {name: rng.randrange(4) for name in rng.sample(estimators, rng.randrange(3))}
            total.update({f"{name}_usages": count for name, count in usages.items() if count})
            attributes = {USAGES + name: count for name, count in usages.items()}
            server = index == 0
            records[span_id] = record(
                {**HTTP, **attributes} if server else attributes,
                server=server,
                trace_id=request + 1,
                span_id=span_id,
                parent=parents[index],
                start_ns=T0,  # one start time for all: the times guard must keep them apart
            )
        children: dict[int, int] = Counter(p for p in parents if p is not None)
        order: list[SpanRecord] = []
        ready = [span_id for span_id in ids if not children[span_id]]
        while ready:
            span_id = ready.pop(rng.randrange(len(ready)))
            order.append(records[span_id])
            parent = records[span_id].parent_span_id
            if parent is not None:
                children[parent] -= 1
                if not children[parent]:
                    ready.append(parent)
        queues.append(order)
        totals.append(total)
    arrivals: list[SpanRecord] = []
    while any(queues):
        queue = rng.choice([queue for queue in queues if queue])
        arrivals.append(queue.pop(0))
    return arrivals, totals


@settings(max_examples=300, deadline=None)
@given(requests_trees())
def test_usages_over_random_trees_sum_to_what_was_recorded(
    trees: tuple[list[SpanRecord], list[Counter[str]]],
) -> None:
    """Whatever the trees and the order of arrival: one usages_statistic point per request
    that used an estimator, none for the others, with exactly its spans' sums, at the time of
    that request's own requests point (distinct from every other request's)."""
    arrivals, totals = trees
    mapper = RequestMapper()
    by_request: dict[int, list[Point]] = {}
    for span in arrivals:
        points = mapper.add(span)
        if span.is_server:
            by_request[span.trace_id - 1] = points
        else:
            assert points == []
    assert mapper.pending == 0 and not problems(mapper).get(Reason.ORPHAN_LUNA_ATTRIBUTES)
    request_times = set()
    for index, total in enumerate(totals):
        points = by_request[index]
        (requests,) = of(points, schema.REQUESTS)
        request_times.add(requests.time_ns)
        usages = of(points, schema.USAGES_STATISTIC)
        if not total:
            assert usages == []
            continue
        (point,) = usages
        assert point.fields == dict(total)
        assert point.time_ns == requests.time_ns
    assert len(request_times) == len(totals)


# -- the helper and the setting ----------------------------------------------------------------


@pytest.fixture
def memory_spans(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[trace.Tracer, InMemorySpanExporter]]:
    """A tracer whose ended spans are kept; the helper in request mode, its counter recorded."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    monkeypatch.setattr(_helpers, "_usages_mode", "request")
    monkeypatch.setattr(_helpers, "_on_counter", None)
    yield provider.get_tracer("usages-test"), memory


class RecordingCounter:
    def __init__(self) -> None:
        self.added: Counter[str] = Counter()

    def add(self, amount: int, attributes: dict[str, str]) -> None:
        self.added[attributes["luna.estimator"]] += amount


def test_record_usages_in_a_request_sums_on_the_span(
    memory_spans: tuple[trace.Tracer, InMemorySpanExporter], monkeypatch: pytest.MonkeyPatch
) -> None:
    """In request mode, calls on one span add up in ``luna.usages.<estimator>``; a zero count
    sets nothing; nothing goes to the counter."""
    tracer, ended = memory_spans
    counter = RecordingCounter()
    monkeypatch.setattr(_helpers, "_counter", counter)
    with tracer.start_as_current_span("request", kind=trace.SpanKind.SERVER):
        otel_luna.record_usages(face_detector=1, liveness_estimator=2)
        otel_luna.record_usages(face_detector=3, mask_estimator=0)
    (span,) = ended.get_finished_spans()
    assert {k: v for k, v in span.attributes.items() if k.startswith(USAGES)} == {
        USAGES + "face_detector": 4,
        USAGES + "liveness_estimator": 2,
    }
    assert not counter.added


def test_record_usages_without_a_recording_span_goes_to_the_counter(
    memory_spans: tuple[trace.Tracer, InMemorySpanExporter], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside any request, or in a trace sampled out, usages go to the counter."""
    counter = RecordingCounter()
    monkeypatch.setattr(_helpers, "_counter", counter)
    otel_luna.record_usages(face_detector=1)
    sampled_out = TracerProvider(sampler=ALWAYS_OFF).get_tracer("off")
    with sampled_out.start_as_current_span("request", kind=trace.SpanKind.SERVER):
        otel_luna.record_usages(face_detector=2)
    assert counter.added == {"face_detector": 3}


def test_interval_mode_puts_every_usage_on_the_counter(
    memory_spans: tuple[trace.Tracer, InMemorySpanExporter], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``usages = interval``: inside a request too, the counter; the span gets nothing."""
    tracer, ended = memory_spans
    counter = RecordingCounter()
    monkeypatch.setattr(_helpers, "_counter", counter)
    monkeypatch.setattr(_helpers, "_usages_mode", "interval")
    with tracer.start_as_current_span("request", kind=trace.SpanKind.SERVER):
        otel_luna.record_usages(face_detector=2)
    assert counter.added == {"face_detector": 2}
    assert not any(key.startswith(USAGES) for key in ended.get_finished_spans()[0].attributes)


def test_bad_counts_are_ignored_in_a_request_with_a_warning(
    memory_spans: tuple[trace.Tracer, InMemorySpanExporter], caplog: pytest.LogCaptureFixture
) -> None:
    """The helper's rules hold in request mode: bad names and counts ignored, never raised."""
    tracer, ended = memory_spans
    _helpers._warned.clear()
    with (
        caplog.at_level(logging.WARNING, logger="otel_luna"),
        tracer.start_as_current_span("request", kind=trace.SpanKind.SERVER),
    ):
        otel_luna.record_usages(**{"Bad Name": 1}, face_detector=-1)
        otel_luna.record_usages(face_detector=True, eye_estimator=1.5)  # type: ignore[arg-type]
        otel_luna.record_usages(eye_estimator=2, liveness_estimator=2**70)  # beyond int64
    assert "not an identifier" in caplog.text and "integer >= 0" in caplog.text
    assert "liveness_estimator: a usage count must be" in caplog.text  # not dropped later
    assert {
        k: v for k, v in ended.get_finished_spans()[0].attributes.items() if k.startswith(USAGES)
    } == {USAGES + "eye_estimator": 2}


def test_the_helper_reads_the_mode_from_the_environment_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With no luna exporter in the process (an app exporting over OTLP), the helper reads
    ``OTEL_EXPORTER_LUNA_USAGES`` (else ``usages`` of the TOML file) once; a bad value is the
    default, never an exception."""
    monkeypatch.delenv("OTEL_EXPORTER_LUNA_CONFIG", raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_LUNA_USAGES", "Interval")
    assert usages_requested() == "interval"
    monkeypatch.setenv("OTEL_EXPORTER_LUNA_USAGES", "sometimes")
    assert usages_requested() == "request"
    monkeypatch.delenv("OTEL_EXPORTER_LUNA_USAGES")
    config = tmp_path / "luna.toml"
    config.write_text('[monitoring]\nusages = "interval"\n')
    monkeypatch.setenv("OTEL_EXPORTER_LUNA_CONFIG", str(config))
    assert usages_requested() == "interval"
    monkeypatch.setattr(_helpers, "_usages_mode", None)
    monkeypatch.setattr(_helpers, "_counter", RecordingCounter())
    otel_luna.record_usages(face_detector=1)
    assert _helpers._usages_mode == "interval"
    config.write_text('[monitoring]\nusages = "request"\n')
    otel_luna.record_usages(face_detector=1)
    assert _helpers._usages_mode == "interval"  # read once


def test_the_usages_setting() -> None:
    """``usages``: request (default) or interval, from the environment, TOML or code."""
    assert Settings.load({}).usages == "request"
    assert Settings.load({"OTEL_EXPORTER_LUNA_USAGES": "interval"}).usages == "interval"
    with pytest.raises(SettingsError, match=r"OTEL_EXPORTER_LUNA_USAGES.*request or interval"):
        Settings.load({"OTEL_EXPORTER_LUNA_USAGES": "daily"})


def test_the_exporters_tell_the_helper_the_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_helpers, "_usages_mode", None)
    LunaSpanExporter(Settings.load({}, enabled=False, usages="interval")).shutdown()
    assert _helpers._usages_mode == "interval"
    LunaSpanExporter(Settings.load({}, enabled=False)).shutdown()
    assert _helpers._usages_mode == "request"


# -- into a real InfluxDB 1.x, in process ------------------------------------------------------


@pytest.fixture
def luna_tracer(
    influxdb1: InfluxDB1, influxdb1_database: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[trace.Tracer, LunaSpanExporter]]:
    """A tracer whose spans the luna span exporter writes to the test's database."""
    monkeypatch.setattr(_helpers, "_usages_mode", None)
    monkeypatch.setattr(_helpers, "_on_counter", None)
    exporter = LunaSpanExporter(
        Settings.load(
            {},
            endpoint=influxdb1.url,
            api_version="1",
            database=influxdb1_database,
            spool="memory",
        )
    )
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("usages-influx"), exporter
    provider.shutdown()


def field_types(influxdb1: InfluxDB1, database: str, measurement: str) -> dict[str, str]:
    answer = influxdb1.query(f"SHOW FIELD KEYS FROM {measurement}", database)
    series = answer["results"][0].get("series") or [{"values": []}]
    return {name: kind for name, kind in series[0]["values"]}


def test_the_seeds_twenty_estimators_in_one_request(
    luna_tracer: tuple[trace.Tracer, LunaSpanExporter],
    influxdb1: InfluxDB1,
    influxdb1_database: str,
) -> None:
    """All 20 estimators of the seed in one request: one point with exactly those 20 integer
    fields, tag service only, at the request's requests point's time."""
    tracer, exporter = luna_tracer
    expected = {name: index + 1 for index, name in enumerate(schema.ESTIMATORS)}
    with tracer.start_as_current_span("POST /detector", kind=trace.SpanKind.SERVER) as span:
        span.set_attributes(HTTP)
        otel_luna.record_usages(**expected)
    assert exporter.force_flush()
    (row,) = influxdb1.select("SELECT * FROM usages_statistic", influxdb1_database)
    assert {k: v for k, v in row.items() if k.endswith("_usages")} == {
        f"{name}_usages": count for name, count in expected.items()
    }
    assert set(row) == {"time", "service", *(f"{name}_usages" for name in expected)}
    assert row["service"]
    types = field_types(influxdb1, influxdb1_database, "usages_statistic")
    assert types == {f"{name}_usages": "integer" for name in expected}
    (requests,) = influxdb1.select("SELECT * FROM requests", influxdb1_database)
    assert requests["time"] == row["time"]


def test_nested_spans_and_awaits_land_in_the_request(
    luna_tracer: tuple[trace.Tracer, LunaSpanExporter],
    influxdb1: InfluxDB1,
    influxdb1_database: str,
) -> None:
    """Usages recorded in nested spans, in tasks across ``await`` and in a thread with the
    request's context, all add up in the request's one point; a request with no estimation
    writes none."""
    tracer, exporter = luna_tracer

    async def stage(name: str, count: int) -> None:
        with tracer.start_as_current_span(f"stage {name}"):
            await asyncio.sleep(0.001)
            otel_luna.record_usages(**{name: count})
            await asyncio.sleep(0)
            with tracer.start_as_current_span("inner"):
                otel_luna.record_usages(face_detector=1)

    async def request(index: int) -> None:
        with tracer.start_as_current_span("POST /detector", kind=trace.SpanKind.SERVER) as span:
            span.set_attributes(HTTP)
            otel_luna.set_request_id(f"r{index}")
            if index % 3 == 2:
                return  # no estimation
            otel_luna.record_usages(face_detector=1)
            await asyncio.gather(stage("eye_estimator", 2), stage("mask_estimator", 3))
            await asyncio.sleep(0)
            otel_luna.record_usages(eye_estimator=1)

    async def main() -> None:
        await asyncio.gather(*(request(index) for index in range(9)))

    asyncio.run(main())
    assert exporter.force_flush()
    requests = {
        row["time"]: row["request_id"]
        for row in influxdb1.select("SELECT * FROM requests", influxdb1_database)
    }
    assert len(requests) == 9
    rows = influxdb1.select("SELECT * FROM usages_statistic", influxdb1_database)
    assert len(rows) == 6
    for row in rows:
        assert requests[row["time"]] in {f"r{i}" for i in range(9) if i % 3 != 2}
        assert (row["face_detector_usages"], row["eye_estimator_usages"]) == (3, 3)
        assert row["mask_estimator_usages"] == 3


def test_another_sender_through_serve_gets_the_same_points(
    influxdb1: InfluxDB1, influxdb1_database: str
) -> None:
    """The same attributes sent over OTLP (as another language's SDK sends them) to
    ``otel-luna serve``: one usages point per request, at its requests point's time."""
    spans, ids = server_spans(
        5, attributes={USAGES + "face_detector": 2, USAGES + "liveness_estimator": 1}
    )
    plain, _ = server_spans(3)
    body = trace_request(spans + plain).SerializeToString()
    with Serve(serve_env(influxdb1.url, influxdb1_database)) as serve:
        code, details, _, _ = grpc_call(serve.grpc_target, body)
        assert code.name == "OK", details
        rows = wait_until(
            lambda: influxdb1.select("SELECT * FROM usages_statistic", influxdb1_database),
            lambda rows: len(rows) >= 5,
            30,
            "the usages points",
        )
        wait_until(
            lambda: influxdb1.select("SELECT * FROM requests", influxdb1_database),
            lambda rows: len(rows) >= 8,
            30,
            "the requests points",
        )
    requests = {
        row["request_id"]: row["time"]
        for row in influxdb1.select("SELECT * FROM requests", influxdb1_database)
    }
    assert len(rows) == 5
    assert {row["time"] for row in rows} == {requests[request_id] for request_id in ids}
    assert all(
        (row["face_detector_usages"], row["liveness_estimator_usages"]) == (2, 1) for row in rows
    )


# -- apps under opentelemetry-instrument ------------------------------------------------------


def run_requests_script(env: dict[str, str], count: int) -> dict[str, Any]:
    done = subprocess.run(
        [
            str(VENV_BIN / "opentelemetry-instrument"),
            sys.executable,
            str(APPS / "usages_requests_script.py"),
            str(count),
        ],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    assert "otel-luna" not in done.stderr, done.stderr  # no warning: the usages are delivered
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("mode", ["request", "interval"])
def test_a_thousand_requests_sum_to_what_was_recorded(
    mode: str, influxdb1: InfluxDB1, influxdb1_database: str
) -> None:
    """1,000 requests (nested spans, awaits, threads) and a background job: the stored sums
    equal what was recorded, in both modes. Request mode: one point per request that used an
    estimator, each at its requests point's time, and the job's outside any request through
    the counter; interval mode: everything through the luna metrics exporter."""
    env = {
        "OTEL_TRACES_EXPORTER": "luna",
        "OTEL_METRICS_EXPORTER": "luna",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_SERVICE_NAME": SERVICE,
        "OTEL_METRIC_EXPORT_INTERVAL": "200",
        "OTEL_EXPORTER_LUNA_ENDPOINT": influxdb1.url,
        "OTEL_EXPORTER_LUNA_API_VERSION": "1",
        "OTEL_EXPORTER_LUNA_DATABASE": influxdb1_database,
        "OTEL_EXPORTER_LUNA_USAGES": mode,
    }
    recorded = run_requests_script(env, 1000)
    totals: dict[str, int] = recorded["usages"]
    columns = ", ".join(f'sum("{name}_usages") AS "{name}"' for name in totals)
    (row,) = influxdb1.select(f"SELECT {columns} FROM usages_statistic", influxdb1_database)
    assert {name: row[name] for name in totals} == totals
    requests = influxdb1.select("SELECT * FROM requests", influxdb1_database)
    assert len(requests) == 1000
    points = influxdb1.select("SELECT * FROM usages_statistic", influxdb1_database)
    request_times = {request["time"] for request in requests}
    at_requests = [point for point in points if point["time"] in request_times]
    if mode == "request":
        assert len(at_requests) == recorded["requests_with_usages"]
        assert len(points) - len(at_requests) >= 1  # the job's, through the counter
    else:
        assert at_requests == []


def traces_only_env(influxdb1: InfluxDB1, database: str, tmp_path: Path) -> dict[str, str]:
    """An app's environment with only the luna traces exporter (metrics and logs off), writing
    to ``database`` of InfluxDB 1.x, its spool under ``tmp_path``."""
    return {
        "OTEL_TRACES_EXPORTER": "luna",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_SERVICE_NAME": SERVICE,
        "OTEL_EXPORTER_LUNA_ENDPOINT": influxdb1.url,
        "OTEL_EXPORTER_LUNA_API_VERSION": "1",
        "OTEL_EXPORTER_LUNA_DATABASE": database,
        "OTEL_EXPORTER_LUNA_SPOOL_DIR": str(tmp_path / "spool"),
        "PYTHONUNBUFFERED": "1",
    }


def test_fastapi_with_only_the_traces_exporter_writes_a_point_per_request(
    influxdb1: InfluxDB1, influxdb1_database: str, tmp_path: Path
) -> None:
    """Acceptance: a FastAPI app under ``opentelemetry-instrument`` (uvicorn) with only
    ``OTEL_TRACES_EXPORTER=luna`` and ``record_usages`` in 3 of its routes: exactly one
    usages_statistic point per such request, at its requests point's time, exact sums; no
    point for the route without usages; no warning."""
    from tests.e2e.test_deployments import UVICORN_RUNNING, started, uvicorn_argv

    env = traces_only_env(influxdb1, influxdb1_database, tmp_path)
    argv = uvicorn_argv("usages_fastapi_app:app")
    import requests as http

    rng = random.Random(20)
    answers: list[dict[str, Any]] = []
    with started(argv, env) as app:
        (url,) = app.wait_for(UVICORN_RUNNING)
        with http.Session() as session:
            for index in range(120):
                path = ("/detector", "/extractor", "/events", "/health")[index % 4]
                faces = rng.randint(0, 4)
                response = session.post(
                    f"{url}{path}", params={"faces": faces, "id": f"q{index}"}, timeout=30
                )
                assert response.status_code == 200, response.text
                answers.append(response.json())
        app.signal(15)
        assert app.wait() == -15, app.output
    assert "otel-luna" not in app.output, app.output
    requests = {
        row["request_id"]: row
        for row in influxdb1.select("SELECT * FROM requests", influxdb1_database)
    }
    assert len(requests) == 120
    points = influxdb1.select("SELECT * FROM usages_statistic", influxdb1_database)
    by_time = {point["time"]: point for point in points}
    assert len(by_time) == len(points)
    used = [answer for answer in answers if answer["usages"]]
    assert len(points) == len(used)
    totals: Counter[str] = Counter()
    for answer in answers:
        request = requests[answer["id"]]
        point = by_time.get(request["time"])
        if not answer["usages"]:
            assert point is None
            continue
        assert point is not None and point["service"] == SERVICE
        assert {k: v for k, v in point.items() if k.endswith("_usages") and v is not None} == {
            f"{name}_usages": count for name, count in answer["usages"].items()
        }
        totals.update(answer["usages"])
    columns = ", ".join(f'sum("{name}_usages") AS "{name}"' for name in totals)
    (row,) = influxdb1.select(f"SELECT {columns} FROM usages_statistic", influxdb1_database)
    assert {name: row[name] for name in totals} == dict(totals)
