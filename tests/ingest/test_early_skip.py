"""The early skip: a span the profile's mapper cannot use gets no record, and that changes
nothing written or counted.

The differential tests make random span trees (random kinds, ``luna.*`` and other attributes
on random spans, local, remote or no parents), hand the spans over in a random order in batches
split anywhere, and compare what the ingest writes and counts with the skip
(``Ingest.span_filter`` given to the adapter) and without it: in process (SDK spans) and over
OTLP (the same spans encoded as the OTLP exporter sends them), and, mapper by mapper, for both
profiles' span mappers.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common._internal.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    set_span_in_context,
)

from otel_luna._exporter import LunaSpanExporter
from otel_luna.ingest import Ingest
from otel_luna.ingest import _sdk as sdk
from otel_luna.mapping._records import SpanRecord
from otel_luna.mapping._requests import RequestMapper
from otel_luna.mapping._watchdog import WatchdogMapper
from otel_luna.serve import _otlp as otlp
from otel_luna.serve._receiver import Receiver
from otel_luna.settings import Settings
from otel_luna.testing import InMemorySink
from tests.mapping.test_otlp_paths import memory_settings

TRACE_ID = 0x5B8EFFF798038103D269B633813FC60C
#: (key, value) pairs a span may carry: what the mappers read (luna.*, licence checks,
#: watchdog.*, HTTP), a mistake or two (an unknown luna.* key, a bad value), and what no mapper
#: reads (the ASGI instrumentation's children carry only that).
ATTRIBUTES = (
    ("http.method", "GET"),
    ("http.route", "/6/handlers/{handler_id}"),
    ("http.target", "/6/handlers/7"),
    ("http.status_code", 200),
    ("http.status_code", 500),
    ("asgi.event.type", "http.request"),
    ("db.system", "postgresql"),
    ("luna.tag.handler_id", "h1"),
    ("luna.tag.handler_id", "h2"),
    ("luna.time.download_images_time", 0.25),
    ("luna.time.match_policy_time", 0.5),
    ("luna.field.estimations", 3),
    ("luna.request_id", "r-1"),
    ("luna.error_code", 11027),
    ("luna.usages.detector", 2),
    ("luna.usages.extractor", 1),
    ("luna.usages.bad estimator", 1),
    ("luna.license.status", "ok"),
    ("luna.license.liveness_balance", 10),
    ("luna.no_such_thing", 1),
    ("watchdog.event", "worker_works"),
    ("watchdog.is_error", False),
)
KINDS = tuple(SpanKind)


class _Sequential(IdGenerator):
    """Span ids 1, 2, 3, ... (so a remote parent may be a span of the tree too)."""

    def __init__(self) -> None:
        self.last = 0

    def generate_span_id(self) -> int:
        self.last += 1
        return self.last

    def generate_trace_id(self) -> int:
        return TRACE_ID


@st.composite
def span_trees(draw: st.DrawFn) -> list[ReadableSpan]:
    """Ended SDK spans of one trace, in a random order: each with a random kind, attributes and
    a parent that is none, a remote span (an id of the tree or not) or an earlier span."""
    count = draw(st.integers(1, 10))
    memory = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "svc"}),
        id_generator=_Sequential(),
        shutdown_on_exit=False,
    )
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("t")
    base = time.time_ns() - 10**9
    made: list[Any] = []
    for index in range(count):
        parent = draw(
            st.one_of(
                st.none(),
                st.tuples(st.just("remote"), st.integers(1, count + 2)),
                st.integers(0, index - 1) if index else st.none(),
            )
        )
        if parent is None:
            context = None
        elif isinstance(parent, tuple):
            remote = SpanContext(TRACE_ID, parent[1], True, TraceFlags(TraceFlags.SAMPLED))
            context = set_span_in_context(NonRecordingSpan(remote))
        else:
            context = set_span_in_context(made[parent])
        pairs = draw(st.lists(st.sampled_from(ATTRIBUTES), max_size=5))
        span = tracer.start_span(
            f"s{index}",
            context=context,
            kind=draw(st.sampled_from(KINDS)),
            attributes=dict(pairs),
            start_time=base + index * 1000,
        )
        if draw(st.booleans()):
            span.set_status(Status(StatusCode.ERROR))
        made.append(span)
    for span in made:  # ended in their order; handed over in the order drawn below
        span.end(end_time=span.start_time + draw(st.integers(0, 10**6)))
    spans = list(memory.get_finished_spans())
    provider.shutdown()
    return draw(st.permutations(spans))


@st.composite
def batched(draw: st.DrawFn) -> list[list[ReadableSpan]]:
    spans = draw(span_trees())
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(spans) - 1)), max_size=3)))
    edges = [0, *cuts, len(spans)]
    return [spans[a:b] for a, b in itertools.pairwise(edges) if a < b]


def _written(batches: Sequence[Sequence[ReadableSpan]], skip: bool, otlp_way: bool) -> Any:
    """(lines, counts, each batch's result) of one ingest given the batches."""
    sink = InMemorySink()
    ingest = Ingest(Settings.load({}, spool="memory"), sink)
    services = sdk.ServiceNames()
    results = []
    try:
        for batch in batches:
            only = ingest.span_filter if skip else None
            if otlp_way:
                request = ExportTraceServiceRequest.FromString(
                    encode_spans(batch).SerializeToString()
                )
                records: Any = otlp.span_records(request, only)
            else:
                records = sdk.span_records(batch, services, only)
            results.append(ingest.write_spans(records))
        assert ingest.force_flush(10.0)
        return sink.lines, +ingest.mapping_counts(), results
    finally:
        ingest.shutdown()


@settings(max_examples=150, deadline=None)
@given(batched())
def test_skipping_spans_in_process_changes_no_line_or_count(
    batches: list[list[ReadableSpan]],
) -> None:
    """SDK spans: the same lines, counts and results with the early skip as without it."""
    assert _written(batches, skip=True, otlp_way=False) == _written(
        batches, skip=False, otlp_way=False
    )


@settings(max_examples=100, deadline=None)
@given(batched())
def test_skipping_spans_over_otlp_changes_no_line_or_count(
    batches: list[list[ReadableSpan]],
) -> None:
    """The same spans over OTLP: the same lines, counts and results with the skip as without."""
    assert _written(batches, skip=True, otlp_way=True) == _written(
        batches, skip=False, otlp_way=True
    )


def _mapped(mapper: Any, spans: Sequence[ReadableSpan], skip: bool) -> Any:
    points = []
    for span in spans:
        (record,) = sdk.span_records([span], sdk.ServiceNames())
        assert type(record) is SpanRecord
        marked = any(key.startswith(mapper.prefix) for key in record.attributes)
        parent = span.parent
        local = None if parent is None or parent.is_remote else parent.span_id
        if skip and not mapper.wants(record.is_server, marked, record.span_id, local):
            continue
        points.extend(mapper.add(record))
    return points, mapper.take_counts()


@settings(max_examples=150, deadline=None)
@given(span_trees())
def test_every_span_mapper_wants_every_span_it_can_use(spans: list[ReadableSpan]) -> None:
    """Both profiles' mappers: the points and counts of the spans they want are those of all."""
    for mapper in (RequestMapper, WatchdogMapper):
        assert _mapped(mapper(), spans, skip=True) == _mapped(mapper(), spans, skip=False)


def _fastapi_request() -> list[ReadableSpan]:
    """A SERVER span and the two INTERNAL children FastAPI's ASGI instrumentation makes."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "svc"}), shutdown_on_exit=False
    )
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("t")
    server = tracer.start_span(
        "GET /r", kind=SpanKind.SERVER, attributes={"http.method": "GET", "http.route": "/r"}
    )
    inside = set_span_in_context(server)
    for name, event in (("http receive", "http.request"), ("http send", "http.response.start")):
        child = tracer.start_span(f"GET /r {name}", context=inside)
        child.set_attribute("asgi.event.type", event)
        child.end()
    server.set_attribute("http.status_code", 200)
    server.end()
    return list(memory.get_finished_spans())


@pytest.mark.parametrize("way", ["in process", "over OTLP"])
def test_children_without_luna_attributes_reach_no_mapper(
    mapped_records: list[SpanRecord], way: str
) -> None:
    """The exporter and the receiver hand a request's ASGI children (no ``luna.*`` key,
    nothing waiting for them) to no mapper: only its SERVER span is mapped, and its point
    written as ever."""
    added = mapped_records
    sink = InMemorySink()
    spans = _fastapi_request()
    if way == "in process":
        exporter = LunaSpanExporter(Settings.load({}, spool="memory"), sink=sink)
        exporter.export(spans)
        exporter.shutdown()
    else:
        receiver = Receiver(memory_settings(), sink=sink)
        request = ExportTraceServiceRequest.FromString(encode_spans(spans).SerializeToString())
        assert receiver.accept_traces(request)[:2] == (0, "")
        receiver.shutdown()
    assert [record.is_server for record in added] == [True]
    assert len(sink.lines) == 1
    assert sink.lines[0].startswith("requests,route=GET:/r,service=svc,status_code=200 ")
