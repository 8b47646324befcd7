"""OTLP/HTTP of ``otel-luna serve`` as a production front end.

First :class:`~otel_luna.serve._protocol.HttpProtocol` alone, a pure function: every answer,
from what is decided before the body (404, 405, 401, 415, 413) to what the body gives (200 with
its partial success, 400, 413, 503). Then the aiohttp server over real sockets on 127.0.0.1: an
unauthenticated 16 MiB body refused without being read, slow clients that do not hold up a good
one or ``stop()``, the connection and in-flight byte caps, chunked bodies, keep-alive, TLS
handshakes off the accept path, SO_REUSEPORT and the listen backlog.

Timings are printed (``-s`` shows them); the only time bounds asserted are generous liveness
ones ("answered within 5 s").
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import shutil
import socket
import ssl
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, closing, suppress
from pathlib import Path
from typing import Any

import pytest
import requests
from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otel_luna.serve import ServeSettings
from otel_luna.serve import _http_server as http_server_module
from otel_luna.serve import _inflate as inflate
from otel_luna.serve._http_server import HttpServer, start_http
from otel_luna.serve._inflate import zstd
from otel_luna.serve._main import Server
from otel_luna.serve._protocol import JSON, PROTOBUF, TRACES_PATH, Answer, HttpProtocol
from otel_luna.serve._receiver import Receiver
from otel_luna.testing import InMemorySink
from tests.support import otlpwire
from tests.support.servehelpers import Serve

TOKEN = "s3cr3t"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PB = {"Content-Type": PROTOBUF}
JS = {"Content-Type": JSON}
LIMIT = 1 << 20  # serve_max_message_bytes of the pure-protocol tests
T0 = 1_700_000_000_000_000_000
#: Liveness bound of every socket test: an answer that takes longer is a hang.
ANSWER_TIMEOUT = 5.0


# --------------------------------------------------------------------------- requests


def trace_request(count: int, prefix: str = "r") -> tuple[ExportTraceServiceRequest, list[str]]:
    """``count`` SERVER spans with their own request ids (one ``requests`` point each)."""
    request = ExportTraceServiceRequest()
    resource = request.resource_spans.add()
    resource.resource.attributes.add(key="service.name").value.string_value = "http-test"
    scope = resource.scope_spans.add()
    ids = [f"{prefix}-{index}-{time.monotonic_ns()}" for index in range(count)]
    for index, request_id in enumerate(ids):
        span = scope.spans.add(
            trace_id=(index + 1).to_bytes(16, "big"),
            span_id=(index + 1).to_bytes(8, "big"),
            name="POST /work",
            kind=Span.SPAN_KIND_SERVER,
            start_time_unix_nano=T0 + index * 1000,
            end_time_unix_nano=T0 + index * 1000 + 2_000_000,
        )
        for key, value in (
            ("http.request.method", "POST"),
            ("http.route", "/work"),
            ("luna.request_id", request_id),
        ):
            span.attributes.add(key=key).value.string_value = value
        span.attributes.add(key="http.response.status_code").value.int_value = 200
    return request, ids


def otlp_json(request: ExportTraceServiceRequest) -> dict[str, Any]:
    """OTLP/JSON of ``request``: ids in hex, as the specification writes them."""
    document = json_format.MessageToDict(request, use_integers_for_enums=True)
    for resource in document.get("resourceSpans", []):
        for scope in resource.get("scopeSpans", []):
            for span in scope.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
    return document


def status_of(answer: Answer) -> status_pb2.Status:
    content_type = answer.headers["Content-Type"]
    if content_type == JSON:
        return json_format.Parse(answer.body, status_pb2.Status())
    assert content_type == PROTOBUF
    return status_pb2.Status.FromString(answer.body)


# --------------------------------------------------------------------------- the pure protocol


@pytest.fixture
def sink() -> InMemorySink:
    return InMemorySink()


@pytest.fixture
def receiver(sink: InMemorySink) -> Iterator[Receiver]:
    settings = ServeSettings.load(
        {},
        spool="memory",
        flush_interval=3600,
        serve_token=TOKEN,
        serve_max_message_bytes=LIMIT,
    )
    running = Receiver(settings, sink=sink)
    yield running
    running.shutdown()


@pytest.fixture
def protocol(receiver: Receiver) -> HttpProtocol:
    return HttpProtocol(receiver, receiver.settings)


def lines_of(receiver: Receiver, sink: InMemorySink) -> str:
    assert receiver.ingest.force_flush(10)
    return "\n".join(sink.lines)


@pytest.mark.parametrize(
    ("method", "path", "headers", "status", "code", "reason"),
    [
        ("POST", "/v1/logs", {**AUTH, **PB}, 404, code_pb2.NOT_FOUND, "not_found"),
        ("POST", "/v1/logs", PB, 404, code_pb2.NOT_FOUND, "not_found"),
        ("POST", "/nowhere", {}, 404, code_pb2.NOT_FOUND, "not_found"),
        ("GET", TRACES_PATH, {**AUTH, **PB}, 405, code_pb2.UNIMPLEMENTED, "method"),
        ("POST", TRACES_PATH, PB, 401, code_pb2.UNAUTHENTICATED, "unauthenticated"),
        ("POST", TRACES_PATH, {**PB, "Authorization": "Bearer wrong"}, 401, 16, "unauthenticated"),
        ("POST", TRACES_PATH, {**PB, "Authorization": TOKEN}, 401, 16, "unauthenticated"),
        # aiohttp hands non-UTF-8 header bytes over as surrogate escapes
        ("POST", TRACES_PATH, {**PB, "Authorization": "Bearer \udce9"}, 401, 16, "unauthenticated"),
        (
            "POST",
            TRACES_PATH,
            {**PB, "Authorization": "Bearer s3cr3té"},
            401,
            16,
            "unauthenticated",
        ),
        ("POST", TRACES_PATH, {**AUTH, "Content-Type": "text/plain"}, 415, 3, "unsupported"),
        ("POST", TRACES_PATH, {**AUTH, **PB, "Content-Encoding": "br"}, 415, 3, "unsupported"),
        (
            "POST",
            TRACES_PATH,
            {**AUTH, **PB, "Transfer-Encoding": "gzip, chunked"},
            501,
            code_pb2.UNIMPLEMENTED,
            "unsupported",
        ),
        (
            "POST",
            TRACES_PATH,
            {**AUTH, **PB, "Content-Length": str(LIMIT + 1)},
            413,
            code_pb2.RESOURCE_EXHAUSTED,
            "too_large",
        ),
        ("POST", TRACES_PATH, {**AUTH, **PB, "Content-Length": "x"}, 400, 3, "malformed"),
    ],
)
def test_check_answers_what_the_head_decides(
    protocol: HttpProtocol,
    receiver: Receiver,
    method: str,
    path: str,
    headers: dict[str, str],
    status: int,
    code: int,
    reason: str,
) -> None:
    answer = protocol.check(method, path, headers)
    assert answer is not None
    assert answer.status == status
    assert status_of(answer).code == code
    assert status_of(answer).message
    assert "Retry-After" not in answer.headers
    assert receiver.counts()[f"requests_refused_{reason}"] == 1
    # The same answer for the whole request (handle() checks again), and in JSON for JSON.
    if method == "POST":
        assert protocol.handle(path, headers, b"").status == status
    json_headers = {**headers, "Content-Type": JSON} if status != 415 else headers
    again = protocol.check(method, path, json_headers)
    assert again is not None and again.status == status
    assert status_of(again).code == code


def test_check_extras_say_what_to_do(protocol: HttpProtocol) -> None:
    refused = protocol.check("PUT", TRACES_PATH, {**AUTH, **PB})
    assert refused is not None and refused.headers["Allow"] == "POST"
    refused = protocol.check("POST", TRACES_PATH, PB)
    assert refused is not None and refused.headers["WWW-Authenticate"] == "Bearer"
    refused = protocol.check("POST", "/v1/logs", JS)
    assert refused is not None and refused.headers["Content-Type"] == JSON
    assert "logs are not handled" in json.loads(refused.body)["message"]


@pytest.mark.parametrize(
    "headers",
    [
        {**AUTH, **PB},
        {"authorization": f"Bearer {TOKEN}", "content-type": "Application/X-Protobuf"},
        {**AUTH, "Content-Type": "application/json; charset=utf-8"},
        {**AUTH, **PB, "Content-Encoding": "gzip", "Content-Length": str(LIMIT)},
        {**AUTH, **PB, "Content-Encoding": "identity", "Transfer-Encoding": "chunked"},
    ],
)
def test_check_lets_a_good_request_through(protocol: HttpProtocol, headers: dict[str, str]) -> None:
    assert protocol.check("POST", TRACES_PATH + "?x=1", headers) is None
    assert protocol.check("POST", "/v1/metrics", headers) is None


def _zstd_big_window() -> bytes:
    """A zstd frame of unknown size asking for a 128 MiB window (64 KiB of zeros)."""
    compressor = zstd.ZstdCompressor(options={zstd.CompressionParameter.window_log: 27})
    return compressor.compress(bytes(1 << 16)) + compressor.flush()


BIG_WINDOW = _zstd_big_window()


def _deflate_raw(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


ENCODINGS = {
    "none": (None, lambda data: data),
    "gzip": ("gzip", gzip.compress),
    "gzip, two members": ("gzip", lambda data: gzip.compress(data[:7]) + gzip.compress(data[7:])),
    "zstd": ("zstd", zstd.compress),
    "zstd, two frames": ("zstd", lambda data: zstd.compress(data[:7]) + zstd.compress(data[7:])),
    "deflate (zlib)": ("deflate", zlib.compress),
    "deflate (raw)": ("deflate", _deflate_raw),
}


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("content_type", [PROTOBUF, JSON])
def test_handle_accepts_every_encoding(
    protocol: HttpProtocol, receiver: Receiver, sink: InMemorySink, encoding: str, content_type: str
) -> None:
    request, ids = trace_request(3)
    plain = (
        json.dumps(otlp_json(request)).encode()
        if content_type == JSON
        else request.SerializeToString()
    )
    name, compress = ENCODINGS[encoding]
    headers = {**AUTH, "Content-Type": content_type}
    if name:
        headers["Content-Encoding"] = name
    answer = protocol.handle(TRACES_PATH, headers, compress(plain))
    assert answer.status == 200, answer
    assert answer.headers == {"Content-Type": content_type}
    if content_type == JSON:
        assert json.loads(answer.body) == {}
    else:
        assert not ExportTraceServiceResponse.FromString(answer.body).HasField("partial_success")
    written = lines_of(receiver, sink)
    assert all(request_id in written for request_id in ids)
    assert protocol.budget.used == 0


@pytest.mark.parametrize(
    ("headers", "body", "status", "words"),
    [
        (PB, b"\x0a\xff\xff\xff\xff\x0f\x00garbage", 400, "malformed request"),
        ({**PB, "Content-Encoding": "gzip"}, b"not gzip at all", 400, "bad compressed body"),
        ({**PB, "Content-Encoding": "gzip"}, gzip.compress(b"x" * 1000)[:-30], 400, "truncated"),
        ({**PB, "Content-Encoding": "deflate"}, b"\x78\x9c\xff\xff", 400, "bad compressed body"),
        ({**PB, "Content-Encoding": "gzip"}, gzip.compress(bytes(LIMIT + 1)), 413, "larger than"),
        ({**PB, "Content-Encoding": "deflate"}, zlib.compress(bytes(4 * LIMIT)), 413, "larger"),
        ({**PB, "Content-Encoding": "zstd"}, zstd.compress(bytes(1 << 30)), 413, "larger than"),
        ({**PB, "Content-Encoding": "zstd"}, zstd.compress(b"x" * 1000)[:-3], 400, "truncated"),
        ({**PB, "Content-Encoding": "zstd"}, b"not zstd at all", 400, "bad compressed body"),
        ({**PB, "Content-Encoding": "zstd"}, zstd.compress(b"x") + b"junk", 400, "bad compressed"),
        # a frame whose window (here 128 MiB) would be allocated before any byte is decoded
        ({**PB, "Content-Encoding": "zstd"}, BIG_WINDOW, 400, "too much memory"),
        (PB, bytes(LIMIT + 1), 413, "larger than"),
        (JS, b"1234", 400, "not an OTLP/JSON object"),
        (JS, b"null", 400, "not an OTLP/JSON object"),
        (JS, b"[]", 400, "not an OTLP/JSON object"),
        (JS, b'"text"', 400, "not an OTLP/JSON object"),
        (JS, b"{not json", 400, "malformed request"),
        (JS, b"\xff\xfe{}", 400, "malformed request"),
        (JS, b"[" * 500 + b"]" * 500, 400, "not an OTLP/JSON object"),
        (JS, b"[" * 100_000 + b"]" * 100_000, 400, "nesting too deep"),
        (JS, b'{"resourceSpans":' * 500 + b"{}" + b"}" * 500, 400, "malformed request"),
        (JS, b'{"resourceSpans": 5}', 400, "not a list"),
        (JS, b'{"resourceSpans": {}}', 400, "resourceSpans is an object, not a list"),
        (JS, b'{"resourceSpans": [5, "x", null]}', 400, "nothing readable"),
        (JS, b'{"resourceSpans":"\\udc00"}', 400, "not a list"),
        (
            JS,
            b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"startTimeUnixNano":"-1"}]}]}]}',
            400,
            "nothing readable",
        ),
    ],
)
def test_handle_refuses_what_cannot_be_read(
    protocol: HttpProtocol,
    receiver: Receiver,
    headers: dict[str, str],
    body: bytes,
    status: int,
    words: str,
) -> None:
    answer = protocol.handle(TRACES_PATH, {**AUTH, **headers}, body)
    assert answer.status == status, answer
    assert answer.headers["Content-Type"] == headers["Content-Type"]
    assert words in status_of(answer).message
    assert receiver.counts()["requests_failed"] == 0
    assert protocol.budget.used == 0


class CountingInflater:
    """``zlib.decompressobj``, counting the decoders made and the input bytes handed to them."""

    made = 0
    fed = 0

    def __init__(self, wbits: int) -> None:
        CountingInflater.made += 1
        self._inflater = real_decompressobj(wbits)

    def decompress(self, data: Any, max_length: int = 0) -> bytes:
        CountingInflater.fed += len(data)
        return self._inflater.decompress(data, max_length)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inflater, name)


real_decompressobj = zlib.decompressobj


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> type[CountingInflater]:
    monkeypatch.setattr(CountingInflater, "made", 0)
    monkeypatch.setattr(CountingInflater, "fed", 0)
    monkeypatch.setattr(zlib, "decompressobj", CountingInflater)
    return CountingInflater


def test_gzip_members_are_inflated_in_work_linear_in_the_body(
    protocol: HttpProtocol,
    receiver: Receiver,
    sink: InMemorySink,
    counting: type[CountingInflater],
) -> None:
    """A request cut into 1,000 gzip members is accepted, its members read for a few times
    its size (each member once took a copy of the rest of the body: quadratic)."""
    request, ids = trace_request(20)
    plain = request.SerializeToString()
    cut = [plain[len(plain) * i // 1000 : len(plain) * (i + 1) // 1000] for i in range(1000)]
    body = b"".join(gzip.compress(piece) for piece in cut)
    answer = protocol.handle(TRACES_PATH, {**AUTH, **PB, "Content-Encoding": "gzip"}, body)
    assert answer.status == 200, status_of(answer)
    assert all(request_id in lines_of(receiver, sink) for request_id in ids)
    assert counting.made == 1000
    assert counting.fed <= 4 * len(body) + inflate.FEED * 1000, (counting.fed, len(body))


def test_more_gzip_members_than_clients_send_are_refused_unread(
    protocol: HttpProtocol, receiver: Receiver, counting: type[CountingInflater]
) -> None:
    """1 MiB of empty gzip members (52,000: once 1.6 s of CPU, 16 MiB 7 minutes): 400 after
    the first 1,000, each read once."""
    empty = gzip.compress(b"")
    body = empty * ((1 << 20) // len(empty))
    answer = protocol.handle(TRACES_PATH, {**AUTH, **PB, "Content-Encoding": "gzip"}, body)
    assert answer.status == 400
    assert "more than 1000 gzip members" in status_of(answer).message
    assert counting.made == inflate.MAX_MEMBERS
    assert counting.fed <= inflate.FEED * inflate.MAX_MEMBERS
    assert receiver.counts()["requests_refused_malformed"] == 1
    assert protocol.budget.used == 0


def _deprecated(request: ExportTraceServiceRequest, content_type: str, also: bool) -> bytes:
    """``request`` as a sender of OTLP 0.15-0.18 writes it: its scope spans in the deprecated
    ``ResourceSpans`` field 1000 (``deprecatedScopeSpans``), and, with ``also``, its
    ``scope_spans`` besides holding one more span (the Collector then drops field 1000)."""
    resource_spans = request.resource_spans[0]
    scope_spans = resource_spans.scope_spans[0]
    extra, _ = trace_request(1, "current")
    current = extra.resource_spans[0].scope_spans[0] if also else None
    if content_type == JSON:
        document = otlp_json(request)
        resource = document["resourceSpans"][0]
        resource["deprecatedScopeSpans"] = resource.pop("scopeSpans")
        if current is not None:
            resource["scopeSpans"] = otlp_json(extra)["resourceSpans"][0]["scopeSpans"]
        return json.dumps(document).encode()
    body = otlpwire.field(1, resource_spans.resource.SerializeToString())
    if current is not None:
        body += otlpwire.field(2, current.SerializeToString())
    body += otlpwire.field(1000, scope_spans.SerializeToString())
    return otlpwire.field(1, body)


@pytest.mark.parametrize("content_type", [PROTOBUF, JSON])
def test_deprecated_scope_spans_are_kept_as_the_collector_keeps_them(
    protocol: HttpProtocol, receiver: Receiver, sink: InMemorySink, content_type: str
) -> None:
    """OTLP 0.15-0.18 senders put scope spans in ``ResourceSpans`` field 1000
    (``deprecatedScopeSpans``): written when there are no ``scope_spans``; dropped when there
    are (pdata's ``MigrateTraces``)."""
    request, ids = trace_request(3, "deprecated")
    headers = {**AUTH, "Content-Type": content_type}
    answer = protocol.handle(TRACES_PATH, headers, _deprecated(request, content_type, False))
    assert answer.status == 200, status_of(answer)
    written = lines_of(receiver, sink)
    assert all(request_id in written for request_id in ids)
    sink.lines.clear()
    request, ids = trace_request(2, "dropped")
    answer = protocol.handle(TRACES_PATH, headers, _deprecated(request, content_type, True))
    assert answer.status == 200, status_of(answer)
    written = lines_of(receiver, sink)
    assert "current-0" in written
    assert not any(request_id in written for request_id in ids)


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("kind", "baz"),
        ("kind", True),
        ("kind", "2"),
        ("kind", 1.5),
        ("kind", 2**32 + 2),
        ("kind", {"value": 2}),
        ("status", "STATUS_CODE_BOGUS"),
        ("status", False),
    ],
)
def test_an_unknown_span_kind_or_status_name_in_json_is_a_400_as_in_the_collector(
    protocol: HttpProtocol, receiver: Receiver, sink: InMemorySink, where: str, value: Any
) -> None:
    """pdata reads an enum as a number or one of its names, and refuses the request (400) for
    anything else; protobuf's JSON parser read ``"baz"`` as unspecified and ``true`` as 1."""
    request, _ = trace_request(2)
    document = otlp_json(request)
    span = document["resourceSpans"][0]["scopeSpans"][0]["spans"][1]
    if where == "kind":
        span["kind"] = value
    else:
        span["status"] = {"code": value}
    answer = protocol.handle(TRACES_PATH, {**AUTH, **JS}, json.dumps(document).encode())
    assert answer.status == 400, answer
    message = status_of(answer).message
    assert f"resourceSpans[0].scopeSpans[0].spans[1].{where}" in message
    assert "SPAN_KIND_*" in message if where == "kind" else "STATUS_CODE_*" in message
    assert receiver.counts()["requests_refused_malformed"] == 1
    assert not lines_of(receiver, sink)


@pytest.mark.parametrize("kind", ["SPAN_KIND_SERVER", 2, 9, -1])
def test_span_kinds_by_name_or_number_are_read_unknown_numbers_kept(
    protocol: HttpProtocol, receiver: Receiver, sink: InMemorySink, kind: Any
) -> None:
    """An enum's name or any 32-bit number (protobuf keeps unknown values: not a SERVER span)."""
    request, ids = trace_request(1)
    document = otlp_json(request)
    document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["kind"] = kind
    answer = protocol.handle(TRACES_PATH, {**AUTH, **JS}, json.dumps(document).encode())
    assert answer.status == 200, status_of(answer)
    assert (ids[0] in lines_of(receiver, sink)) == (kind in ("SPAN_KIND_SERVER", 2))


def test_the_spool_full_is_503_with_retry_after(sink: InMemorySink) -> None:
    settings = ServeSettings.load(
        {}, spool="memory", flush_interval=3600, batch_size=10**6, spool_max_bytes=1
    )
    receiver = Receiver(settings, sink=sink)
    try:
        protocol = HttpProtocol(receiver, settings)
        first, _ = trace_request(1)
        assert protocol.handle(TRACES_PATH, PB, first.SerializeToString()).status == 200
        answer = protocol.handle(TRACES_PATH, JS, json.dumps(otlp_json(first)).encode())
        assert answer.status == 503
        assert answer.headers["Retry-After"] == "1"
        assert status_of(answer).code == code_pb2.UNAVAILABLE
        assert receiver.counts()["requests_refused_spool_full"] == 1
    finally:
        receiver.shutdown()


def test_a_body_that_needs_more_budget_than_is_free_is_503(protocol: HttpProtocol) -> None:
    request, _ = trace_request(2)
    body = gzip.compress(request.SerializeToString())
    assert protocol.budget.take(protocol.budget.limit)  # all of it held elsewhere
    try:
        answer = protocol.handle(TRACES_PATH, {**AUTH, **PB, "Content-Encoding": "gzip"}, body)
        assert answer.status == 503
        assert answer.headers["Retry-After"] == "1"
        assert "serve_max_inflight_bytes" in status_of(answer).message
    finally:
        protocol.budget.give(protocol.budget.limit)
    answer = protocol.handle(TRACES_PATH, {**AUTH, **PB, "Content-Encoding": "gzip"}, body)
    assert answer.status == 200
    assert protocol.budget.used == 0


GOOD = {
    "traceId": "0af7651916cd43dd8448eb211c80319c",
    "spanId": "b7ad6b7169203331",
    "name": "GET /x",
    "kind": 2,
    "startTimeUnixNano": str(T0),
    "endTimeUnixNano": str(T0 + 1000),
    "attributes": [{"key": "http.route", "value": {"stringValue": "/x"}}],
}

#: Spans OTLP/JSON cannot read: each is left out, alone.
BAD_SPANS: dict[str, Any] = {
    "negative time": {**GOOD, "startTimeUnixNano": "-1"},
    "boolean time": {**GOOD, "startTimeUnixNano": True},
    "fractional time": {**GOOD, "endTimeUnixNano": 1.5},
    "time past 2^64": {**GOOD, "startTimeUnixNano": str(2**70)},
    "intValue not a number": {**GOOD, "attributes": [{"key": "n", "value": {"intValue": "3.f14"}}]},
    "intValue 2^70": {**GOOD, "attributes": [{"key": "n", "value": {"intValue": 2**70}}]},
    "lone surrogate": {**GOOD, "attributes": [{"key": "s", "value": {"stringValue": "\udce9"}}]},
    "surrogate quoted in the error": {**GOOD, "startTimeUnixNano": "x\udc00"},
    "name a number": {**GOOD, "name": 5},
    "attributes a string": {**GOOD, "attributes": "x"},
    "hex id not hex": {**GOOD, "traceId": "zz"},
    "a number": 5,
    "null": None,
}
_deep: Any = {"stringValue": "x"}
for _ in range(150):
    _deep = {"kvlistValue": {"values": [{"key": "k", "value": _deep}]}}
BAD_SPANS["deep kvlist"] = {**GOOD, "attributes": [{"key": "d", "value": _deep}]}


def with_ids(span: Any, index: int) -> Any:
    """``span`` with its own request id (good spans only)."""
    if not isinstance(span, dict) or span is not GOOD:
        return span
    return {
        **span,
        "spanId": f"{index + 1:016x}",
        "attributes": [
            *span["attributes"],
            {"key": "luna.request_id", "value": {"stringValue": f"good-{index}"}},
        ],
    }


@pytest.mark.parametrize("bad", BAD_SPANS)
def test_json_spans_that_cannot_be_read_are_left_out_and_the_rest_accepted(
    protocol: HttpProtocol, receiver: Receiver, sink: InMemorySink, bad: str
) -> None:
    spans = [with_ids(GOOD, 0), BAD_SPANS[bad], with_ids(GOOD, 2)]
    body = json.dumps(
        {"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]}, ensure_ascii=True
    ).encode()
    answer = protocol.handle(TRACES_PATH, {**AUTH, **JS}, body)
    assert answer.status == 200, answer
    partial = json.loads(answer.body)["partialSuccess"]
    assert partial["rejectedSpans"] == "1"
    assert "malformed_span=1" in partial["errorMessage"]
    assert "resourceSpans[0].scopeSpans[0].spans[1]" in partial["errorMessage"]
    written = lines_of(receiver, sink)
    assert 'request_id="good-0"' in written and 'request_id="good-2"' in written
    assert receiver.counts()["malformed_span"] == 1


def test_json_metrics_that_cannot_be_read_count_their_data_points(
    protocol: HttpProtocol, receiver: Receiver
) -> None:
    def usage(value: Any) -> dict[str, Any]:
        point = {"asInt": value, "timeUnixNano": str(T0), "startTimeUnixNano": str(T0 - 1000)}
        point["attributes"] = [{"key": "luna.estimator", "value": {"stringValue": "face"}}]
        return {"name": "luna.usages", "sum": {"aggregationTemporality": 1, "dataPoints": [point]}}

    bad = usage("x")
    bad["sum"]["dataPoints"] *= 3
    document = {"resourceMetrics": [{"scopeMetrics": [{"metrics": [usage("2"), bad]}]}]}
    answer = protocol.handle("/v1/metrics", {**AUTH, **PB, **JS}, json.dumps(document).encode())
    assert answer.status == 200, answer
    assert answer.headers["Content-Type"] == JSON
    response = json_format.Parse(answer.body, ExportMetricsServiceResponse())
    assert response.partial_success.rejected_data_points == 3
    assert "metrics[1]" in response.partial_success.error_message
    assert receiver.counts()["malformed_data_point"] == 3


def test_a_bug_is_a_500_and_one_log_line_without_traceback(
    protocol: HttpProtocol, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(request: Any) -> Any:
        raise RuntimeError("a bug")

    protocol._signals[TRACES_PATH].accept = broken
    request, _ = trace_request(1)
    with caplog.at_level(logging.WARNING, logger="otel_luna.serve.http"):
        for _ in range(3):
            answer = protocol.handle(TRACES_PATH, {**AUTH, **PB}, request.SerializeToString())
            assert answer.status == 500
            assert status_of(answer).code == code_pb2.INTERNAL
            assert "RuntimeError: a bug" in status_of(answer).message
    assert receiver.counts()["requests_failed"] == 3
    records = [r for r in caplog.records if "requests_failed" in r.getMessage()]
    assert len(records) == 1  # one line per kind and interval
    assert records[0].levelno == logging.ERROR and records[0].exc_info is None


def test_refusals_are_counted_each_and_logged_once_per_interval(
    protocol: HttpProtocol, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="otel_luna.serve.http"):
        for _ in range(50):
            assert protocol.check("POST", TRACES_PATH, PB) is not None
    assert receiver.counts()["requests_refused_unauthenticated"] == 50
    assert len(caplog.records) == 1
    assert "401" in caplog.records[0].getMessage()


# --------------------------------------------------------------------------- over sockets


def recv_answer(
    sock: socket.socket, timeout: float = ANSWER_TIMEOUT
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP answer read from ``sock``: status, headers (lower-case names), body."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before an answer: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def head(path: str = TRACES_PATH, **fields: str) -> bytes:
    """A request head: ``POST path`` with ``fields`` (underscores as dashes)."""
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in fields.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def closed_by_peer(sock: socket.socket, timeout: float = ANSWER_TIMEOUT) -> bool:
    """Whether the server closes ``sock`` (FIN or reset) within ``timeout``."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


class Running:
    """An in-process OTLP/HTTP server over a receiver writing to a sink."""

    def __init__(self, **settings: Any) -> None:
        self.sink = InMemorySink()
        self.settings = ServeSettings.load(
            {}, spool="memory", flush_interval=3600, serve_http_port=0, **settings
        )
        self.receiver = Receiver(self.settings, sink=self.sink)
        self.server, self.port = start_http(self.receiver, self.settings, 0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{TRACES_PATH}"

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=ANSWER_TIMEOUT)

    def stop(self) -> None:
        self.server.stop(2)
        self.receiver.shutdown()


@pytest.fixture
def running() -> Iterator[Running]:
    server = Running(serve_read_timeout=1.0)
    yield server
    server.stop()


def good_body(count: int = 2) -> tuple[bytes, list[str]]:
    request, ids = trace_request(count)
    return request.SerializeToString(), ids


def test_chunked_bodies_with_extensions_and_trailers_are_read(running: Running) -> None:
    body, ids = good_body(3)
    third = len(body) // 3
    pieces = [body[:third], body[third : 2 * third], body[2 * third :]]
    chunked = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(piece), piece) for piece in pieces)
    chunked += b"0\r\nX-Trailer: yes\r\n\r\n"
    with closing(running.connect()) as sock:
        sock.sendall(head(Content_Type=PROTOBUF, Transfer_Encoding="chunked") + chunked)
        status, headers, answer = recv_answer(sock)
        assert status == 200, answer
        assert headers["content-type"] == PROTOBUF
        # keep-alive: the next request on the same connection
        body, more = good_body(1)
        sock.sendall(head(Content_Type=PROTOBUF, Content_Length=str(len(body))) + body)
        assert recv_answer(sock)[0] == 200
    written = lines_of(running.receiver, running.sink)
    assert all(request_id in written for request_id in ids + more)


def test_broken_chunked_framing_is_a_400_status(running: Running) -> None:
    with closing(running.connect()) as sock:
        sock.sendall(head(Content_Type=PROTOBUF, Transfer_Encoding="chunked") + b"zz\r\nxx\r\n")
        status, headers, body = recv_answer(sock)
        assert status == 400
        assert headers["content-type"] == PROTOBUF
        assert status_pb2.Status.FromString(body).code == code_pb2.INVALID_ARGUMENT
    assert requests.post(running.url, data=good_body()[0], headers=PB, timeout=5).status_code == 200


@pytest.mark.slow  # waits for timeouts
def test_endless_trailers_do_not_hold_a_connection(running: Running) -> None:
    """A chunked body whose trailer section never ends: cut within ``serve_read_timeout``."""
    with closing(running.connect()) as sock:
        sock.sendall(head(Content_Type=PROTOBUF, Transfer_Encoding="chunked") + b"0\r\n")
        started = time.monotonic()
        outcome = "still reading"
        sock.settimeout(0.05)
        while time.monotonic() - started < ANSWER_TIMEOUT:
            try:
                sock.sendall(b"X-Trailer: more\r\n")
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as error:
                outcome = f"closed ({type(error).__name__})"
                break
            outcome = data.split(b"\r\n")[0].decode() if data else "closed"
            break
        print(f"\nendless trailers: cut after {time.monotonic() - started:.2f} s: {outcome}")
        assert outcome.startswith(("HTTP/1.1 4", "closed")), outcome
    assert requests.post(running.url, data=good_body()[0], headers=PB, timeout=5).status_code == 200


def test_keep_alive_answers_come_in_one_write(running: Running) -> None:
    """200 requests on one keep-alive connection: every one answered; the figures printed
    (a header-then-body write pair would add Nagle + delayed-ACK stalls of ~40 ms)."""
    body, _ = good_body(1)
    times = []
    with requests.Session() as session:
        for _ in range(200):
            started = time.perf_counter()
            answer = session.post(running.url, data=body, headers=PB, timeout=ANSWER_TIMEOUT)
            times.append(time.perf_counter() - started)
            assert answer.status_code == 200
    times.sort()
    print(
        f"\nkeep-alive: median {times[100] * 1e3:.2f} ms, p99 {times[198] * 1e3:.2f} ms, "
        f"max {times[-1] * 1e3:.2f} ms"
    )


def test_expect_100_continue_is_refused_before_the_body_is_sent() -> None:
    server = Running(serve_token=TOKEN)
    try:
        with closing(server.connect()) as sock:
            sock.sendall(head(Content_Type=PROTOBUF, Content_Length="1000", Expect="100-continue"))
            status, headers, _ = recv_answer(sock)
            assert status == 401
            assert headers["connection"] == "close"
        body, _ = good_body()
        with closing(server.connect()) as sock:
            sock.sendall(
                head(
                    Content_Type=PROTOBUF,
                    Content_Length=str(len(body)),
                    Expect="100-continue",
                    Authorization=f"Bearer {TOKEN}",
                )
            )
            assert recv_answer(sock)[0] == 100
            sock.sendall(body)
            assert recv_answer(sock)[0] == 200
    finally:
        server.stop()


def test_bytes_in_flight_past_the_cap_are_refused_unread() -> None:
    """With 8 KiB allowed in flight, a request declaring over 4 KiB holds them while its body
    trickles; another as large gets 503 + Retry-After at once, its body unread."""
    server = Running(serve_max_inflight_bytes=8192)
    try:
        body, _ = good_body(32)
        assert 4096 < len(body) < 8192
        slow = server.connect()
        with closing(slow):
            slow.sendall(head(Content_Type=PROTOBUF, Content_Length=str(len(body))) + body[:10])
            time.sleep(0.2)  # its head is in: the server holds its bytes
            with closing(server.connect()) as other:
                other.sendall(head(Content_Type=PROTOBUF, Content_Length=str(len(body))))
                status, headers, answer = recv_answer(other)
                assert status == 503
                assert headers["retry-after"] == "1"
                assert headers["connection"] == "close"
                assert "serve_max_inflight_bytes" in status_pb2.Status.FromString(answer).message
            slow.sendall(body[10:])
            assert recv_answer(slow)[0] == 200
        assert server.server.protocol.budget.used == 0
        assert server.receiver.counts()["requests_refused_busy"] == 1
    finally:
        server.stop()


@pytest.mark.slow  # waits for timeouts
def test_at_the_connection_cap_an_idle_connection_makes_room() -> None:
    server = Running(serve_max_connections=4)
    sessions = [requests.Session() for _ in range(4)]
    try:
        body, _ = good_body(1)
        for session in sessions:  # four keep-alive connections, idle after their answer
            assert session.post(server.url, data=body, headers=PB, timeout=5).status_code == 200
        started = time.monotonic()
        answer = requests.post(server.url, data=body, headers=PB, timeout=ANSWER_TIMEOUT)
        assert answer.status_code == 200
        print(f"\nat the cap, a new client answered in {time.monotonic() - started:.3f} s")
        assert len(server.server.connections) <= 4
    finally:
        for session in sessions:
            session.close()
        server.stop()


@pytest.mark.slow  # waits for timeouts
def test_at_the_connection_cap_slow_heads_make_room_for_a_new_client() -> None:
    """8 connections allowed, 8 clients that never finish their head: a good client waits in
    the backlog until a head that has been arriving for over a second is cut (408) for it —
    not the 10 s read timeout; the other slow heads are cut at that timeout."""
    server = Running(serve_max_connections=8, serve_read_timeout=10.0)
    slow = []
    try:
        for _ in range(8):
            sock = server.connect()
            sock.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\n")
            slow.append(sock)
        time.sleep(0.2)
        started = time.monotonic()
        body, _ = good_body(1)
        answer = requests.post(server.url, data=body, headers=PB, timeout=ANSWER_TIMEOUT)
        assert answer.status_code == 200
        print(
            f"\n8 slow heads at the cap: a good client answered in "
            f"{time.monotonic() - started:.2f} s"
        )
        cut = 0
        for sock in slow:
            with suppress(TimeoutError):
                status, _, _ = recv_answer(sock, timeout=0.2)
                assert status == 408
                cut += 1
        assert cut >= 1
        assert server.receiver.counts()["requests_refused_timeout"] == cut
    finally:
        for sock in slow:
            sock.close()
        server.stop()


@pytest.mark.slow  # waits for timeouts
def test_a_trickling_body_cannot_hold_up_stop(tmp_path: Path) -> None:
    """Server.stop() (what SIGTERM runs) with a client sending its body a byte at a time:
    returned once ``serve_read_timeout`` (1 s) cut the body, long before the 30 s grace."""
    settings = ServeSettings.load(
        {},
        endpoint=f"file://{tmp_path}/out.lp",
        spool="memory",
        serve_grpc_port=0,
        serve_http_port=0,
        serve_read_timeout=1.0,
    )
    server = Server(settings)
    body, _ = good_body(50)
    answers: list[Any] = []
    sending = threading.Event()

    def trickle() -> None:
        with closing(socket.create_connection(("127.0.0.1", server.http_port))) as sock:
            sock.sendall(head(Content_Type=PROTOBUF, Content_Length=str(len(body))))
            try:
                for byte in body:
                    sock.sendall(bytes([byte]))
                    sending.set()
                    time.sleep(0.05)
            except OSError as error:
                answers.append(type(error).__name__)
            try:
                answers.append(recv_answer(sock)[0])
            except OSError as error:
                answers.append(type(error).__name__)

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        assert sending.wait(ANSWER_TIMEOUT)
    finally:
        started = time.monotonic()
        server.stop(grace=30.0)
        took = time.monotonic() - started
    thread.join(ANSWER_TIMEOUT)
    print(f"\nstop() with a trickling body took {took:.2f} s; the client saw {answers}")
    assert took < settings.serve_read_timeout + 4  # not the 30 s grace
    assert 408 in answers or any(isinstance(answer, str) for answer in answers)


def test_tls_handshakes_do_not_block_other_clients(certificate: tuple[Path, Path]) -> None:
    """Idle TCP connections to the TLS port (no ClientHello, or half of one) do not keep an
    HTTPS client from being answered."""
    cert, key = certificate
    server = Running(serve_tls_cert=str(cert), serve_tls_key=str(key), serve_read_timeout=3.0)
    with ExitStack() as stack:
        try:
            for index in range(5):
                sock = stack.enter_context(closing(server.connect()))
                if index % 2:
                    sock.sendall(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello
            body, _ = good_body(1)
            started = time.monotonic()
            answer = requests.post(
                f"https://127.0.0.1:{server.port}{TRACES_PATH}",
                data=body,
                headers=PB,
                verify=str(cert),
                timeout=ANSWER_TIMEOUT,
            )
            assert answer.status_code == 200
            print(f"\nHTTPS beside 5 stalled handshakes: {time.monotonic() - started:.3f} s")
            with pytest.raises(requests.exceptions.SSLError):
                requests.post(
                    f"https://127.0.0.1:{server.port}{TRACES_PATH}",
                    data=body,
                    headers=PB,
                    timeout=ANSWER_TIMEOUT,
                )  # an untrusted certificate: the client says no; the server goes on
            context = ssl.create_default_context(cafile=str(cert))
            with (
                closing(server.connect()) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
            ):
                tls.sendall(head(Content_Type=PROTOBUF, Content_Length=str(len(body))) + body)
                assert recv_answer(tls)[0] == 200
        finally:
            server.stop()


def test_reuse_port_lets_processes_share_the_port() -> None:
    """``reuse_port=True`` sets SO_REUSEPORT (``--workers`` starts N processes on one port)."""
    settings = ServeSettings.load({}, spool="memory", flush_interval=3600)
    receiver = Receiver(settings, sink=InMemorySink())
    servers: list[HttpServer] = []
    try:
        first, port = start_http(receiver, settings, 0, reuse_port=True)
        servers.append(first)
        second, same = start_http(receiver, settings, port, reuse_port=True)
        servers.append(second)
        assert same == port
        assert first._sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        with pytest.raises(OSError):
            servers.append(start_http(receiver, settings, port)[0])
        body, _ = good_body(1)
        for _ in range(4):
            answer = requests.post(
                f"http://127.0.0.1:{port}{TRACES_PATH}", data=body, headers=PB, timeout=5
            )
            assert answer.status_code == 200
    finally:
        for server in servers:
            server.stop(1)
        receiver.shutdown()


@pytest.mark.slow  # runs ss
def test_the_listen_backlog_is_at_least_128(running: Running) -> None:
    assert http_server_module.BACKLOG >= 128
    ss = shutil.which("ss")
    assert ss, "ss (iproute2) is needed to read the backlog"
    shown = subprocess.run(
        [ss, "-ltnH", f"sport = :{running.port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert shown[0] == "LISTEN", shown
    assert int(shown[2]) >= 128, shown  # Send-Q of a listening socket: its backlog


# --------------------------------------------------------------------------- a serve process


def rss_and_threads(pid: int) -> tuple[int, int]:
    """Resident memory (bytes) and thread count of process ``pid``."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["Threads"])


def file_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_LUNA_ENDPOINT": f"file://{tmp_path / 'points.lp'}",
        "XDG_STATE_HOME": str(tmp_path / "state"),
        **extra,
    }


def good_post(serve: Serve, session: requests.Session, headers: Mapping[str, str]) -> float:
    body, _ = good_body(1)
    started = time.perf_counter()
    answer = session.post(
        f"{serve.http_url}{TRACES_PATH}", data=body, headers=headers, timeout=ANSWER_TIMEOUT
    )
    assert answer.status_code == 200, answer.content
    return time.perf_counter() - started


@pytest.mark.slow  # otel-luna serve
def test_unauthenticated_16_mib_bodies_are_refused_unread(tmp_path: Path) -> None:
    """64 clients declare 16 MiB bodies without the token and send 64 KiB of them: each gets
    401 at once and the connection closed; serve's memory does not take their bodies in (the
    old server buffered every one: 47 MB → 1 GB)."""
    size = 16 << 20
    env = file_env(tmp_path, OTEL_EXPORTER_LUNA_SERVE_TOKEN=TOKEN)
    with Serve(env) as serve:
        with requests.Session() as session:
            good_post(serve, session, {**PB, **AUTH})
        before, threads_before = rss_and_threads(serve.pid)
        clients = []
        try:
            for _ in range(64):
                sock = socket.create_connection(("127.0.0.1", serve.http_port), timeout=5)
                clients.append(sock)
                sock.sendall(head(Content_Type=PROTOBUF, Content_Length=str(size)))
                sock.sendall(bytes(64 * 1024))
            for sock in clients:
                status, headers, body = recv_answer(sock)
                assert status == 401
                assert headers["connection"] == "close"
                assert status_pb2.Status.FromString(body).code == code_pb2.UNAUTHENTICATED
            assert all(closed_by_peer(sock) for sock in clients)
            after, threads_after = rss_and_threads(serve.pid)
        finally:
            for sock in clients:
                sock.close()
        # And a client that writes the whole 16 MiB before it reads still reads the 401.
        answer = requests.post(
            f"{serve.http_url}{TRACES_PATH}", data=bytes(size), headers=PB, timeout=30
        )
        assert answer.status_code == 401
        grew = after - before
        print(
            f"\n64 unauthenticated 16 MiB bodies: RSS {before / 2**20:.0f} MiB → "
            f"{after / 2**20:.0f} MiB, threads {threads_before} → {threads_after}"
        )
        assert grew < 64 * 2**20, f"serve's RSS grew by {grew / 2**20:.0f} MiB"
    assert "Traceback" not in serve.output


@pytest.mark.slow  # otel-luna serve
def test_slow_clients_do_not_keep_a_good_client_waiting(tmp_path: Path) -> None:
    """200 connections that send a request head a byte at a time (under the 256 cap, within the
    10 s read timeout): a good client is answered at once, every time, and serve does not
    start a thread per connection (the old server: 2,480 slow connections, 2,487 threads)."""
    with Serve(file_env(tmp_path)) as serve:
        with requests.Session() as session:
            good_post(serve, session, PB)
            _, threads_before = rss_and_threads(serve.pid)
            slow: list[socket.socket] = []
            stop = threading.Event()
            try:
                for _ in range(200):
                    sock = socket.create_connection(("127.0.0.1", serve.http_port), timeout=5)
                    sock.sendall(b"P")
                    slow.append(sock)

                def drip() -> None:
                    for byte in b"OST /v1/traces HTTP/1.1\r\nHost: slow\r\n":
                        if stop.wait(0.5):
                            return
                        for sock in slow:
                            with suppress(OSError):
                                sock.sendall(bytes([byte]))

                dripping = threading.Thread(target=drip, daemon=True)
                dripping.start()
                times = sorted(good_post(serve, session, PB) for _ in range(100))
                _, threads_during = rss_and_threads(serve.pid)
            finally:
                stop.set()
                for sock in slow:
                    sock.close()
        print(
            f"\ngood client beside 200 slow heads: median {times[50] * 1e3:.1f} ms, "
            f"p99 {times[98] * 1e3:.1f} ms, max {times[-1] * 1e3:.1f} ms; "
            f"serve threads {threads_before} → {threads_during}"
        )
        assert threads_during - threads_before < 10
    assert "Traceback" not in serve.output


@pytest.mark.slow  # otel-luna serve
def test_serve_env_settings_reach_the_http_front_end(tmp_path: Path) -> None:
    """The new settings from the environment: a 1 s read timeout answers a stalled body 408."""
    env = file_env(tmp_path, OTEL_EXPORTER_LUNA_SERVE_READ_TIMEOUT="1")
    with (
        Serve(env) as serve,
        closing(socket.create_connection(("127.0.0.1", serve.http_port), timeout=5)) as sock,
    ):
        sock.sendall(head(Content_Type=PROTOBUF, Content_Length="100") + b"x")
        started = time.monotonic()
        status, _, body = recv_answer(sock)
        assert status == 408
        assert "serve_read_timeout" in status_pb2.Status.FromString(body).message
        assert time.monotonic() - started < ANSWER_TIMEOUT


def test_the_bearer_scheme_is_case_insensitive_and_one_header_only(
    protocol: HttpProtocol,
) -> None:
    """RFC 9110 makes the scheme case-insensitive; two Authorization headers are refused
    (which one a proxy in front would have checked is anybody's guess)."""
    from multidict import CIMultiDict

    for scheme in ("bearer", "BEARER", "Bearer", " Bearer "):
        headers = {**PB, "Authorization": f"{scheme} {TOKEN}"}
        assert protocol.check("POST", TRACES_PATH, headers) is None, scheme
    twice = CIMultiDict([*PB.items(), ("Authorization", "Bearer wrong")])
    twice.add("Authorization", f"Bearer {TOKEN}")
    refused = protocol.check("POST", TRACES_PATH, twice)
    assert refused is not None and refused.status == 401
