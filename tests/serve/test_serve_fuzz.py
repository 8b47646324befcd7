"""Hypothesis fuzzing of OTLP/HTTP's protocol function (``HttpProtocol.handle``), structure
aware: valid OTLP/JSON and protobuf requests with mutated values, values of the wrong type, lone
surrogates, deep nesting, random bytes and gzip bombs within and past the limit.

Whatever arrives: an answer, never an exception; its body a valid ``Export*ServiceResponse`` (200)
or ``google.rpc.Status`` in the request's encoding; no bug path taken (``requests_failed`` stays
0); nothing left held in the in-flight budget. Spans OTLP/JSON cannot read are left out and
reported in the partial success while the valid spans beside them are accepted and written.
"""

from __future__ import annotations

import gzip
import itertools
import json
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from otel_luna.serve import ServeSettings
from otel_luna.serve._protocol import JSON, PROTOBUF, Answer, HttpProtocol
from otel_luna.serve._receiver import Receiver
from otel_luna.testing import InMemorySink

pytestmark = pytest.mark.slow  # Hypothesis runs against a server over real sockets

LIMIT = 256 * 1024  # serve_max_message_bytes here
T0 = 1_700_000_000_000_000_000
FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,  # nothing written into the work tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
_serial = itertools.count()


class Fuzzed:
    """One receiver (memory spool, in-memory sink) and its protocol for the whole module."""

    def __init__(self) -> None:
        self.sink = InMemorySink()
        self.settings = ServeSettings.load(
            {}, spool="memory", flush_interval=3600, serve_max_message_bytes=LIMIT
        )
        self.receiver = Receiver(self.settings, sink=self.sink)
        self.protocol = HttpProtocol(self.receiver, self.settings)

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> Answer:
        failed = self.receiver.counts()["requests_failed"]
        answer = self.protocol.handle(path, headers, body)
        assert self.receiver.counts()["requests_failed"] == failed, answer  # no bug path taken
        check_answer(answer, path, headers)
        assert self.protocol.budget.used == 0
        return answer

    def written(self) -> str:
        assert self.receiver.ingest.force_flush(10)
        return "\n".join(self.sink.lines)


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[Fuzzed]:
    running = Fuzzed()
    yield running
    running.receiver.shutdown()


def check_answer(answer: Answer, path: str, headers: dict[str, str]) -> None:
    """A well-formed OTLP/HTTP answer in the request's encoding."""
    assert answer.status in (200, 400, 413, 415, 503), answer
    encoding = JSON if headers.get("Content-Type", "").startswith(JSON) else PROTOBUF
    assert answer.headers["Content-Type"] == encoding
    if answer.status == 200:
        response_type = (
            ExportTraceServiceResponse if path == "/v1/traces" else ExportMetricsServiceResponse
        )
        if encoding == JSON:
            json_format.Parse(answer.body, response_type())
        else:
            response_type.FromString(answer.body)
        return
    if encoding == JSON:
        status = json_format.Parse(answer.body, status_pb2.Status())
    else:
        status = status_pb2.Status.FromString(answer.body)
    assert status.code != code_pb2.OK and status.message
    if answer.status == 503:
        assert answer.headers["Retry-After"] == "1"


# --------------------------------------------------------------------------- OTLP/JSON spans


def good_span() -> tuple[dict[str, Any], str]:
    """A SERVER span that gives one ``requests`` point, and its request id."""
    serial = next(_serial)
    request_id = f"fuzz-{serial}"
    span = {
        "traceId": f"{serial + 1:032x}",
        "spanId": f"{serial + 1:016x}",
        "name": "GET /fuzz",
        "kind": 2,
        "startTimeUnixNano": str(T0 + serial * 1000),
        "endTimeUnixNano": str(T0 + serial * 1000 + 5_000_000),
        "attributes": [
            {"key": "http.request.method", "value": {"stringValue": "GET"}},
            {"key": "http.route", "value": {"stringValue": "/fuzz"}},
            {"key": "http.response.status_code", "value": {"intValue": "200"}},
            {"key": "luna.request_id", "value": {"stringValue": request_id}},
        ],
    }
    return span, request_id


def _not_an_integer(text: str) -> bool:
    """Whether protobuf's JSON parser refuses ``text`` for an integer field (it takes "12",
    and also "1e3" or "2.0": integer-valued floats)."""
    try:
        int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            return True
        return " " in text or not number.is_integer()
    return False


lone_surrogate = st.integers(0xD800, 0xDFFF).map(chr)
text_with_surrogate = st.tuples(st.text(max_size=5), lone_surrogate, st.text(max_size=5)).map(
    "".join
)
bad_time = st.one_of(
    st.integers(max_value=-1),
    st.integers(min_value=2**64),
    st.integers(max_value=-1).map(str),
    st.integers(min_value=2**64).map(str),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not x.is_integer()),
    st.text(max_size=10).filter(_not_an_integer),
    text_with_surrogate,  # quoted in the parser's error, which the answer carries
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
bad_int_value = st.one_of(
    st.integers(min_value=2**63),
    st.integers(max_value=-(2**63) - 1),
    st.integers(min_value=2**63).map(str),
    st.text(max_size=10).filter(_not_an_integer),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
)
not_a_list = st.one_of(st.integers(), st.text(max_size=5), st.booleans())


def _attribute(value: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": "fuzzed", "value": value}]


def _nested_kvlist(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"stringValue": "deep"}
    for _ in range(depth):
        value = {"kvlistValue": {"values": [{"key": "k", "value": value}]}}
    return value


#: (field, value) changes that make a span unreadable by OTLP/JSON.
bad_change = st.one_of(
    st.tuples(st.sampled_from(["startTimeUnixNano", "endTimeUnixNano"]), bad_time),
    st.tuples(st.just("attributes"), bad_int_value.map(lambda v: _attribute({"intValue": v}))),
    st.tuples(
        st.just("attributes"), text_with_surrogate.map(lambda v: _attribute({"stringValue": v}))
    ),
    st.tuples(st.just("name"), text_with_surrogate),
    st.tuples(st.just("name"), st.one_of(st.integers(), st.booleans(), st.lists(st.text()))),
    st.tuples(st.just("attributes"), not_a_list),
    st.tuples(
        st.sampled_from(["traceId", "spanId"]),
        st.text(min_size=1, max_size=6).map(lambda text: text + "zz"),
    ),
    st.tuples(
        st.just("attributes"),
        st.integers(101, 300).map(lambda depth: _attribute(_nested_kvlist(depth))),
    ),
    st.tuples(st.just("status"), st.one_of(st.integers(), st.booleans())),
)


@st.composite
def bad_span(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:  # not an object at all
        return draw(st.one_of(st.none(), st.integers(), st.text(max_size=5), st.lists(st.none())))
    span, _ = good_span()
    for field, value in draw(st.lists(bad_change, min_size=1, max_size=3)):
        span[field] = value
    return span


@st.composite
def mixed_request(draw: st.DrawFn) -> tuple[dict[str, Any], list[str], int]:
    """An OTLP/JSON traces document with good and bad spans spread over resources and scopes:
    (document, request ids of the good spans, number of bad spans)."""
    good_count = draw(st.integers(0, 6))
    bad = draw(st.lists(bad_span(), max_size=4))
    goods = [good_span() for _ in range(good_count)]
    spans = [span for span, _ in goods] + bad
    order = draw(st.permutations(range(len(spans))))
    spans = [spans[index] for index in order]
    resources: list[dict[str, Any]] = []
    while spans or not resources:
        take = draw(st.integers(1, len(spans))) if spans else 0
        scopes = []
        for part in (spans[: take // 2], spans[take // 2 : take]):
            scopes.append({"scope": {"name": "fuzz"}, "spans": part})
        spans = spans[take:]
        resources.append(
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "fuzz"}}]
                },
                "scopeSpans": scopes,
            }
        )
    return {"resourceSpans": resources}, [request_id for _, request_id in goods], len(bad)


@FUZZ
@given(request=mixed_request(), compress=st.sampled_from([None, "gzip", "deflate"]))
def test_json_good_spans_are_accepted_beside_bad_ones(
    fuzzed: Fuzzed, request: tuple[dict[str, Any], list[str], int], compress: str | None
) -> None:
    document, good_ids, bad = request
    body = json.dumps(document, ensure_ascii=True).encode()  # JSON.stringify escapes surrogates
    headers = {"Content-Type": JSON}
    if compress == "gzip":
        body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
    elif compress == "deflate":
        body, headers["Content-Encoding"] = zlib.compress(body), "deflate"
    answer = fuzzed.handle("/v1/traces", headers, body)
    if bad and not good_ids:
        assert answer.status == 400, answer
        assert "nothing readable" in json.loads(answer.body)["message"]
        return
    assert answer.status == 200, answer
    response = json_format.Parse(answer.body, ExportTraceServiceResponse())
    assert response.partial_success.rejected_spans == bad, response
    if bad:
        assert "malformed_span" in response.partial_success.error_message
    written = fuzzed.written()
    for request_id in good_ids:
        assert f'request_id="{request_id}"' in written


# --------------------------------------------------------------------------- anything else

json_value = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(max_size=8),
        text_with_surrogate,
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*prefix, index))


@st.composite
def mutated_document(draw: st.DrawFn) -> dict[str, Any] | Any:
    """A valid document with up to three places replaced by any JSON value, or removed."""
    document, _, _ = draw(mixed_request())
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(document))
        path = draw(st.sampled_from(paths))
        replacement = draw(json_value)
        if not path:
            document = replacement
            continue
        parent = document
        for step in path[:-1]:
            parent = parent[step]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = replacement
    return document


@FUZZ
@given(
    document=mutated_document(),
    path=st.sampled_from(["/v1/traces", "/v1/metrics"]),
    ascii_only=st.booleans(),
)
def test_any_json_gets_a_well_formed_answer(
    fuzzed: Fuzzed, document: Any, path: str, ascii_only: bool
) -> None:
    body = json.dumps(document, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    answer = fuzzed.handle(path, {"Content-Type": JSON}, body)
    assert answer.status in (200, 400), answer


attribute_value = st.one_of(
    st.text(max_size=8).map(lambda v: AnyValue(string_value=v)),
    st.integers(-(2**63), 2**63 - 1).map(lambda v: AnyValue(int_value=v)),
    st.floats().map(lambda v: AnyValue(double_value=v)),
    st.booleans().map(lambda v: AnyValue(bool_value=v)),
    st.binary(max_size=8).map(lambda v: AnyValue(bytes_value=v)),
)


@st.composite
def protobuf_request(draw: st.DrawFn) -> bytes:
    """A valid OTLP protobuf traces request with random span fields and attributes."""
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for _ in range(draw(st.integers(0, 5))):
        span, _ = good_span()
        added = scope.spans.add(
            trace_id=bytes.fromhex(span["traceId"]),
            span_id=bytes.fromhex(span["spanId"]),
            name=draw(st.text(max_size=10)),
            kind=draw(st.integers(0, 6)),
            start_time_unix_nano=draw(st.integers(0, 2**64 - 1)),
            end_time_unix_nano=draw(st.integers(0, 2**64 - 1)),
        )
        for key, value in draw(st.lists(st.tuples(st.text(max_size=8), attribute_value))):
            added.attributes.add(key=key, value=value)
    serialized: bytes = request.SerializeToString()
    return serialized


@FUZZ
@given(
    body=protobuf_request(),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=5),
    cut=st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_any_protobuf_gets_a_well_formed_answer(
    fuzzed: Fuzzed, body: bytes, edits: list[tuple[int, int]], cut: int | None
) -> None:
    """Valid requests (random times, kinds, attribute values), bytes changed or cut off."""
    changed = bytearray(body)
    for position, value in edits:
        if changed:
            changed[position % len(changed)] = value
    if cut is not None and changed:
        changed = changed[: cut % len(changed)]
    answer = fuzzed.handle("/v1/traces", {"Content-Type": PROTOBUF}, bytes(changed))
    assert answer.status in (200, 400), answer
    if not edits and cut is None:
        assert answer.status == 200


@FUZZ
@given(
    body=st.binary(max_size=2048),
    content_type=st.sampled_from([PROTOBUF, JSON, "text/plain", "", "application/json; x=1"]),
    encoding=st.sampled_from([None, "gzip", "deflate", "identity", "br", "GZIP"]),
    compress=st.booleans(),
    path=st.sampled_from(["/v1/traces", "/v1/metrics"]),
)
def test_random_bytes_get_a_well_formed_answer(
    fuzzed: Fuzzed,
    body: bytes,
    content_type: str,
    encoding: str | None,
    compress: bool,
    path: str,
) -> None:
    headers = {"Content-Type": content_type}
    if encoding:
        headers["Content-Encoding"] = encoding
        if compress and encoding.lower() == "gzip":
            body = gzip.compress(body)
        elif compress and encoding == "deflate":
            body = zlib.compress(body)
    answer = fuzzed.handle(path, headers, body)
    if content_type.split(";")[0] not in (PROTOBUF, JSON) or encoding == "br":
        assert answer.status == 415


@FUZZ
@given(
    size=st.integers(0, 2 * LIMIT),
    encoding=st.sampled_from(["gzip", "deflate"]),
    content_type=st.sampled_from([PROTOBUF, JSON]),
)
def test_compression_bombs_are_413_past_the_limit(
    fuzzed: Fuzzed, size: int, encoding: str, content_type: str
) -> None:
    plain = bytes(size)
    body = gzip.compress(plain) if encoding == "gzip" else zlib.compress(plain, 9)
    headers = {"Content-Type": content_type, "Content-Encoding": encoding}
    answer = fuzzed.handle("/v1/traces", headers, body)
    if size > LIMIT:
        assert answer.status == 413
    elif size == 0 and content_type == PROTOBUF:
        assert answer.status == 200  # an empty request
    else:
        assert answer.status == 400  # zeros are neither OTLP protobuf nor JSON


@FUZZ
@given(
    depth=st.one_of(st.integers(1, 2000), st.sampled_from([500, 100_000])),
    opener=st.sampled_from(["[", '{"a":', '{"resourceSpans":[{"scopeSpans":[', '{"x":[']),
)
def test_deep_nesting_is_400(fuzzed: Fuzzed, depth: int, opener: str) -> None:
    closer = {"[": "]", '{"a":': "}", '{"resourceSpans":[{"scopeSpans":[': "]}]}", '{"x":[': "]}"}
    body = (opener * depth + "1" + closer[opener] * depth).encode()
    answer = fuzzed.handle("/v1/traces", {"Content-Type": JSON}, body)
    if len(body) > LIMIT:
        assert answer.status == 413
    elif opener == "[" or depth == 100_000:
        assert answer.status == 400
    else:  # {"a":{"a":...}}: a request with unknown fields (ignored), unless too deep for JSON
        assert answer.status in (200, 400)
