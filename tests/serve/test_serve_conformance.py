"""OTLP conformance of ``otel-luna serve`` (issue 11 acceptance): the opentelemetry-proto
``examples/`` bodies and the OpenTelemetry Collector's invalid-request cases, sent to a real serve
over OTLP/HTTP (JSON and the protobuf form of the same body) and OTLP/gRPC, answered as the OTLP
specification (opentelemetry-proto ``docs/specification.md``) says.

Each case asserts the status, the answer's ``Content-Type`` (the request's), its body (an
``Export…ServiceResponse`` with or without ``partial_success``, or a ``google.rpc.Status``), and
the line protocol the file sink wrote for it: after each case a *barrier* request is sent and
awaited in the file, so the lines before it are exactly the case's (the spool delivers in order).
The bodies are our own copies under ``tests/otlp_cases/`` (see its README: where each comes from,
the expected ``*.lp``, and where serve deviates from the Collector).
"""

from __future__ import annotations

import base64
import copy
import gzip
import json
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from otel_luna.serve._inflate import zstd
from tests.support.closedport import ClosedPort
from tests.support.servehelpers import LOGS_EXPORT, RPC_TIMEOUT, TRACE_EXPORT, Serve
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow  # one otel-luna serve process for the module

CASES = Path(__file__).parent.parent / "otlp_cases"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
TRACES = "/v1/traces"
METRICS = "/v1/metrics"
LOGS = "/v1/logs"
METRICS_EXPORT = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
#: serve's --max-message-bytes here: every example fits, the 413 cases do not.
CAP = 64 * 1024
HTTP_TIMEOUT = 10.0
#: The spec's retryable HTTP answers; every other 4xx/5xx MUST NOT be retried.
RETRYABLE = frozenset({429, 502, 503, 504})
#: How long the barrier may take to reach the file (flush interval 0.2 s): a liveness bound.
WRITE_TIMEOUT = 15.0

REQUESTS_OF = {TRACES: ExportTraceServiceRequest, METRICS: ExportMetricsServiceRequest}
RESPONSES_OF = {TRACES: ExportTraceServiceResponse, METRICS: ExportMetricsServiceResponse}
EXPORT_OF = {TRACES: TRACE_EXPORT, METRICS: METRICS_EXPORT}


# --------------------------------------------------------------------------- the cases' data


def document(name: str) -> dict[str, Any]:
    """``tests/otlp_cases/<name>.json``, parsed."""
    loaded: dict[str, Any] = json.loads((CASES / f"{name}.json").read_text())
    return loaded


def golden(name: str) -> list[str]:
    """The lines ``tests/otlp_cases/<name>.lp`` says the case writes."""
    return (CASES / f"{name}.lp").read_text().splitlines()


_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"})


def _walk_ids(node: Any, convert: Callable[[str], str]) -> None:
    """Apply ``convert`` to every trace/span id string in ``node`` (attribute values excepted)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str):
                node[key] = convert(value)
            elif key != "attributes":
                _walk_ids(value, convert)
    elif isinstance(node, list):
        for item in node:
            _walk_ids(item, convert)


def to_protobuf(doc: dict[str, Any], message_type: type[Message]) -> bytes:
    """The protobuf form of an OTLP/JSON document: hex ids to bytes (the protobuf JSON mapping
    reads bytes as base64), then the standard mapping."""
    doc = copy.deepcopy(doc)
    _walk_ids(doc, lambda text: base64.b64encode(bytes.fromhex(text)).decode())
    message = message_type()
    json_format.ParseDict(doc, message, ignore_unknown_fields=True)
    serialized: bytes = message.SerializeToString()
    return serialized


def encode(doc: dict[str, Any], path: str, content_type: str) -> bytes:
    if content_type == JSON:
        return json.dumps(doc).encode()
    return to_protobuf(doc, REQUESTS_OF.get(path, ExportLogsServiceRequest))


# Variations of a JSON document, each the same data spelled another way the spec allows (or
# that receivers accept: snake_case, enum names).


def _map_keys(node: Any, change: Callable[[str, Any], Any]) -> Any:
    if isinstance(node, dict):
        return {key: change(key, _map_keys(value, change)) for key, value in node.items()}
    if isinstance(node, list):
        return [_map_keys(item, change) for item in node]
    return node


_INT64_KEYS = frozenset(
    {"startTimeUnixNano", "endTimeUnixNano", "timeUnixNano", "intValue", "asInt", "count"}
)


def int64_as_strings(doc: dict[str, Any]) -> dict[str, Any]:
    """64-bit integers as decimal strings (what the protobuf JSON mapping writes)."""

    def change(key: str, value: Any) -> Any:
        if key in _INT64_KEYS and isinstance(value, int):
            return str(value)
        if key == "bucketCounts":
            return [str(item) for item in value]
        return value

    changed: dict[str, Any] = _map_keys(doc, change)
    return changed


_ENUMS: dict[str, Callable[[int], str]] = {
    "kind": lambda number: str(Span.SpanKind.Name(number)),
    "aggregationTemporality": lambda number: str(AggregationTemporality.Name(number)),
}


def enums_as_names(doc: dict[str, Any]) -> dict[str, Any]:
    """Enums as their names (``SPAN_KIND_SERVER``): the protobuf JSON mapping allows it, OTLP/JSON
    senders MUST NOT, receivers (the Collector, serve) read both."""

    def change(key: str, value: Any) -> Any:
        if key in _ENUMS and isinstance(value, int):
            return _ENUMS[key](value)
        if key == "status" and isinstance(value, dict) and "code" in value:
            return {**value, "code": Status.StatusCode.Name(value["code"])}
        return value

    changed: dict[str, Any] = _map_keys(doc, change)
    return changed


def ids_lowercase(doc: dict[str, Any]) -> dict[str, Any]:
    """Hex ids in lower case (the spec: case-insensitive hex)."""
    doc = copy.deepcopy(doc)
    _walk_ids(doc, str.lower)
    return doc


def unknown_fields(doc: dict[str, Any]) -> dict[str, Any]:
    """A field no OTLP version has, in every object: the spec says receivers MUST ignore it."""

    def add(node: Any) -> Any:
        if isinstance(node, dict):
            added = {key: add(value) for key, value in node.items()}
            added["futureField"] = {"nested": [1, "two", {"three": None}]}
            return added
        if isinstance(node, list):
            return [add(item) for item in node]
        return node

    added: dict[str, Any] = add(doc)
    return added


def _snake(name: str) -> str:
    return "".join(f"_{char.lower()}" if char.isupper() else char for char in name)


def snake_case(doc: dict[str, Any]) -> dict[str, Any]:
    """Field names as in the .proto files (the Collector's own test body uses them; the spec says
    only lowerCamelCase is valid, receivers built on the protobuf JSON mapping read both).
    Attribute names are string values (of ``key`` fields), not field names: kept."""

    def convert(node: Any) -> Any:
        if isinstance(node, dict):
            return {_snake(key): convert(value) for key, value in node.items()}
        if isinstance(node, list):
            return [convert(item) for item in node]
        return node

    converted: dict[str, Any] = convert(doc)
    return converted


def license_status(doc: dict[str, Any], status: str) -> dict[str, Any]:
    """``trace.json`` with the licence check's status replaced."""
    doc = copy.deepcopy(doc)
    for span in doc["resourceSpans"][0]["scopeSpans"][0]["spans"]:
        for attribute in span["attributes"]:
            if attribute["key"] == "luna.license.status":
                attribute["value"] = {"stringValue": status}
    return doc


LICENSING = [line for line in golden("trace") if line.startswith("licensing,")]
TRACE_WITHOUT_LICENSING = [line for line in golden("trace") if line not in LICENSING]


# --------------------------------------------------------------------------- a serve and its file


class Points:
    """The line protocol the serve's file sink wrote, case by case."""

    def __init__(self, serve: Serve, path: Path) -> None:
        self.serve = serve
        self.path = path
        self.offset = 0

    def of_last_case(self) -> list[str]:
        """The lines written since the last call: a barrier span is sent and awaited in the
        file, so every line spooled before it is there too (one spool, delivered in order)."""
        marker = uuid.uuid4().hex
        answer = post(self.serve, TRACES, barrier_body(marker), PROTOBUF)
        assert answer.status_code == 200, answer.content

        def read() -> bytes:
            if not self.path.exists():
                return b""
            with self.path.open("rb") as file:
                file.seek(self.offset)
                return file.read()

        def complete(data: bytes) -> bool:  # the barrier's line whole, newline included
            at = data.find(marker.encode())
            return at >= 0 and b"\n" in data[at:]

        text = wait_until(read, complete, WRITE_TIMEOUT, "the barrier point")
        lines = text.decode().split("\n")
        at = next(index for index, line in enumerate(lines) if marker in line)
        self.offset += len("\n".join(lines[: at + 1]).encode()) + 1
        return lines[:at]


def barrier_body(marker: str) -> bytes:
    request = ExportTraceServiceRequest()
    resource = request.resource_spans.add()
    resource.resource.attributes.add(key="service.name").value.string_value = "conform-barrier"
    start = 1_700_000_000_000_000_000 + uuid.UUID(marker).int % 10**15
    span = resource.scope_spans.add().spans.add(
        trace_id=uuid.UUID(marker).bytes,
        span_id=b"\x01" * 8,
        name="barrier",
        kind=Span.SPAN_KIND_SERVER,
        start_time_unix_nano=start,
        end_time_unix_nano=start + 1000,
    )
    span.attributes.add(key="http.route", value=AnyValue(string_value="/barrier"))
    span.attributes.add(key="luna.request_id", value=AnyValue(string_value=marker))
    serialized: bytes = request.SerializeToString()
    return serialized


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Points]:
    """One serve for the module, writing line protocol to a file."""
    out = tmp_path_factory.mktemp("serve-conformance")
    env = {
        "OTEL_EXPORTER_LUNA_ENDPOINT": f"file://{out / 'points.lp'}",
        "OTEL_EXPORTER_LUNA_FLUSH_INTERVAL": "0.2",
        "XDG_STATE_HOME": str(out / "state"),
    }
    with Serve(env, "--max-message-bytes", str(CAP)) as serve:
        yield Points(serve, out / "points.lp")
    assert "Traceback" not in serve.output, serve.output


@pytest.fixture
def points(running: Points) -> Iterator[Points]:
    """The module's serve, with nothing left unread in its file before the test."""
    running.of_last_case()
    yield running


# --------------------------------------------------------------------------- sending and checking


def post(
    serve: Serve,
    path: str,
    body: bytes | Iterator[bytes],
    content_type: str | None,
    method: str = "POST",
    **headers: str,
) -> requests.Response:
    sent = {name.replace("_", "-"): value for name, value in headers.items()}
    if content_type is not None:
        sent["Content-Type"] = content_type
    return requests.request(
        method, serve.http_url + path, data=body, headers=sent, timeout=HTTP_TIMEOUT
    )


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def assert_error(
    answer: requests.Response, status: int, code: int, sent_type: str | None
) -> status_pb2.Status:
    """A spec error answer: ``status``, a ``google.rpc.Status`` with ``code`` and a message, in
    the request's encoding (JSON for JSON, else protobuf), and no retry hint on a non-retryable
    status."""
    assert answer.status_code == status, (answer.status_code, answer.content)
    answer_type = JSON if media_type(sent_type) == JSON else PROTOBUF
    assert answer.headers["Content-Type"] == answer_type
    if answer_type == JSON:
        found = json_format.Parse(answer.content, status_pb2.Status())
    else:
        found = status_pb2.Status.FromString(answer.content)
    assert found.code == code, found
    assert found.message
    if status not in RETRYABLE:
        assert "Retry-After" not in answer.headers
    return found


def assert_accepted(
    answer: requests.Response, path: str, sent_type: str, warning: str | None = None
) -> Message:
    """200 with the signal's ``Export…ServiceResponse`` in the request's encoding;
    ``partial_success`` unset (spec: full success), or a warning (0 rejected) containing
    ``warning``."""
    assert answer.status_code == 200, (answer.status_code, answer.content)
    answer_type = JSON if media_type(sent_type) == JSON else PROTOBUF
    assert answer.headers["Content-Type"] == answer_type
    response = RESPONSES_OF[path]()
    if answer_type == JSON:
        json_format.Parse(answer.content, response)
    else:
        response.ParseFromString(answer.content)
    if warning is None:
        assert not response.HasField("partial_success"), response
    else:
        rejected, message = rejected_of(response)
        assert rejected == 0
        assert warning in message
    return response


def rejected_of(response: Message) -> tuple[int, str]:
    partial = response.partial_success
    if isinstance(response, ExportTraceServiceResponse):
        return partial.rejected_spans, partial.error_message
    return partial.rejected_data_points, partial.error_message


def traces_accepted(points: Points, doc: dict[str, Any], content_type: str) -> Message:
    """The ``ExportTraceServiceResponse`` to ``doc`` sent as ``content_type`` (JSON, protobuf,
    or ``"grpc"``), which must be accepted: ``200`` in the request's encoding, or ``OK``."""
    if content_type == "grpc":
        code, details, _, raw = grpc_export(
            points.serve.grpc_target, to_protobuf(doc, ExportTraceServiceRequest)
        )
        assert code == grpc.StatusCode.OK, details
        assert raw is not None
        return ExportTraceServiceResponse.FromString(raw)
    answer = post(points.serve, TRACES, encode(doc, TRACES, content_type), content_type)
    assert answer.status_code == 200, answer.content
    assert answer.headers["Content-Type"] == content_type
    response = ExportTraceServiceResponse()
    if content_type == JSON:
        json_format.Parse(answer.content, response)
    else:
        response.ParseFromString(answer.content)
    return response


def grpc_export(
    target: str,
    body: bytes,
    method: str = TRACE_EXPORT,
    compression: grpc.Compression = grpc.Compression.NoCompression,
) -> tuple[grpc.StatusCode, str, dict[str, Any], bytes | None]:
    """One raw unary call (optionally gzip-compressed): code, details, trailers, response."""
    with grpc.insecure_channel(target, compression=compression) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        try:
            response, state = call.with_call(body, timeout=RPC_TIMEOUT)
        except grpc.RpcError as error:
            trailing = dict(error.trailing_metadata() or ())
            return error.code(), error.details() or "", trailing, None
        return grpc.StatusCode.OK, "", dict(state.trailing_metadata() or ()), response


# --------------------------------------------------------------------------- the examples

#: (case, body file, path, golden lines, the warning serve gives, if any)
EXAMPLES = [
    pytest.param("trace", TRACES, "trace", None, id="trace"),
    pytest.param("metrics", METRICS, "metrics", None, id="metrics"),
    # The opentelemetry-proto example as it is: a SERVER span with no HTTP attributes gives a
    # requests point without route or status_code (no warning: no value was dropped).
    pytest.param("example_trace", TRACES, "example_trace", None, id="proto-example-trace"),
    # The Collector's TestJsonHttp body: snake_case names, an enum name, int64 as numbers.
    pytest.param("collector_trace", TRACES, "collector_trace", None, id="collector-json"),
    # What peers send that once went wrong: PROPFIND/LOCK/MKCOL as _OTHER with the original on
    # one route, a path-only http.url, Flask's and Django's route templates.
    pytest.param("peer_trace", TRACES, "peer_trace", None, id="peer-vectors"),
]

ENCODINGS = [
    pytest.param(JSON, "", id="json"),
    pytest.param(PROTOBUF, "", id="protobuf"),
    pytest.param(JSON, "gzip", id="json-gzip"),
    pytest.param(PROTOBUF, "gzip", id="protobuf-gzip"),
    pytest.param(PROTOBUF, "deflate", id="protobuf-deflate"),
    pytest.param(JSON, "zstd", id="json-zstd"),
    pytest.param(PROTOBUF, "zstd", id="protobuf-zstd"),
]


def compress(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(body)
    if encoding == "deflate":
        return zlib.compress(body)
    if encoding == "zstd":
        return zstd.compress(body)
    return body


@pytest.mark.parametrize(("content_type", "encoding"), ENCODINGS)
@pytest.mark.parametrize(("name", "path", "expected", "warning"), EXAMPLES)
def test_example_bodies_are_accepted_over_http(
    points: Points,
    name: str,
    path: str,
    expected: str,
    warning: str | None,
    content_type: str,
    encoding: str,
) -> None:
    """Each example body, as JSON or protobuf, plain or compressed: 200, the signal's response in
    the request's encoding, and the documented points written."""
    body = compress(encode(document(name), path, content_type), encoding)
    headers = {"Content_Encoding": encoding} if encoding else {}
    answer = post(points.serve, path, body, content_type, **headers)
    assert_accepted(answer, path, content_type, warning)
    assert points.of_last_case() == golden(expected)


@pytest.mark.parametrize("compression", [grpc.Compression.NoCompression, grpc.Compression.Gzip])
@pytest.mark.parametrize(("name", "path", "expected", "warning"), EXAMPLES)
def test_example_bodies_are_accepted_over_grpc(
    points: Points,
    name: str,
    path: str,
    expected: str,
    warning: str | None,
    compression: grpc.Compression,
) -> None:
    """The protobuf form of each example over gRPC (plain and gzip): OK, the signal's response,
    and the same points as over HTTP."""
    body = to_protobuf(document(name), REQUESTS_OF[path])
    code, details, _, response = grpc_export(
        points.serve.grpc_target, body, EXPORT_OF[path], compression
    )
    assert code == grpc.StatusCode.OK, details
    assert response is not None
    parsed = RESPONSES_OF[path].FromString(response)
    if warning is None:
        assert not parsed.HasField("partial_success")
    else:
        rejected, message = rejected_of(parsed)
        assert rejected == 0
        assert warning in message
    assert points.of_last_case() == golden(expected)


@pytest.mark.parametrize("content_type", [JSON, PROTOBUF])
def test_logs_are_an_unsupported_signal(points: Points, content_type: str) -> None:
    """The logs example: HTTP 404 with a Status (non-retryable: the client drops the logs) in the
    request's encoding, gRPC UNIMPLEMENTED; nothing is written."""
    body = encode(document("logs"), LOGS, content_type)
    answer = post(points.serve, LOGS, body, content_type)
    assert_error(answer, 404, code_pb2.NOT_FOUND, content_type)
    code, _, _, _ = grpc_export(
        points.serve.grpc_target,
        to_protobuf(document("logs"), ExportLogsServiceRequest),
        LOGS_EXPORT,
    )
    assert code == grpc.StatusCode.UNIMPLEMENTED
    assert points.of_last_case() == []


# --------------------------------------------------------------------------- the Collector's cases


@pytest.mark.parametrize(
    ("method", "path", "content_type", "headers", "status", "code"),
    [
        # Paths the spec does not define.
        pytest.param("POST", "/v1/trace", JSON, {}, 404, code_pb2.NOT_FOUND, id="path-v1-trace"),
        pytest.param("POST", "/v2/traces", PROTOBUF, {}, 404, code_pb2.NOT_FOUND, id="path-v2"),
        pytest.param("POST", "/", PROTOBUF, {}, 404, code_pb2.NOT_FOUND, id="path-root"),
        pytest.param("POST", "/v1/traces/", JSON, {}, 404, code_pb2.NOT_FOUND, id="path-slash"),
        # Collector TestHandleInvalidRequests: GET and PATCH are 405 (OTLP/HTTP is POST only).
        pytest.param("GET", TRACES, JSON, {}, 405, code_pb2.UNIMPLEMENTED, id="get-traces"),
        pytest.param("PATCH", TRACES, JSON, {}, 405, code_pb2.UNIMPLEMENTED, id="patch-traces"),
        pytest.param("PUT", METRICS, PROTOBUF, {}, 405, code_pb2.UNIMPLEMENTED, id="put-metrics"),
        pytest.param("GET", METRICS, JSON, {}, 405, code_pb2.UNIMPLEMENTED, id="get-metrics"),
        pytest.param(
            "DELETE", TRACES, PROTOBUF, {}, 405, code_pb2.UNIMPLEMENTED, id="delete-traces"
        ),
        # Collector: no Content-Type and "invalid" are 415, on every signal.
        pytest.param("POST", TRACES, None, {}, 415, code_pb2.INVALID_ARGUMENT, id="no-type"),
        pytest.param("POST", TRACES, "invalid", {}, 415, 3, id="type-invalid"),
        pytest.param("POST", METRICS, None, {}, 415, 3, id="metrics-no-type"),
        pytest.param("POST", METRICS, "invalid", {}, 415, 3, id="metrics-type-invalid"),
        pytest.param("POST", TRACES, "text/plain", {}, 415, 3, id="type-text"),
        pytest.param("POST", TRACES, "application/grpc", {}, 415, 3, id="type-grpc"),
        pytest.param("POST", TRACES, "application/protobuf", {}, 415, 3, id="type-protobuf"),
        # Only none and gzip are required; serve also reads deflate and zstd, not these.
        pytest.param("POST", TRACES, PROTOBUF, {"Content_Encoding": "br"}, 415, 3, id="br"),
        pytest.param(
            "POST", METRICS, PROTOBUF, {"Content_Encoding": "snappy"}, 415, 3, id="snappy"
        ),
    ],
)
def test_requests_refused_by_their_head(
    points: Points,
    method: str,
    path: str,
    content_type: str | None,
    headers: dict[str, str],
    status: int,
    code: int,
) -> None:
    """Wrong path 404, wrong method 405 (with ``Allow: POST``), unsupported Content-Type or
    Content-Encoding 415: each a non-retryable answer with a Status in the request's encoding
    (protobuf when the type is neither), and nothing written."""
    body = encode(document("trace"), TRACES, media_type(content_type) or PROTOBUF)
    answer = post(points.serve, path, body, content_type, method, **headers)
    assert_error(answer, status, code, content_type)
    if status == 405:
        assert answer.headers["Allow"] == "POST"
    assert points.of_last_case() == []


@pytest.mark.parametrize(
    "content_type",
    [
        pytest.param("application/json; charset=utf-8", id="json-charset"),
        pytest.param("APPLICATION/JSON", id="json-uppercase"),
        pytest.param("application/x-protobuf; proto=ExportTraceServiceRequest", id="pb-param"),
        pytest.param("Application/X-Protobuf", id="pb-mixed-case"),
    ],
)
def test_content_type_parameters_and_case_are_accepted(points: Points, content_type: str) -> None:
    """The Collector's TestJsonHttp content types: a media type in any case, with parameters, is
    read; the answer's Content-Type is the bare media type."""
    body = encode(document("trace"), TRACES, media_type(content_type))
    answer = post(points.serve, TRACES, body, content_type)
    assert_accepted(answer, TRACES, content_type)
    assert points.of_last_case() == golden("trace")


GOOD_GZIP = gzip.compress(json.dumps(document("trace")).encode())


@pytest.mark.parametrize(
    ("path", "content_type", "body", "headers"),
    [
        # Collector TestHandleInvalidRequests "invalid request": 1234 as JSON.
        pytest.param(TRACES, JSON, b"1234", {}, id="json-number"),
        pytest.param(METRICS, JSON, b"1234", {}, id="metrics-json-number"),
        pytest.param(TRACES, JSON, b'{"resourceSpans": [', {}, id="json-broken"),
        pytest.param(TRACES, JSON, b"[]", {}, id="json-list"),
        pytest.param(TRACES, JSON, b"null", {}, id="json-null"),
        pytest.param(TRACES, JSON, b'{"resourceSpans": 5}', {}, id="json-wrong-type"),
        pytest.param(TRACES, JSON, b'{"resourceSpans": [], "\xff": 1}', {}, id="json-not-utf8"),
        # A zero-byte body is no JSON document (for protobuf it is the empty request: 200).
        pytest.param(TRACES, JSON, b"", {}, id="json-empty-body"),
        # Collector TestOTLPReceiverInvalidContentEncoding: JSON text sent as gzip / protobuf.
        pytest.param(TRACES, PROTOBUF, b'{"key": "value"}', {}, id="protobuf-json-text"),
        pytest.param(TRACES, PROTOBUF, b"\xff\xff\xff\xff\xff", {}, id="protobuf-garbage"),
        pytest.param(METRICS, PROTOBUF, b"\x0a\x05\x0a\x03", {}, id="protobuf-truncated"),
        pytest.param(
            TRACES, JSON, b'{"key": "value"}', {"Content_Encoding": "gzip"}, id="gzip-not-gzip"
        ),
        pytest.param(
            TRACES, PROTOBUF, b'{"key": "value"}', {"Content_Encoding": "gzip"}, id="pb-not-gzip"
        ),
        pytest.param(
            TRACES,
            JSON,
            GOOD_GZIP[: len(GOOD_GZIP) // 2],
            {"Content_Encoding": "gzip"},
            id="gzip-truncated",
        ),
        pytest.param(
            TRACES, PROTOBUF, b"\x00\x01\x02", {"Content_Encoding": "deflate"}, id="not-deflate"
        ),
        pytest.param(
            TRACES, PROTOBUF, b"\x00\x01\x02", {"Content_Encoding": "zstd"}, id="not-zstd"
        ),
        pytest.param(
            TRACES,
            JSON,
            zstd.compress(json.dumps(document("trace")).encode())[:-9],
            {"Content_Encoding": "zstd"},
            id="zstd-truncated",
        ),
    ],
)
def test_bad_data_is_400(
    points: Points, path: str, content_type: str, body: bytes, headers: dict[str, str]
) -> None:
    """A body that cannot be decoded (JSON, protobuf, gzip): 400 with an INVALID_ARGUMENT Status
    in the request's encoding; the client MUST NOT retry; nothing is written."""
    answer = post(points.serve, path, body, content_type, **headers)
    status = assert_error(answer, 400, code_pb2.INVALID_ARGUMENT, content_type)
    assert status.message.startswith("malformed")
    assert points.of_last_case() == []


@pytest.mark.parametrize(
    ("path", "content_type", "body"),
    [
        pytest.param(TRACES, PROTOBUF, b"", id="traces-protobuf-zero-bytes"),
        pytest.param(METRICS, PROTOBUF, b"", id="metrics-protobuf-zero-bytes"),
        pytest.param(TRACES, JSON, b"{}", id="traces-json-object"),
        pytest.param(METRICS, JSON, b"{}", id="metrics-json-object"),
        pytest.param(TRACES, JSON, b'{"resourceSpans": []}', id="traces-no-resources"),
        pytest.param(
            TRACES,
            JSON,
            b'{"resourceSpans": [{"scopeSpans": [{"spans": []}]}]}',
            id="traces-empty-envelopes",
        ),
        pytest.param(
            METRICS,
            JSON,
            b'{"resourceMetrics": [{"resource": {}, "scopeMetrics": []}]}',
            id="metrics-empty-envelopes",
        ),
    ],
)
def test_empty_requests_succeed(points: Points, path: str, content_type: str, body: bytes) -> None:
    """A request that carries no telemetry: the spec says success, with partial_success unset."""
    answer = post(points.serve, path, body, content_type)
    assert_accepted(answer, path, content_type)
    assert points.of_last_case() == []


def test_empty_requests_succeed_over_grpc(points: Points) -> None:
    """The empty request over gRPC: OK, partial_success unset."""
    for path in (TRACES, METRICS):
        code, details, _, response = grpc_export(points.serve.grpc_target, b"", EXPORT_OF[path])
        assert code == grpc.StatusCode.OK, details
        assert response is not None
        assert not RESPONSES_OF[path].FromString(response).HasField("partial_success")
    assert points.of_last_case() == []


# --------------------------------------------------------------------------- OTLP/JSON encoding

VARIANTS = [
    pytest.param(ids_lowercase, id="ids-lowercase-hex"),
    pytest.param(enums_as_names, id="enums-as-names"),
    pytest.param(int64_as_strings, id="int64-as-strings"),
    pytest.param(unknown_fields, id="unknown-fields"),
    pytest.param(snake_case, id="snake-case-names"),
    pytest.param(lambda doc: int64_as_strings(enums_as_names(ids_lowercase(doc))), id="all"),
]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(("name", "path"), [("trace", TRACES), ("metrics", METRICS)])
def test_json_spellings_give_the_same_points(
    points: Points, name: str, path: str, variant: Callable[[dict[str, Any]], dict[str, Any]]
) -> None:
    """The same data spelled as the spec allows (ids in either case, int64 as strings or numbers,
    unknown fields, which receivers MUST ignore) or as receivers accept (enum names, snake_case):
    200, full success, the very points of the plain example."""
    body = json.dumps(variant(document(name))).encode()
    assert_accepted(post(points.serve, path, body, JSON), path, JSON)
    assert points.of_last_case() == golden(name)


def with_unknown_protobuf_fields(body: bytes, message_type: type[Message]) -> bytes:
    """``body`` with fields no OTLP version has (numbers 111, 112) in the request and in every
    span or metric: protobuf keeps them as unknown fields and writes them back out."""
    unknown = b"\xf8\x06\x01" + b"\x82\x07\x03abc"  # field 111 varint 1; field 112 bytes "abc"
    message = message_type.FromString(body)
    for resource in getattr(message, "resource_spans", []) or getattr(
        message, "resource_metrics", []
    ):
        resource.MergeFromString(unknown)
        for scope in getattr(resource, "scope_spans", []) or getattr(resource, "scope_metrics", []):
            for item in getattr(scope, "spans", []) or getattr(scope, "metrics", []):
                item.MergeFromString(unknown)
    serialized: bytes = message.SerializeToString() + unknown
    assert len(serialized) > len(body) + 3 * len(unknown)
    return serialized


@pytest.mark.parametrize(("name", "path"), [("trace", TRACES), ("metrics", METRICS)])
def test_unknown_protobuf_fields_are_ignored(points: Points, name: str, path: str) -> None:
    """Unknown field numbers in the protobuf form (a newer sender), over HTTP and gRPC: accepted,
    the same points."""
    body = with_unknown_protobuf_fields(
        to_protobuf(document(name), REQUESTS_OF[path]), REQUESTS_OF[path]
    )
    assert_accepted(post(points.serve, path, body, PROTOBUF), path, PROTOBUF)
    code, details, _, _ = grpc_export(points.serve.grpc_target, body, EXPORT_OF[path])
    assert code == grpc.StatusCode.OK, details
    assert points.of_last_case() == golden(name) * 2


def base64_ids_in_licence_check(doc: dict[str, Any]) -> dict[str, Any]:
    """``trace.json`` with the licence-check span's ids in base64 (the protobuf JSON mapping's
    spelling of bytes, which OTLP/JSON replaces with hex)."""
    doc = copy.deepcopy(doc)
    for span in doc["resourceSpans"][0]["scopeSpans"][0]["spans"]:
        if span["name"] == "luna.license_check":
            _walk_ids(span, lambda text: base64.b64encode(bytes.fromhex(text)).decode())
    return doc


def test_base64_ids_are_not_read_as_hex(points: Points) -> None:
    """The spec: ids are hex, *not* base64. A span with base64 ids is left out and counted in
    partial_success (rejected_spans 1, the client does not retry), the others written; a body
    whose every span has base64 ids is a 400. (The Collector answers 400 to both.)"""
    body = json.dumps(base64_ids_in_licence_check(document("trace"))).encode()
    answer = post(points.serve, TRACES, body, JSON)
    assert answer.status_code == 200, answer.content
    response = json_format.Parse(answer.content, ExportTraceServiceResponse())
    rejected, message = rejected_of(response)
    assert rejected == 1
    assert "malformed_span=1" in message
    assert "spans[3]" in message
    assert points.of_last_case() == TRACE_WITHOUT_LICENSING

    doc = document("example_trace")
    _walk_ids(doc, lambda text: base64.b64encode(bytes.fromhex(text)).decode())
    answer = post(points.serve, TRACES, json.dumps(doc).encode(), JSON)
    assert_error(answer, 400, code_pb2.INVALID_ARGUMENT, JSON)
    assert points.of_last_case() == []


def licence_check_ids(doc: dict[str, Any], **ids: str) -> dict[str, Any]:
    """``trace.json`` with the licence-check span's ids replaced (OTLP/JSON hex)."""
    doc = copy.deepcopy(doc)
    for span in doc["resourceSpans"][0]["scopeSpans"][0]["spans"]:
        if span["name"] == "luna.license_check":
            span.update(ids)
    return doc


@pytest.mark.parametrize("content_type", [JSON, PROTOBUF, "grpc"])
@pytest.mark.parametrize(
    "ids",
    [
        pytest.param({"traceId": ""}, id="empty-trace-id"),
        pytest.param({"spanId": ""}, id="empty-span-id"),
        pytest.param({"traceId": "0" * 32}, id="zero-trace-id"),
        pytest.param({"spanId": "0" * 16}, id="zero-span-id"),
        pytest.param({"traceId": "5b8efff798038103d269b633813fc6"}, id="15-byte-trace-id"),
        pytest.param({"spanId": "eee19b7ec3c1b17400"}, id="9-byte-span-id"),
        pytest.param({"parentSpanId": "eee19b"}, id="3-byte-parent-span-id"),
    ],
)
def test_invalid_ids_reject_their_span(
    points: Points, ids: dict[str, str], content_type: str
) -> None:
    """trace.proto: a trace id of other than 16 bytes, a span id of other than 8, or either all
    zeros, is invalid. Such a span is left out and counted (``invalid_span_id``), the others
    written: its points would take their identity (time, request_id) from the ids, and spans
    sharing an invalid id would overwrite each other in InfluxDB. (The Collector answers 400 to
    a wrong length and accepts empty or zero ids.)"""
    response = traces_accepted(points, licence_check_ids(document("trace"), **ids), content_type)
    rejected, message = rejected_of(response)
    assert rejected == 1
    assert "invalid_span_id=1" in message
    assert points.of_last_case() == TRACE_WITHOUT_LICENSING


@pytest.mark.parametrize("content_type", [JSON, PROTOBUF, "grpc"])
def test_partial_success_counts_the_rejected_points(points: Points, content_type: str) -> None:
    """A licence check with a status outside the four (an invalid point): 200 / OK with
    partial_success.rejected_spans 1 and the reason, the other points written."""
    response = traces_accepted(points, license_status(document("trace"), "bogus"), content_type)
    assert rejected_of(response)[0] == 1
    assert "invalid_license_status=1" in rejected_of(response)[1]
    assert points.of_last_case() == TRACE_WITHOUT_LICENSING


# --------------------------------------------------------------------------- limits and retries


def _chunks(total: int) -> Iterator[bytes]:
    for _ in range(total // 8192 + 1):
        yield b"\0" * 8192


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        pytest.param(b"\0" * (CAP + 1), {}, id="declared-length"),
        pytest.param(gzip.compress(b"\0" * (CAP + 1)), {"Content_Encoding": "gzip"}, id="gzip"),
        pytest.param(
            zlib.compress(b"\0" * (CAP * 4)), {"Content_Encoding": "deflate"}, id="deflate"
        ),
        pytest.param(zstd.compress(b"\0" * (CAP * 4)), {"Content_Encoding": "zstd"}, id="zstd"),
        pytest.param("chunked", {}, id="chunked"),
    ],
)
def test_a_body_over_the_cap_is_413(
    points: Points, body: bytes | str, headers: dict[str, str]
) -> None:
    """A body over ``--max-message-bytes`` (declared, after decompression, or streamed in
    chunks): 413 with a RESOURCE_EXHAUSTED Status; the client MUST NOT retry; nothing written.
    Over gRPC: RESOURCE_EXHAUSTED without RetryInfo (not retryable)."""
    sent = _chunks(CAP + 1) if body == "chunked" else body
    assert not isinstance(sent, str)
    answer = post(points.serve, TRACES, sent, PROTOBUF, **headers)
    assert_error(answer, 413, code_pb2.RESOURCE_EXHAUSTED, PROTOBUF)
    code, _, trailing, _ = grpc_export(points.serve.grpc_target, b"\0" * (CAP + 1))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "grpc-status-details-bin" not in trailing
    assert points.of_last_case() == []


def test_grpc_bad_data_is_invalid_argument(points: Points) -> None:
    """A malformed protobuf message over gRPC: INVALID_ARGUMENT (not retryable); nothing
    written."""
    for path in (TRACES, METRICS):
        code, _, _, _ = grpc_export(points.serve.grpc_target, b"\xff\xff\xff\xff", EXPORT_OF[path])
        assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert points.of_last_case() == []


def test_back_pressure_is_retryable(tmp_path: Path) -> None:
    """With the database unreachable and a small spool, serve refuses before the spool is full:
    HTTP 503 (a retryable status) with ``Retry-After`` and an UNAVAILABLE Status, gRPC
    RESOURCE_EXHAUSTED with ``RetryInfo`` (which makes it retryable). Both encodings."""
    down = ClosedPort("127.0.0.1", 9)
    env = {
        "OTEL_EXPORTER_LUNA_ENDPOINT": down.url,
        "OTEL_EXPORTER_LUNA_API_VERSION": "1",
        "OTEL_EXPORTER_LUNA_DATABASE": "conformance",
        "OTEL_EXPORTER_LUNA_SPOOL_MAX_BYTES": "20000",
        "OTEL_EXPORTER_LUNA_SHUTDOWN_TIMEOUT": "0.5",
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }
    doc = document("trace")
    try:
        with Serve(env) as serve:
            answers = []
            for _ in range(200):  # each request spools ~0.6 kB: the spool fills within ~30
                answers.append(post(serve, TRACES, encode(doc, TRACES, PROTOBUF), PROTOBUF))
                if answers[-1].status_code != 200:
                    break
            assert {answer.status_code for answer in answers[:-1]} == {200}
            for content_type in (PROTOBUF, JSON):
                answer = post(serve, TRACES, encode(doc, TRACES, content_type), content_type)
                assert_error(answer, 503, code_pb2.UNAVAILABLE, content_type)
                assert int(answer.headers["Retry-After"]) >= 1
            body = to_protobuf(doc, ExportTraceServiceRequest)
            code, _, trailing, _ = grpc_export(serve.grpc_target, body)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            details = status_pb2.Status.FromString(trailing["grpc-status-details-bin"])
            retry = error_details_pb2.RetryInfo()
            assert details.details[0].Unpack(retry)
            assert retry.retry_delay.seconds >= 1
    finally:
        down.close()
