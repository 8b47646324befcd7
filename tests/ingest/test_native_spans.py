"""The compiled span path (``native/sdk_spans.h``, :class:`~otel_luna.ingest._native.NativeSpans`)
against the pure-Python one, the reference: whatever spans the compiled pass chooses to take,
the two write the same lines and keep the same state.

The differential test makes random sequences of batches of SDK spans - request trees made by a
real ``TracerProvider`` (one per service, interleaved), and hand-made ``ReadableSpan`` objects
for what no provider makes (no end, no attributes or a plain dict, ids and times past int64, a
missing slot, ...) - and exports each batch through two :class:`~otel_luna.LunaSpanExporter`:
one with the compiled pass, one without (``otel_luna.ingest._native.NATIVE`` None while it is
built). After every export it compares the lines handed to the delivery (exact, in order), the
export's result, the ingest's counts and the span mapper's state: the ended spans of both
generations, the waiting ``luna.*`` data, the times of both generations, the collisions. The
mappers get small generations, so that they swap inside the compiled pass too. SERVER spans
mostly repeat the attributes of earlier ones, so the caches are warm and the compiled pass meets
each edge itself (``--hypothesis-show-statistics`` shows how many spans it took). The encoder's
own compiled common case is on in both (``tests/encoding/test_accelerator.py`` holds it to the
pure-Python encoder).

Plain tests show the compiled pass takes the common case (no ``RequestMapper.add`` call for a
batch of plain requests), walk the edges of its line buffer and of the time window one by one,
and keep the differences this test found. The module imports ``otel_luna._native``: without the
extension, the test run fails at collection.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType, SimpleNamespace
from typing import Any, NamedTuple

import pytest
from hypothesis import currently_in_test_context, event, given, settings
from hypothesis import strategies as st
from opentelemetry.attributes import BoundedAttributes
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

from otel_luna import _native  # type: ignore[attr-defined]  # not built: fails at collection
from otel_luna._compiled import NATIVE
from otel_luna._exporter import LunaSpanExporter
from otel_luna.ingest import _ingest as ingest_module
from otel_luna.ingest import _native as native_spans
from otel_luna.mapping._requests import RequestMapper, _RequestData
from otel_luna.outcomes import Reason
from otel_luna.schema._keys import MAX_TAG_VALUE_BYTES
from otel_luna.settings import Settings
from otel_luna.testing import InMemorySink

#: The wall clock of every export (the ingest's time window is around it).
NOW = 1_700_000_000_000_000_000
SECOND = 10**9
SAMPLED = TraceFlags(TraceFlags.SAMPLED)
INT64 = 2**63
#: (max_time_ahead, max_time_age): the default, a bounded age, no bound at all.
WINDOWS = ((600.0, 0.0), (600.0, 3600.0), (0.0, 0.0))
TRACES = (0x5B8EFFF798038103D269B633813FC60C, 0xABC, 2**128 - 1)


def mostly(common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any], odds: int = 8) -> Any:
    """``common``, and ``rare`` once in ``odds``: the caches warm, each edge now and then."""
    return st.integers(0, odds - 1).flatmap(lambda pick: rare if pick == 0 else common)


Attributes = dict[str, Any]


class Parts(NamedTuple):
    """Attributes of one kind: those of most requests, and the edges."""

    common: list[Attributes]
    rare: list[Attributes]

    def drawn(self, odds: int) -> Any:
        """A common one, a rare one once in ``odds``."""
        return mostly(st.sampled_from(self.common), st.sampled_from(self.rare), odds)


# -- attributes ------------------------------------------------------------------------------

METHODS = Parts(
    [
        {"http.request.method": "GET"},
        {"http.method": "POST"},
        {"http.request.method": "GET", "http.method": "GET"},
    ],
    [
        {},
        {"http.request.method": "_OTHER"},
        {"http.request.method": "_OTHER", "http.request.method_original": "PURGE"},
        {"http.method": "_OTHER", "http.request.method_original": "bad method"},
        {"http.request.method": "PATCH", "http.request.method_original": "anything"},
        {"http.request.method": "get me"},
        {"http.method": ""},
        {"http.request.method": 5},
        {"http.request.method": "X" * 40},
        {"http.request.method": "CUSTOM"},
        {"http.request.method": True},
    ],
)
ROUTES = Parts(
    [{"http.route": "/r"}, {"http.route": "/items/{id}"}, {"http.route": "/items/<int:item_id>"}],
    [
        {},
        {"http.route": ""},
        {"http.route": 7},
        {"http.route": ("/a",)},
        {"http.route": "/" + "x" * 70_000},  # over 65535: refused before templating
        {"http.route": "/" + "y" * 5_000},  # a line longer than the compiled pass's buffer
        {"http.route": "/" + "z" * 16_380},  # a key just too long for the short-key check
        *({"http.route": "/" + "w" * length} for length in (3960, 3980, 3995, 4020, 4060)),
        {"http.route": "/é"},
        {"http.route": "/a b,c=d"},
        {"http.route": "/a\nb"},
        {"http.route": "/a\\"},
        {"http.route": "/\ud800"},
        {"http.target": "/path?q=1"},
        {"url.full": "http://h/x/y"},
    ],
)
STATUSES = Parts(
    [
        {"http.response.status_code": 200},
        {"http.status_code": 200},
        {"http.response.status_code": 201},
    ],
    [
        {},
        {"http.response.status_code": "200"},
        {"http.status_code": 302},
        {"http.response.status_code": 301},
        {"http.response.status_code": 100},
        {"http.response.status_code": 399},
        {"http.response.status_code": 400},
        {"http.response.status_code": 404},
        {"http.response.status_code": 405},
        {"http.response.status_code": 499},
        {"http.response.status_code": 500},
        {"http.response.status_code": 599},
        {"http.response.status_code": "404"},
        {"http.response.status_code": True},
        {"http.response.status_code": 200.0},
        {"http.response.status_code": 1000},
        {"http.response.status_code": -1},
        {"http.response.status_code": "abc"},
        {"http.response.status_code": "2000"},
        {"http.response.status_code": 2**70},
        {"http.response.status_code": 200, "http.status_code": 500},
    ],
)
#: Values only a hand-made span's plain dict holds (the SDK drops or converts them).
HAND_ONLY_PARTS: list[Attributes] = [
    {"http.route": None},
    {"http.route": ["/list"]},
    {"http.route": MappingProxyType({"a": 1})},
    {"http.response.status_code": None},
    {"http.response.status_code": [200]},
    {"http.response.status_code": float("nan")},
    {"http.request.method": None},
    {"http.request.method": b"GET"},
    {"http.request.method_original": ["x"]},
    {"http.route": type("Route", (str,), {})("/r")},
    {"http.response.status_code": type("Code", (int,), {})(200)},
    {"http.request.method": type("Method", (str,), {})("GET")},
]
LUNA_PARTS: list[Attributes] = [
    {"luna.tag.handler_id": "h1"},
    {"luna.tag.handler_id": "h2"},
    {"luna.tag.handler_id": "é"},
    {"luna.tag.handler_id": "a\\b"},
    {"luna.tag.handler_id": "a\nb"},
    {"luna.tag.handler_id": "x" * (MAX_TAG_VALUE_BYTES + 1)},
    {"luna.tag.handler_id": 3},
    {"luna.tag.handler_id": 2.5},
    {"luna.tag.handler_id": True},
    {"luna.tag.handler_id": ("a", "b")},
    {"luna.tag.handler_id": ""},
    {"luna.tag.handler_id": "\ud800"},
    {"luna.time.download_images_time": 0.25},
    {"luna.time.download_images_time": 1},
    {"luna.time.download_images_time": "0.5"},
    {"luna.time.download_images_time": math.nan},
    {"luna.time.download_images_time": -0.0},
    {"luna.time.download_images_time": 2**70},
    {"luna.field.estimations": 3},
    {"luna.field.estimations": 2.5},
    {"luna.field.estimations": "x"},
    {"luna.request_id": "r-1"},
    {"luna.request_id": 5},
    {"luna.error_code": 11027},
    {"luna.error_code": "E1"},
    {"luna.usages.face_detector": 2},
    {"luna.usages.face_detector": -1},
    {"luna.usages.face_detector": 1.5},
    {"luna.usages.Bad Name": 1},
    {"luna.license.status": "ok"},
    {"luna.license.status": "nope"},
    {"luna.license.status": "ok", "luna.license.liveness_balance": 10},
    {"luna.license.liveness_balance": 10},
    {"luna.no_such_thing": 1},
    {"luna.": 1},
    {"luna.tag.service": "x"},
    {"luna.tag.status_code": "x"},
    {"luna.time.request_id": 1.0},
    {"luna.field.route": "x"},
    {"luna.tag.stage": "a", "luna.time.stage": 0.5},
    {"luna.tag.a b": "x"},
]
OTHER_PARTS: list[Attributes] = [
    {},
    {"db.system": "postgresql"},
    {"asgi.event.type": "http.request"},
    {"asgi.event.type": "http.response.start"},
    {"http.route": "/r", "http.response.status_code": 500},  # HTTP on a span below
    {"lunar": 1, "Luna.tag.x": "y", "luna": 2, "a": 3},  # no luna.* key after all
]
HAND_ONLY = st.sampled_from(HAND_ONLY_PARTS)
LUNA = st.sampled_from(LUNA_PARTS)
OTHER = st.sampled_from(OTHER_PARTS)


@st.composite
def server_http(draw: st.DrawFn, odds: int = 8) -> dict[str, Any]:
    """A SERVER span's HTTP attributes: each part rare once in ``odds``."""
    return {**draw(METHODS.drawn(odds)), **draw(ROUTES.drawn(odds)), **draw(STATUSES.drawn(odds))}


# -- spans -----------------------------------------------------------------------------------

#: How a span is made: by a TracerProvider, or by hand (attributes as BoundedAttributes, a
#: plain dict, or None), and what is odd about a hand-made one.
SDK, BOUNDED, PLAIN, NO_ATTRIBUTES = "sdk", "bounded", "dict", "none"
ODDITIES = (
    "unfinished",  # end_time None
    "no context",
    "no start",
    "float start",
    "status None",
    "parent not a SpanContext",
    "remote flag not a bool",
    "str key subclass",
    "non-str key",
    "mapping attributes",
    "subclass",  # a ReadableSpan subclass: not the exact type
    "not a span",
    "short context",
    "bool span id",
    "resource without attributes",
    "short parent",
    "parent id not an int",
    "_dict not a dict",
)
#: A slot of the SDK's span deleted (``ReadableSpan`` with a slot gone, or made by __new__).
MISSING_SLOTS = (
    "_context",
    "_end_time",
    "_start_time",
    "_kind",
    "_parent",
    "_attributes",
    "_status",
    "_resource",
)


@dataclass
class Spec:
    """One span to make (see :func:`make`)."""

    kind: SpanKind
    trace_id: int
    span_id: int
    parent: tuple[int, bool] | None  # (span id, remote)
    attributes: dict[str, Any]
    error: bool
    start: int
    end: int | None
    service: int  # index into the resources
    made: str = SDK
    odd: str = ""


@dataclass
class Again:
    """The span made for an earlier spec, exported again (the same object)."""

    index: int  # the spec's position in the scenario, counting every batch


@dataclass
class Batch:
    spans: Sequence[Spec | Again]
    advance_ns: int  # the monotonic clock moves on by this before the export
    as_tuple: bool = False  # as SimpleSpanProcessor hands them over (the compiled pass: lists)


@dataclass
class Scenario:
    window: tuple[float, float]
    generations: tuple[int, int]  # the mapper's _ended_generation, its times' _generation
    batches: list[Batch]


START_OFFSETS = st.sampled_from(
    [0, 1, 7, 10, 20, 90, 500, 1000, 3000, 10**6, 2 * 10**6, 123_456_789, 999_999]
)
EDGE_STARTS = st.sampled_from(
    [
        NOW + 601 * SECOND,  # too far ahead (unless no bound)
        NOW - 7200 * SECOND,  # too old with a bounded age
        0,
        10,
        INT64 - 8,  # a multiple of 10 next to the end of int64
        INT64 - 1000,
        INT64 - 2,  # the last time InfluxDB takes
        INT64 - 1,
        INT64,
        2**64,
        -1,
        -10,
        -INT64 - 1,
    ]
)
DURATIONS = mostly(
    st.sampled_from([0, 1, 999, 10**6, 123_456_789]),
    st.sampled_from([-5, -(10**9), 2**53 + 1, 2**62 + 12_345, INT64, 2**64, None]),
)


class Draft:
    """The specs of one scenario, drawn tree by tree."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw
        self.templates = draw(st.lists(server_http(odds=4), min_size=1, max_size=3))
        self.next_id = draw(st.sampled_from([1, 2**32, 2**64 - 200]))
        self.ids: list[int] = []
        self.starts: list[int] = []
        self.recent: list[dict[str, Any]] = []

    def span_id(self) -> int:
        draw = self.draw
        if self.ids and draw(st.integers(0, 15)) == 0:  # a span id seen before
            return draw(st.sampled_from(self.ids))
        self.next_id += 1
        self.ids.append(self.next_id)
        return self.next_id

    def server_attributes(self) -> dict[str, Any]:
        """A SERVER span's attributes: mostly those of an earlier request or a template (their
        tag sets cached: the compiled pass meets what they hold), else new ones."""
        draw = self.draw
        pick = draw(st.integers(0, 7))
        if pick < 4 and self.recent:
            attributes = dict(draw(st.sampled_from(self.recent)))
        elif pick < 7:
            attributes = dict(draw(st.sampled_from(self.templates)))
        else:
            attributes = draw(server_http())
            if draw(st.integers(0, 3)) == 0:
                attributes.update(draw(LUNA))
        self.recent.append(attributes)
        return attributes

    def start(self) -> int:
        draw = self.draw
        pick = draw(st.integers(0, 9))
        if pick < 7 or (not self.starts and pick < 9):
            start = NOW - draw(st.integers(1, 3)) * SECOND + draw(START_OFFSETS)
        elif pick < 9:
            start = draw(st.sampled_from(self.starts))  # the same start: a collision
        else:
            start = draw(EDGE_STARTS)
        self.starts.append(start)
        return start

    def made(self, spec: Spec) -> Spec:
        """How the spec is made: mostly by a provider; by hand with its oddities."""
        draw = self.draw
        ids_valid = 0 < spec.trace_id < 2**128 and 0 < spec.span_id < 2**64
        parent_valid = spec.parent is None or 0 < spec.parent[0] < 2**64
        times_valid = spec.end is not None
        if (
            ids_valid
            and parent_valid
            and times_valid
            and not spec.odd
            and draw(st.integers(0, 3))
            and all(type(value) is not type(None) for value in spec.attributes.values())
        ):
            spec.made = SDK
            return spec
        spec.made = draw(st.sampled_from([BOUNDED, PLAIN, PLAIN, NO_ATTRIBUTES]))
        if spec.made == NO_ATTRIBUTES:
            spec.attributes = {}
        elif spec.made == PLAIN and draw(st.integers(0, 3)) == 0:
            spec.attributes = {**spec.attributes, **draw(HAND_ONLY)}
        return spec

    def ids_of_hand(self, trace_id: int, span_id: int) -> tuple[int, int]:
        """Ids a provider never makes, now and then."""
        draw = self.draw
        if draw(st.integers(0, 11)) == 0:
            trace_id = draw(st.sampled_from([0, 2**128, -1, 2**200]))
        if draw(st.integers(0, 11)) == 0:
            span_id = draw(st.sampled_from([0, 2**64 - 1, 2**64, -1]))
        return trace_id, span_id

    def tree(self) -> tuple[list[Spec], list[Spec]]:
        """A request (or a root of another kind) and the spans below it: (the spans ending
        with it, children first; the spans ending after it)."""
        draw = self.draw
        kind = draw(mostly(st.just(SpanKind.SERVER), st.sampled_from(list(SpanKind)), odds=4))
        trace_id = draw(mostly(st.sampled_from(TRACES[:2]), st.sampled_from(TRACES), odds=4))
        if draw(st.integers(0, 7)) == 0:
            trace_id = draw(st.integers(1, 2**128 - 1))
        root_id = self.span_id()
        parent: tuple[int, bool] | None = None
        if draw(st.integers(0, 5)) == 0:  # a remote parent: another service's, or a known id
            known = draw(st.sampled_from(self.ids)) if self.ids else 99
            parent = (draw(st.sampled_from([known, 12345])), True)
        elif draw(st.integers(0, 9)) == 0:  # a local parent that is no span of this batch
            parent = (draw(st.sampled_from([*self.ids, 424242])), False)
        if kind == SpanKind.SERVER:
            attributes = self.server_attributes()
        else:
            attributes = {**draw(OTHER), **(draw(LUNA) if draw(st.booleans()) else {})}
        if draw(st.integers(0, 9)) == 0:
            attributes.update(draw(OTHER))
        start = self.start()
        duration = draw(DURATIONS)
        root = Spec(
            kind,
            trace_id,
            root_id,
            parent,
            attributes,
            error=draw(st.integers(0, 9)) == 0,
            start=start,
            end=None if duration is None else start + duration,
            service=draw(mostly(st.sampled_from([0, 1]), st.sampled_from([2, 3, 4]), odds=6)),
        )
        # children (and their children), ending before the root or after it (late)
        before: list[Spec] = []
        after: list[Spec] = []
        family = [root]
        for _ in range(draw(st.integers(0, 3))):
            above = draw(st.sampled_from(family))
            child_kind = draw(
                mostly(
                    st.sampled_from([SpanKind.INTERNAL, SpanKind.CLIENT]),
                    st.sampled_from(list(SpanKind)),
                )
            )
            child_attributes = dict(draw(OTHER))
            if draw(st.integers(0, 3)) == 0:
                child_attributes.update(draw(LUNA))
                if draw(st.integers(0, 3)) == 0:
                    child_attributes.update(draw(LUNA))
            if child_kind == SpanKind.SERVER:
                child_attributes.update(draw(server_http()))
            child_start = (
                above.start + draw(START_OFFSETS) if abs(above.start) < INT64 else self.start()
            )
            child = Spec(
                child_kind,
                root.trace_id,
                self.span_id(),
                (above.span_id, False),
                child_attributes,
                error=draw(st.integers(0, 9)) == 0,
                start=child_start,
                end=child_start + draw(st.sampled_from([0, 1, 10, 1000])),
                service=root.service if draw(st.integers(0, 7)) else 1 - root.service % 2,
            )
            family.append(child)
            (after if draw(st.integers(0, 7)) == 0 else before).append(child)
        # children before their parents (a child drawn later is below the earlier or beside)
        ending = [*reversed(before), root]
        for spec in [*ending, *after]:
            self.made(spec)
            if spec.made != SDK:
                spec.trace_id, spec.span_id = self.ids_of_hand(spec.trace_id, spec.span_id)
        return ending, list(reversed(after))

    def odd(self) -> Spec:
        """A hand-made span with something no provider makes."""
        draw = self.draw
        odd = draw(
            st.one_of(
                st.sampled_from(ODDITIES),
                st.sampled_from(MISSING_SLOTS).map(lambda slot: "missing " + slot),
                st.just("made by __new__"),
            )
        )
        start = self.start()
        spec = Spec(
            draw(st.sampled_from([SpanKind.SERVER, SpanKind.INTERNAL])),
            TRACES[0],
            self.span_id(),
            draw(st.sampled_from([None, (1, False), (2, True)])),
            self.server_attributes(),
            error=False,
            start=start,
            end=start + 10,
            service=0,
            made=draw(st.sampled_from([BOUNDED, PLAIN])),
            odd=odd,
        )
        return spec


GENERATIONS = st.sampled_from([1, 2, 3, 5, 100_000])
ADVANCES = mostly(st.sampled_from([0, 1, SECOND]), st.just(301 * SECOND), odds=10)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """1 to 4 batches of 1 to 6 request trees, a span of an earlier tree's ending late, an
    odd span, a span exported again, now and then in a random order."""
    window = draw(st.sampled_from(WINDOWS))
    generations = (draw(GENERATIONS), draw(GENERATIONS))
    draft = Draft(draw)
    batches: list[Batch] = []
    late: list[Spec] = []
    made: list[Spec] = []
    for _ in range(draw(st.integers(1, 4))):
        spans: list[Spec | Again] = []
        now_late = draw(st.booleans())
        if late and now_late:  # spans ending after their request, a batch later
            spans.extend(late)
            late = []
        for _ in range(draw(st.integers(1, 6))):
            ending, after = draft.tree()
            spans.extend(ending)
            if draw(st.booleans()):
                spans.extend(after)
            else:
                late.extend(after)
        if draw(st.integers(0, 3)) == 0:
            spans.insert(draw(st.integers(0, len(spans))), draft.odd())
        if made and draw(st.integers(0, 5)) == 0:  # a span of an earlier batch again
            again = Again(draw(st.integers(0, len(made) - 1)))
            spans.insert(draw(st.integers(0, len(spans))), again)
        if draw(st.integers(0, 7)) == 0:
            spans = draw(st.permutations(spans))
        made.extend(span for span in spans if isinstance(span, Spec))
        batches.append(Batch(spans, draw(ADVANCES), as_tuple=draw(st.integers(0, 7)) == 0))
    return Scenario(window, generations, batches)


# -- making the spans ------------------------------------------------------------------------


class _Ids(IdGenerator):
    """The ids the next span gets."""

    def __init__(self) -> None:
        self.span_id = self.trace_id = 1

    def generate_span_id(self) -> int:
        return self.span_id

    def generate_trace_id(self) -> int:
        return self.trace_id


RESOURCES = (
    Resource.create({"service.name": "svc"}),
    Resource.create({"service.name": "billing"}),
    Resource.create({"service.name": "sérvice"}),  # a prefix that is no ASCII
    Resource({}),  # unknown_service
    Resource.create({"service.name": "a b,c=d"}),  # escaped
)


class _Provider:
    def __init__(self, resource: Resource) -> None:
        self.ids = _Ids()
        self.memory = InMemorySpanExporter()
        self.provider = TracerProvider(
            resource=resource, id_generator=self.ids, shutdown_on_exit=False
        )
        self.provider.add_span_processor(SimpleSpanProcessor(self.memory))
        self.tracer = self.provider.get_tracer("t")


_providers: dict[int, _Provider] = {}


def _provider(service: int) -> _Provider:
    if service not in _providers:
        _providers[service] = _Provider(RESOURCES[service])
    return _providers[service]


class _SubSpan(ReadableSpan):
    pass


class _Key(str):
    pass


def make(spec: Spec) -> Any:
    """The span ``spec`` describes."""
    return sdk_span(spec) if spec.made == SDK else hand_made(spec)


def sdk_span(spec: Spec) -> ReadableSpan:
    """Made by a provider: its BoundedAttributes, its checks."""
    maker = _provider(spec.service)
    maker.ids.span_id, maker.ids.trace_id = spec.span_id, spec.trace_id
    inside = None
    if spec.parent is not None:
        above = SpanContext(spec.trace_id, spec.parent[0], spec.parent[1], SAMPLED)
        inside = set_span_in_context(NonRecordingSpan(above))
    span = maker.tracer.start_span(
        "s", context=inside, kind=spec.kind, attributes=spec.attributes, start_time=spec.start
    )
    if spec.error:
        span.set_status(Status(StatusCode.ERROR))
    span.end(end_time=spec.end)
    (made,) = maker.memory.get_finished_spans()
    maker.memory.clear()
    return made


def hand_made(spec: Spec) -> Any:
    """Made by hand, with its oddity."""
    odd = spec.odd
    attributes: Any = spec.attributes
    if spec.made == BOUNDED:
        attributes = BoundedAttributes(attributes=attributes, immutable=False)
    elif spec.made == NO_ATTRIBUTES:
        attributes = None
    if odd == "non-str key":
        attributes = {**spec.attributes, 1: "x"}
    elif odd == "str key subclass":
        attributes = {_Key("http.route"): "/r", **spec.attributes}
    elif odd == "mapping attributes":
        attributes = MappingProxyType(dict(spec.attributes))
    elif odd == "_dict not a dict":
        attributes = BoundedAttributes(attributes=spec.attributes, immutable=False)
        attributes._dict = OrderedDict(attributes._dict)
    context = SpanContext(spec.trace_id, spec.span_id, False, SAMPLED)
    if odd == "short context":
        context = tuple.__new__(SpanContext, (spec.trace_id,))
    elif odd == "bool span id":
        context = tuple.__new__(SpanContext, (spec.trace_id, True, False))
    parent: Any = None
    if spec.parent is not None:
        parent = SpanContext(spec.trace_id, spec.parent[0], spec.parent[1], SAMPLED)
        if odd == "parent not a SpanContext":
            parent = tuple(parent)
        elif odd == "remote flag not a bool":
            parent = tuple.__new__(SpanContext, (spec.trace_id, spec.parent[0], 0))
        elif odd == "short parent":
            parent = tuple.__new__(SpanContext, (spec.trace_id, spec.parent[0]))
        elif odd == "parent id not an int":
            parent = tuple.__new__(SpanContext, (spec.trace_id, str(spec.parent[0]), False))
    status = Status(StatusCode.ERROR) if spec.error else Status(StatusCode.UNSET)
    kind = _SubSpan if odd == "subclass" else ReadableSpan
    span = kind(
        "s",
        context=None if odd == "no context" else context,
        parent=parent,
        resource=RESOURCES[spec.service],
        attributes=attributes,
        kind=spec.kind,
        status=status,
        start_time=None if odd == "no start" else spec.start,
        end_time=None if odd == "unfinished" else spec.end,
    )
    if odd == "float start":
        span._start_time = float(spec.start)  # type: ignore[assignment]
    elif odd == "resource without attributes":
        span._resource = SimpleNamespace()  # type: ignore[assignment]
    elif odd == "status None":
        span._status = None  # type: ignore[assignment]
    elif odd == "not a span":
        return SimpleNamespace(**vars(span))
    elif odd.startswith("missing "):
        delattr(span, odd.removeprefix("missing "))
    elif odd == "made by __new__":
        return ReadableSpan.__new__(ReadableSpan)
    return span


def materialised(scenario: Scenario) -> list[list[Any]]:
    """The batches' spans; a span exported again is the same object."""
    made: list[Any] = []
    batches = []
    for batch in scenario.batches:
        spans = []
        for spec in batch.spans:
            if isinstance(spec, Again):
                spans.append(made[spec.index])
            else:
                span = make(spec)
                made.append(span)
                spans.append(span)
        batches.append(spans)
    return batches


# -- the two exporters -----------------------------------------------------------------------


class _Clock:
    """The ingest's clock (``time`` of otel_luna.ingest._ingest): the wall clock stands at
    :data:`NOW`, the monotonic one moves as a batch says."""

    def __init__(self) -> None:
        self.monotonic_now = 10**15

    def time_ns(self) -> int:
        return NOW

    def monotonic_ns(self) -> int:
        return self.monotonic_now

    monotonic = staticmethod(time.monotonic)


def mapper_state(mapper: Any) -> str:
    """What the mapper keeps between spans, in order (repr: a NaN timing equals itself)."""
    times = mapper.times
    pending = [
        (key, [getattr(data, name) for name in _RequestData.__slots__])
        for key, data in mapper._pending.items()
    ]
    return repr(
        (
            list(mapper._ended.items()),
            list(mapper._ended_before.items()),
            pending,
            mapper._pending_bytes,
            list(times._current.items()),
            list(times._previous.items()),
            times.collisions,
            sorted(mapper.counts.items()),
            sorted(mapper.batch_span_ids),
            {service: sorted(routes) for service, routes in mapper._routes.items()},
            mapper._routes_held,
        )
    )


class Side:
    """A LunaSpanExporter into an InMemorySink, with the compiled pass or without it; what
    each export hands to the delivery is kept."""

    def __init__(self, compiled: bool, settings: Settings, generations: tuple[int, int]) -> None:
        with pytest.MonkeyPatch.context() as patch:
            if not compiled:
                patch.setattr(native_spans, "NATIVE", None)
            self.sink = InMemorySink()
            self.exporter = LunaSpanExporter(settings, sink=self.sink)
        self.ingest = self.exporter._ingest
        assert (self.ingest._native is not None) is compiled
        self.mapper: Any = self.ingest._span_mapper
        assert type(self.mapper) is RequestMapper
        self.mapper._ended_generation, self.mapper.times._generation = generations
        self.submitted: list[list[str]] = []
        delivery: Any = self.ingest.delivery
        submit = delivery.submit

        def capture(lines: list[str]) -> None:
            self.submitted.append(list(lines))
            submit(lines)

        delivery.submit = capture

    def export(self, spans: Sequence[Any]) -> tuple[Any, ...]:
        """(result, the lines handed over, the counts so far, the mapper's state)."""
        before = len(self.submitted)
        result = self.exporter.export(spans)
        return (
            result,
            self.submitted[before:],
            sorted((+self.ingest.mapping_counts()).items()),
            mapper_state(self.mapper),
        )

    def close(self) -> list[str]:
        assert self.exporter.force_flush(10_000)
        self.exporter.shutdown()
        return self.sink.lines


class _Taken:
    """Counts what the compiled pass takes (wraps ``sdk_spans`` behind NativeSpans)."""

    def __init__(self) -> None:
        self.spans = self.calls = 0

    def sdk_spans(self, spans: Any, start: int, *rest: Any) -> tuple[int, int, Any]:
        index, servers, error = _native.sdk_spans(spans, start, *rest)
        self.calls += 1
        self.spans += index - start
        return index, servers, error


def run_both(scenario: Scenario, taken: _Taken | None = None) -> list[tuple[Any, Any]]:
    """Each batch exported by both sides: (compiled, pure) after each, then their sinks'
    lines; ``taken`` counts what the compiled pass took."""
    batches = materialised(scenario)
    ahead, age = scenario.window
    settings = Settings.load(
        {}, spool="memory", max_time_ahead=ahead, max_time_age=age, flush_interval=3600
    )
    clock = _Clock()
    taken = _Taken() if taken is None else taken
    steps: list[tuple[Any, Any]] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ingest_module, "time", clock)
        compiled = Side(True, settings, scenario.generations)
        pure = Side(False, settings, scenario.generations)
        patch.setattr(native_spans, "NATIVE", taken)  # read by NativeSpans at each call
        try:
            for batch, spans in zip(scenario.batches, batches, strict=True):
                clock.monotonic_now += batch.advance_ns
                given = tuple(spans) if batch.as_tuple else spans
                steps.append((compiled.export(given), pure.export(given)))
        finally:
            steps.append((compiled.close(), pure.close()))
    if currently_in_test_context():  # --hypothesis-show-statistics shows how much it takes
        event(f"spans the compiled pass took: {min(taken.spans, 20)}{'+' * (taken.spans >= 20)}")
    return steps


def assert_same(scenario: Scenario, taken: _Taken | None = None) -> None:
    for step, (compiled, pure) in enumerate(run_both(scenario, taken)):
        assert compiled == pure, f"export {step}" if step < len(scenario.batches) else "sinks"


@settings(max_examples=1500, deadline=None)
@given(scenarios())
def test_the_compiled_pass_writes_and_keeps_what_python_does(scenario: Scenario) -> None:
    """Random request trees, both kinds of span, edges among common spans: the same lines,
    results, counts and mapper state after every export, with the compiled pass and without."""
    assert_same(scenario)


# -- the compiled pass takes the common case -------------------------------------------------


def plain_requests(first_id: int, count: int, start: int) -> list[ReadableSpan]:
    """``count`` requests as FastAPI's instrumentation ends them: two INTERNAL children, then
    the SERVER span (200, a route)."""
    made = []
    for number in range(count):
        server_id = first_id + 3 * number
        request_start = start + number * 1_000_003  # free times, none a multiple of 10
        for offset, event_type in ((1, "http.request"), (2, "http.response.start")):
            made.append(
                Spec(
                    SpanKind.INTERNAL,
                    TRACES[0],
                    server_id + offset,
                    (server_id, False),
                    {"asgi.event.type": event_type},
                    error=False,
                    start=request_start + offset,
                    end=request_start + 10 * offset + 1,
                    service=0,
                )
            )
        made.append(
            Spec(
                SpanKind.SERVER,
                TRACES[0],
                server_id,
                None,
                {
                    "http.request.method": "GET",
                    "http.route": "/items/{id}",
                    "http.response.status_code": 200,
                },
                error=False,
                start=request_start,
                end=request_start + 123_457,
                service=0,
            )
        )
    return [make(spec) for spec in made]


def test_the_extension_is_built_and_used() -> None:
    """Not built (or OTEL_LUNA_PURE_PYTHON set), the exporter would map every span in Python."""
    assert NATIVE is _native
    side = Side(True, Settings.load({}, spool="memory"), (50_000, 32_768))
    try:
        assert isinstance(side.ingest._native, native_spans.NativeSpans)
        assert side.ingest.span_filter.take is side.ingest._native
    finally:
        side.close()


def test_the_compiled_pass_takes_plain_requests_and_their_children(
    monkeypatch: pytest.MonkeyPatch, mapped_records: list[Any]
) -> None:
    """After one request made the caches warm, a batch of plain requests (200, a route, two
    INTERNAL children each) is taken by the compiled pass whole: no RequestMapper.add call, no
    record, and the lines the pure-Python path writes."""
    monkeypatch.setattr(ingest_module, "time", _Clock())
    settings = Settings.load({}, spool="memory", flush_interval=3600)
    compiled = Side(True, settings, (50_000, 32_768))
    pure = Side(False, settings, (50_000, 32_768))
    warm_up = plain_requests(1000, 1, NOW - 5 * SECOND + 1)
    batch = plain_requests(2000, 100, NOW - 4 * SECOND + 1)
    added = mapped_records
    taken = _Taken()
    monkeypatch.setattr(native_spans, "NATIVE", taken)
    try:
        assert compiled.export(warm_up) == pure.export(warm_up)
        added.clear()
        taken.spans = taken.calls = 0
        result = compiled.export(batch)
        assert added == []  # not one span for the Python mapper
        assert (taken.calls, taken.spans) == (1, len(batch))
        assert result == pure.export(batch)
        assert len(added) == 100  # the pure-Python side: every SERVER span
        (lines,) = result[1]
        assert len(lines) == 100
        assert lines[0].startswith(
            "requests,route=GET:/items/{id},service=svc,status_code=200 request_id="
        )
        assert dict(result[2])[Reason.SERVER_SPANS] == 101
    finally:
        assert compiled.close() == pure.close()


# -- edges met with warm caches, one by one --------------------------------------------------

PLAIN_REQUEST = {
    "http.request.method": "GET",
    "http.route": "/r",
    "http.response.status_code": 200,
}


def request(span_id: int, start: int, end: int | None = None, **attributes: Any) -> Spec:
    """A plain SERVER span of service ``svc``; ``attributes`` replace the HTTP ones (``_`` for
    ``.`` in their names)."""
    given = {key.replace("_", "."): value for key, value in attributes.items()}
    return Spec(
        SpanKind.SERVER,
        TRACES[0],
        span_id,
        None,
        {**PLAIN_REQUEST, **given},
        error=False,
        start=start,
        end=start + 123_456_789 if end is None else end,
        service=0,
    )


def test_lines_at_the_edges_of_the_compiled_buffer() -> None:
    """Routes whose line ends just inside or past the compiled pass's 4096-byte line, at each
    of its parts (the prefix, the request id, the field key, the duration, the time): each
    request twice in a batch, the second meeting its cached tag set and prefix."""
    specs = []
    for number, length in enumerate(range(3940, 4070)):
        for twice in (1, 2):
            span_id = 2 * number + twice
            specs.append(
                request(span_id, NOW - SECOND + 1 + 1000 * span_id, http_route="/" + "w" * length)
            )
    taken = _Taken()
    assert_same(Scenario(WINDOWS[0], (100_000, 32_768), [Batch(list(specs), 0)]), taken)
    assert 0 < taken.spans < len(specs) // 2  # the short ones, not past the buffer


@pytest.mark.parametrize("window", WINDOWS)
def test_times_at_the_edges_of_the_window_and_of_influxdb(window: tuple[float, float]) -> None:
    """Each start after a request that made the caches warm: the window's bounds (a multiple
    of 10 is spread past them), InfluxDB's last times, 0, negative, past int64."""
    latest, earliest = NOW + 600 * SECOND, NOW - 3600 * SECOND
    starts = [
        *(latest + offset for offset in (-11, -1, 0, 1, 9)),
        *(earliest + offset for offset in (-1, 0, 1, 9)),
        0,
        10,
        1000,
        INT64 - 2,
        INT64 - 1,
        INT64 - 11,  # a multiple of 10 spread within int64
        INT64,
        2**64,
        -1,
        -10,
    ]
    specs = []
    for number, start in enumerate(starts):
        specs.append(request(2 * number + 1, NOW - SECOND + 1 + 1000 * number))
        specs.append(request(2 * number + 2, start, start + 5))
    taken = _Taken()
    assert_same(Scenario(window, (100_000, 32_768), [Batch(specs, 0)]), taken)
    assert taken.spans >= len(starts)


@pytest.mark.parametrize("made", [SDK, PLAIN])
def test_every_edge_met_with_warm_caches(made: str) -> None:
    """Each edge the strategies hold, on a plain request, twice in a batch: the second meets
    it with the caches the first filled (the random test meets most of them warm only now
    and then)."""
    edges = [
        *METHODS.rare,
        *ROUTES.rare,
        *STATUSES.rare,
        *LUNA_PARTS,
        *OTHER_PARTS,
        *(HAND_ONLY_PARTS if made == PLAIN else []),
    ]
    specs: list[Spec | Again] = []
    for number, edge in enumerate(edges):
        for twice in (1, 2):
            span_id = 2 * number + twice
            spec = request(span_id, NOW - SECOND + 1 + 1000 * span_id)
            specs.append(replace(spec, attributes={**spec.attributes, **edge}, made=made))
    taken = _Taken()
    assert_same(Scenario(WINDOWS[0], (100_000, 32_768), [Batch(specs, 0)]), taken)
    assert taken.spans >= 25  # the plain ones and the edges it may take


# -- differences found -----------------------------------------------------------------------


def test_a_start_next_to_the_end_of_int64_is_out_of_range_in_both() -> None:
    """Found by the differential test. A start that is a multiple of 10 within a millisecond
    of 2**63, with no time window (max_time_ahead = 0): spread() moves it past int64, the
    Python path refuses the point (time_out_of_range); the compiled spread() overflows its
    signed 64 bits and writes the line at a time near -2**63 (-9223372036854775797 for span
    id 0x33 of trace 0xabc, start 2**63 - 8)."""
    warm = Spec(SpanKind.SERVER, 0xABC, 1, None, PLAIN_REQUEST, False, NOW + 1, NOW + 2, service=0)
    specs = [warm, replace(warm, span_id=0x33, start=INT64 - 8, end=INT64 - 8)]
    (compiled, pure), _ = run_both(Scenario(WINDOWS[2], (100_000, 32_768), [Batch(specs, 0)]))
    assert len(pure[1][0]) == 1  # the pure-Python side: the first request's line alone,
    assert (Reason.TIME_OUT_OF_RANGE, 1) in pure[2]  # the second's counted
    assert compiled == pure


@pytest.mark.parametrize("odd", [*(f"missing {slot}" for slot in MISSING_SLOTS), "made by __new__"])
def test_a_readable_span_without_one_of_its_slots_costs_only_itself(odd: str) -> None:
    """Found by the differential test. A ReadableSpan (the exact type) without one of the
    slots the compiled pass reads (deleted, or made by ReadableSpan.__new__): the Python path
    counts that span (export_error, the export FAILURE) and maps the others; the compiled
    pass raises AttributeError out of sdk_spans, the ingest counts one mapping_error and reads
    none of the batch's spans after it (their lines are lost), the export SUCCESS."""
    start = NOW - SECOND + 1
    broken = replace(request(5, start + 10_000), made=BOUNDED, odd=odd)
    batches = [
        Batch([request(1, start)], 0),
        Batch([broken, request(2, start + 1000), request(3, start + 2000)], 0),
    ]
    assert_same(Scenario(WINDOWS[0], (100_000, 32_768), batches))
