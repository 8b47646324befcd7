"""The compiled span pass against hand-made hostile spans the review of issue 21 found it
mishandled (fixed since): a pass that fails part-way wrote the spans it had taken again, and
Python code run mid-pass (a resource's ``repr``, an attribute value's ``__eq__``) could free
what the pass's memos pointed to. The random differential test is
``tests/ingest/test_native_spans.py``."""

from __future__ import annotations

import logging
import time
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from otel_luna._compiled import NATIVE
from otel_luna.ingest import Ingest
from otel_luna.ingest import _sdk as sdk
from otel_luna.settings import Settings
from otel_luna.testing import InMemorySink

assert NATIVE is not None, "otel_luna._native is not built (or OTEL_LUNA_PURE_PYTHON is set)"

TRACE = 0x5B8EFFF798038103D269B633813FC60C
RESOURCE = Resource.create({"service.name": "svc"})
UNSET = Status(StatusCode.UNSET)
ROUTE_200 = {"http.request.method": "GET", "http.route": "/a", "http.response.status_code": 200}


def _ingest(native: bool) -> tuple[Ingest, InMemorySink]:
    sink = InMemorySink()
    ingest = Ingest(Settings.load({}, spool="memory"), sink)
    if native:
        assert ingest._native is not None
    else:  # pure Python: no compiled span pass, no compiled encoder
        ingest._native = None
        ingest.span_filter = ingest.span_filter._replace(take=None)
        ingest._encoder.__dict__.pop("encode_point", None)
    return ingest, sink


def _span(
    span_id: int,
    attributes: Any = None,
    *,
    kind: SpanKind = SpanKind.SERVER,
    parent: Any = None,
    start: int | None = None,
    resource: Resource = RESOURCE,
    status: Status = UNSET,
    context: Any = None,
) -> ReadableSpan:
    start = time.time_ns() - 10**9 + span_id * 1000 + 7 if start is None else start
    return ReadableSpan(
        "s",
        context=SpanContext(TRACE, span_id, False) if context is None else context,
        parent=parent,
        resource=resource,
        attributes=dict(ROUTE_200) if attributes is None else attributes,
        kind=kind,
        status=status,
        start_time=start,
        end_time=start + 12345,
    )


def _state(ingest: Ingest) -> str:
    mapper = ingest._span_mapper
    return repr(
        (
            mapper._ended,
            mapper._ended_before,
            mapper.times._current,
            mapper.times._previous,
            {k: (v.tags, v.times, v.usages, v.fields) for k, v in mapper._pending.items()},
        )
    )


def _written(batches: list[list[Any]], native: bool, between: Any = None) -> Any:
    ingest, sink = _ingest(native)
    services = sdk.ServiceNames()
    states = []
    try:
        for number, batch in enumerate(batches):
            if between is not None:
                between(number, ingest)
            ingest.write_spans(sdk.span_records(batch, services, ingest.span_filter))
            states.append(_state(ingest))
        assert ingest.force_flush(10.0)
        return sink.lines, +ingest.mapping_counts(), states
    finally:
        ingest.shutdown()


class _RaisingKey:
    """A hashable whose comparison with anything else raises."""

    def __init__(self, hashed: int) -> None:
        self.hashed = hashed

    def __hash__(self) -> int:
        return self.hashed

    def __eq__(self, other: object) -> bool:
        if other is self:
            return True
        raise RuntimeError("no comparison")


def test_failed_pass_writes_no_span_twice(caplog: Any) -> None:
    """A compiled pass that fails at a span (an error from the C API: here a comparison in
    ``mapper._pending``; out of memory does the same) keeps the spans it took before it and
    leaves that one to the Python path: no span written twice (it once raised, and the spans
    before were taken again, up to k times), the same lines and counts as pure Python."""
    caplog.set_level(logging.CRITICAL)
    parent = tuple.__new__(
        SpanContext, (TRACE, _RaisingKey(777), False, TraceFlags(0), TraceState(), True)
    )
    child = _span(900, {"luna.time.x_time": 0.5}, kind=SpanKind.INTERNAL, parent=parent)
    batches = [[_span(1), child], [_span(2), _span(3), _span(777), _span(4)]]
    native, pure = _written(batches, True), _written(batches, False)
    assert len(native[0]) == len(set(native[0])), "a line written twice"
    assert native[:2] == pure[:2]


def test_memo_survives_python_code_run_mid_pass() -> None:
    """Python code run mid-pass (``services(resource)`` reads a resource attribute's
    ``repr``) that frees what the pass's memos point to (here it clears
    ``mapper._classified``) changes nothing: the memos hold their own references (borrowed
    ones once read freed memory, and a line got a field its span does not have)."""
    keep: list[Any] = []

    class Sneaky:
        mapper: Any = None

        def __repr__(self) -> str:
            if Sneaky.mapper is not None:
                Sneaky.mapper._classified.clear()
                Sneaky.mapper = None
                keep.append(tuple([None]))
                keep.append(tuple([tuple(["luna.time.dl_time", 0, "zz" + "_time", float])]))
            return "sneaky"

    sneaky_resource = Resource.create({"service.name": "svc"})
    sneaky_resource._attributes = {"service.name": "svc", "x": Sneaky()}  # type: ignore[assignment]
    shared = {**ROUTE_200, "luna.time.dl_time": 0.5}
    other = {**ROUTE_200, "luna.time.zz_time": 0.5}
    base = time.time_ns() - 10**9
    warm = [_span(1, dict(shared), start=base + 1), _span(9, dict(other), start=base + 9)]

    def arm(number: int, ingest: Ingest) -> None:
        if number == 1:
            Sneaky.mapper = ingest._span_mapper

    def batches() -> list[list[Any]]:
        taken = [_span(2, shared, start=base + 2)]
        return [warm, [*taken, _span(3, shared, start=base + 3, resource=sneaky_resource)]]

    native = _written(batches(), True, arm)[0]
    pure = _written(batches(), False, arm)[0]
    assert native == pure
