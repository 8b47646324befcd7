"""``otel-luna serve`` acceptance: real OTLP clients → serve → a real InfluxDB 1.x.

Every test runs ``otel-luna serve`` as a child process on free ports of 127.0.0.1
(:class:`servehelpers.Serve`) and stops it with SIGTERM, the graceful drain, expecting exit 0;
the points it wrote are read back from InfluxDB only after that, so each test also checks that
SIGTERM delivers everything that was acknowledged. Clients: the Flask test app under
``opentelemetry-instrument`` with the SDK's OTLP gRPC and HTTP exporters, a Node.js program
(``tests/node``, installed by ``./scripts/bootstrap``), the Python OTLP exporter in-process, and
raw gRPC / HTTP requests for the error cases. Waiting is polling with a deadline.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from google.protobuf import json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

from otel_luna.serve._inflate import zstd
from tests.exporter.test_influxdb1_apps import FLASK_APP, TRAFFIC, drive, luna_env
from tests.support import servers
from tests.support.apprunner import instrumented_app
from tests.support.servehelpers import (
    LOGS_EXPORT,
    Serve,
    grpc_call,
    run_node_app,
    serve_env,
    server_spans,
    stored_ids,
    trace_request,
)
from tests.support.servers import InfluxDB1, ServerProcess, http_request, start_influxdb1
from tests.support.waiting import wait_until

PROTOBUF = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}
#: Deadline for points to reach InfluxDB when nothing fails.
DELIVERY_TIMEOUT = 30.0
#: Deadline of the backpressure scenario: client retries plus serve's own write backoff.
RECOVERY_TIMEOUT = 60.0
HTTP_TIMEOUT = 10.0


# --------------------------------------------------------------------------- helpers


def show(influx: InfluxDB1, statement: str, database: str) -> list[list[Any]]:
    """The rows of a SHOW statement (empty when the measurement does not exist)."""
    result = influx.query(statement, database)["results"][0]
    return [row for series in result.get("series", []) for row in series["values"]]


def series_shape(influx: InfluxDB1, database: str) -> dict[str, Any]:
    """Per measurement: tag keys, field keys with types, and a count per (tag values, field
    names present). Times and the values of request_id and the *_time fields are left out."""
    shape: dict[str, Any] = {}
    for measurement in ("requests", "errors"):
        tag_keys = {row[0] for row in show(influx, f"SHOW TAG KEYS FROM {measurement}", database)}
        field_keys = dict(show(influx, f"SHOW FIELD KEYS FROM {measurement}", database))
        counted: Counter[tuple[Any, ...]] = Counter()
        for row in influx.select(f"SELECT * FROM {measurement}", database):
            tags = tuple(sorted((key, row[key]) for key in tag_keys if row.get(key) is not None))
            fields = tuple(sorted(key for key in field_keys if row.get(key) is not None))
            counted[(tags, fields)] += 1
        shape[measurement] = {"tags": tag_keys, "fields": field_keys, "points": counted}
    return shape


def points_written(influx: InfluxDB1, database: str) -> int:
    """Points InfluxDB accepted into ``database`` since it started, rewrites of one point
    included (``writePointsOk`` of its shards): a duplicate delivery shows here."""
    result = influx.query("SHOW STATS FOR 'shard'")
    return sum(
        dict(zip(series["columns"], values, strict=True))["writePointsOk"]
        for series in result["results"][0].get("series", [])
        if series["tags"].get("database") == database
        for values in series["values"]
    )


class _SpawnedProcess(ServerProcess):
    """A :class:`ServerProcess` started without ``preexec_fn``: this test process has gRPC
    channels open, and a real fork runs gRPC's fork handlers, which can abort the child before
    it execs (epoll EBADF, grpc/grpc#43055). Without ``preexec_fn`` subprocess uses vfork."""

    def __init__(
        self, name: str, argv: list[str], workdir: Path, *, env: Mapping[str, str] | None = None
    ) -> None:
        self.name, self.argv, self.workdir = name, argv, workdir
        self.log_path = workdir / f"{name}.log"
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                argv,
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=dict(env) if env is not None else None,
            )


def restart_influxdb1(server: InfluxDB1) -> None:
    """Start a stopped ``influxd`` again: same config file, so same ports and same data."""
    assert not server.process.running()
    env = {key: value for key, value in os.environ.items() if not key.startswith("INFLUXDB_")}
    server.process = _SpawnedProcess("influxd", server.process.argv, server.root, env=env)
    server.process.wait_ready(lambda: http_request("GET", f"{server.url}/ping")[0] == 204)


def post(
    serve: Serve, path: str, body: bytes | Iterator[bytes], **headers: str
) -> requests.Response:
    merged = {**PROTOBUF, **{name.replace("_", "-"): value for name, value in headers.items()}}
    return requests.post(serve.http_url + path, data=body, headers=merged, timeout=HTTP_TIMEOUT)


def good_grpc(serve: Serve, metadata: Sequence[tuple[str, str]] | None = None) -> list[str]:
    """Export two spans over gRPC, expect full success; their request ids."""
    spans, ids = server_spans(2)
    code, details, _, response = grpc_call(
        serve.grpc_target, trace_request(spans).SerializeToString(), metadata=metadata
    )
    assert code == grpc.StatusCode.OK, (code, details, serve.output)
    assert response is not None
    assert not ExportTraceServiceResponse.FromString(response).HasField("partial_success")
    return ids


def good_http(serve: Serve, **headers: str) -> list[str]:
    """Export two spans over HTTP (protobuf), expect 200 and full success; their request ids."""
    with requests.Session() as session:
        return good_http_on(session, serve, **headers)


def good_http_on(session: requests.Session, serve: Serve, **headers: str) -> list[str]:
    """:func:`good_http` on ``session`` (its keep-alive connection stays open)."""
    spans, ids = server_spans(2)
    merged = {**PROTOBUF, **{name.replace("_", "-"): value for name, value in headers.items()}}
    answer = session.post(
        serve.http_url + "/v1/traces",
        data=trace_request(spans).SerializeToString(),
        headers=merged,
        timeout=HTTP_TIMEOUT,
    )
    assert answer.status_code == 200, (answer.status_code, answer.content)
    assert answer.headers["Content-Type"] == "application/x-protobuf"
    assert not ExportTraceServiceResponse.FromString(answer.content).HasField("partial_success")
    return ids


def listening(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def status_of(answer: requests.Response) -> status_pb2.Status:
    """The google.rpc.Status body of an OTLP/HTTP error answer (protobuf)."""
    assert answer.headers["Content-Type"] == "application/x-protobuf", answer.headers
    return status_pb2.Status.FromString(answer.content)


def otlp_json(spans: Sequence[ReadableSpan]) -> bytes:
    """OTLP/JSON of ``spans`` as the specification writes it: ids in hex, enums as integers."""
    document = json_format.MessageToDict(trace_request(spans), use_integers_for_enums=True)
    for resource in document["resourceSpans"]:
        for scope in resource["scopeSpans"]:
            for span in scope["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
    return json.dumps(document).encode()


def assert_exactly(influx: InfluxDB1, database: str, ids: Sequence[str]) -> None:
    """``database`` holds one requests point per id of ``ids`` and nothing else."""
    stored = stored_ids(influx, database)
    assert Counter(stored) == Counter(ids)


@pytest.fixture
def database(influxdb1: InfluxDB1, influxdb1_database: str) -> str:
    return influxdb1_database


# --------------------------------------------------------------------------- the serve helper


def test_serve_reports_free_ports_and_stops_cleanly_on_sigterm(
    influxdb1: InfluxDB1, database: str
) -> None:
    """serve with ports 0 prints the gRPC and HTTP ports it bound, answers on both, exits 0."""
    serve = Serve(serve_env(influxdb1.url, database))
    try:
        assert serve.grpc_port != serve.http_port
        assert serve.grpc_port > 0 and serve.http_port > 0
        ids = good_grpc(serve) + good_http(serve)
    finally:
        serve.stop_ok()
    assert f"writing to {influxdb1.url} (influxdb-v1)" in serve.output
    assert_exactly(influxdb1, database, ids)


def test_sigterm_finishes_http_requests_in_flight_and_ends_idle_connections(
    influxdb1: InfluxDB1, database: str
) -> None:
    """SIGTERM while an HTTP request's body is still arriving and another client idles on a
    keep-alive connection: the listener closes, the request in flight still gets 200 and its
    points, and serve exits 0 without waiting for the idle client."""
    spans, ids = server_spans(5)
    body = trace_request(spans).SerializeToString()
    started, release = threading.Event(), threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield body[:10]
        started.set()
        release.wait(DELIVERY_TIMEOUT)
        yield body[10:]

    answers: list[Any] = []
    serve = Serve(serve_env(influxdb1.url, database))
    with requests.Session() as idle:
        try:
            ids += good_http_on(idle, serve)  # leaves a keep-alive connection open

            def send() -> None:
                try:
                    answers.append(post(serve, "/v1/traces", slow_body()).status_code)
                except requests.RequestException as error:
                    answers.append(error)

            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            assert started.wait(DELIVERY_TIMEOUT)
            serve.popen.send_signal(signal.SIGTERM)
            wait_until(lambda: not listening(serve.http_port), bool, 20, "HTTP listener closed")
            release.set()
            sender.join(DELIVERY_TIMEOUT)
        finally:
            release.set()
            serve.stop_ok()
    assert answers == [200], serve.output
    assert_exactly(influxdb1, database, ids)


# --------------------------------------------------------------------------- same points


def test_flask_app_gives_the_same_points_in_process_over_grpc_and_over_http(
    influxdb1: InfluxDB1,
) -> None:
    """The Flask app's requests give identical requests/errors series in-process, via OTLP/gRPC
    and via OTLP/HTTP through serve."""
    otlp_common = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_SERVICE_NAME": "luna-handlers",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    databases = [influxdb1.fresh_database(name) for name in ("inproc", "grpc", "http")]
    in_process, over_grpc, over_http = databases
    try:
        with instrumented_app(
            FLASK_APP, luna_env(influxdb1, in_process, OTEL_BSP_SCHEDULE_DELAY="100")
        ) as url:
            drive(url)
        with Serve(serve_env(influxdb1.url, over_grpc)) as serve:
            grpc_env = {
                **otlp_common,
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{serve.grpc_target}",
                "OTEL_EXPORTER_OTLP_INSECURE": "true",
            }
            with instrumented_app(FLASK_APP, grpc_env) as url:
                drive(url)
        with Serve(serve_env(influxdb1.url, over_http)) as serve:
            http_env = {
                **otlp_common,
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_ENDPOINT": serve.http_url,
            }
            with instrumented_app(FLASK_APP, http_env) as url:
                drive(url)
        # Both serves have drained on SIGTERM; the app flushed at exit: no waiting needed.
        shapes = [series_shape(influxdb1, name) for name in databases]
    finally:
        for name in databases:
            influxdb1.drop_database(name)
    expected = shapes[0]
    assert sum(expected["requests"]["points"].values()) == len(TRAFFIC)
    assert sum(expected["errors"]["points"].values()) == 5
    assert shapes[1] == expected, "OTLP/gRPC through serve differs from in-process"
    assert shapes[2] == expected, "OTLP/HTTP through serve differs from in-process"


# --------------------------------------------------------------------------- Node.js


def node_span(
    index: int,
    method: str,
    route: str,
    status: int,
    *,
    error: bool = False,
    duration_ms: float = 2.5,
    **luna: Any,
) -> dict[str, Any]:
    attributes = {
        "http.request.method": method,
        "http.route": route,
        "http.response.status_code": status,
        "luna.request_id": f"node-{index}",
        **{f"luna.{key.replace('__', '.')}": value for key, value in luna.items()},
    }
    return {
        "name": f"{method} {route}",
        "attributes": attributes,
        "error": error,
        "duration_ms": duration_ms,
    }


@pytest.mark.parametrize(
    ("protocol", "compression"),
    [("grpc", "none"), ("grpc", "gzip"), ("http/protobuf", "none"), ("http/protobuf", "gzip")],
)
@pytest.mark.node  # runs tests/node
def test_node_sdk_writes_the_documented_points(
    influxdb1: InfluxDB1, database: str, protocol: str, compression: str
) -> None:
    """@opentelemetry/sdk-node with the OTLP gRPC (or HTTP protobuf) trace exporter → serve →
    exactly the expected requests and errors points (routes, statuses, error codes, tags,
    fields)."""
    events = "/handlers/{handler_id}/events"
    spans = (
        [
            node_span(
                i, "POST", events, 201, tag__handler_id="h-1", time__download_images_time=0.25
            )
            for i in range(0, 4)
        ]
        # A whole number in JavaScript goes out as an OTLP intValue: still a float field.
        + [
            node_span(i, "POST", events, 201, tag__handler_id="h-2", time__download_images_time=1)
            for i in range(4, 6)
        ]
        + [node_span(i, "POST", "/extractor", 400, error_code=12031) for i in range(6, 9)]
        + [node_span(i, "GET", "/version", 200, duration_ms=1.0) for i in range(9, 12)]
        + [node_span(i, "POST", "/detector", 500, error=True) for i in range(12, 14)]
    )
    with Serve(serve_env(influxdb1.url, database)) as serve:
        url = f"http://{serve.grpc_target}" if protocol == "grpc" else f"{serve.http_url}/v1/traces"
        output = run_node_app(
            protocol,
            url,
            spans,
            {
                "OTEL_SERVICE_NAME": "node-handlers",
                "OTEL_EXPORTER_OTLP_COMPRESSION": compression,
                "OTEL_METRICS_EXPORTER": "none",
                "OTEL_LOGS_EXPORTER": "none",
                "OTEL_TRACES_EXPORTER": "none",  # the app passes its exporter explicitly
            },
        )
    assert f"exported {len(spans)} spans" in output
    rows = {row["request_id"]: row for row in influxdb1.select("SELECT * FROM requests", database)}
    assert set(rows) == {f"node-{i}" for i in range(len(spans))}
    assert Counter((row["route"], row["status_code"]) for row in rows.values()) == Counter(
        {
            ("POST:/handlers/{handler_id}/events", "201"): 6,
            ("POST:/extractor", "400"): 3,
            ("GET:/version", "200"): 3,
            ("POST:/detector", "500"): 2,
        }
    )
    for index, spec in enumerate(spans):
        row = rows[f"node-{index}"]
        assert row["service"] == "node-handlers"
        assert row["execution_time"] == pytest.approx(spec["duration_ms"] / 1000)
        expected_time = spec["attributes"].get("luna.time.download_images_time")
        assert row["download_images_time"] == expected_time
        assert row["handler_id"] == spec["attributes"].get("luna.tag.handler_id")
    errors = influxdb1.select("SELECT * FROM errors", database)
    assert Counter((row["route"], row["status_code"], row["error_code"]) for row in errors) == (
        Counter({("POST:/extractor", "400", "12031"): 3, ("POST:/detector", "500", "0"): 2})
    )
    assert {row["request_id"] for row in errors} == {f"node-{i}" for i in range(6, 9)} | {
        "node-12",
        "node-13",
    }
    assert {row[0] for row in show(influxdb1, "SHOW TAG KEYS FROM requests", database)} == {
        "handler_id",
        "route",
        "service",
        "status_code",
    }
    assert {row[0] for row in show(influxdb1, "SHOW TAG KEYS FROM errors", database)} == {
        "error_code",
        "route",
        "service",
        "status_code",
    }
    assert dict(show(influxdb1, "SHOW FIELD KEYS FROM requests", database)) == {
        "request_id": "string",
        "execution_time": "float",
        "download_images_time": "float",
    }
    assert dict(show(influxdb1, "SHOW FIELD KEYS FROM errors", database)) == {
        "request_id": "string"
    }


# --------------------------------------------------------------------------- backpressure


@pytest.fixture
def own_influxdb1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InfluxDB1]:
    """An InfluxDB 1.x of this test alone, so it can be stopped and restarted (started without
    a real fork, see :class:`_SpawnedProcess`)."""
    with monkeypatch.context() as patch:
        patch.setattr(servers, "ServerProcess", _SpawnedProcess)
        server = start_influxdb1(tmp_path / "influxdb")
    try:
        yield server
    finally:
        server.stop()


class _Records(logging.Filter):
    """Keeps the message of every record a logger sees. Installed as the logger's *first*
    filter: the OTLP exporter's logger has a ``DuplicateFilter`` that drops a message already
    logged in the same 20 s (as by the test before), so a handler would miss it."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.messages.append(record.getMessage())
        return True


@pytest.mark.parametrize("spool", ["disk", "memory"])
def test_full_spool_pushes_back_and_every_span_arrives_in_the_end(
    own_influxdb1: InfluxDB1, spool: str
) -> None:
    """With InfluxDB down and a tiny spool, clients get RESOURCE_EXHAUSTED (gRPC, with
    RetryInfo) / 503 with Retry-After (HTTP); the SDK exporter retries and, once InfluxDB is
    back, every span it was told was exported is in InfluxDB exactly once."""
    influx = own_influxdb1
    database = influx.fresh_database("backpressure")
    influx.stop()
    env = serve_env(
        influx.url,
        database,
        OTEL_EXPORTER_LUNA_SPOOL=spool,
        OTEL_EXPORTER_LUNA_SPOOL_MAX_BYTES="20000",
        OTEL_EXPORTER_LUNA_BATCH_SIZE="50",
    )
    chunks = [server_spans(50) for _ in range(12)]  # ~7.5 kB of line protocol each
    sent = [request_id for _, ids in chunks for request_id in ids]
    records = _Records()
    client_logger = logging.getLogger("opentelemetry.exporter.otlp.proto.grpc.exporter")
    client_logger.filters.insert(0, records)
    results: list[SpanExportResult] = []
    refused_ids: list[str] = []

    def refusals() -> list[str]:
        return [m for m in records.messages if "RESOURCE_EXHAUSTED" in m]

    with Serve(env) as serve:
        exporter = OTLPSpanExporter(
            endpoint=f"http://{serve.grpc_target}", insecure=True, timeout=RECOVERY_TIMEOUT
        )

        def export_all() -> None:
            for spans, _ in chunks:
                results.append(exporter.export(spans))

        sender = threading.Thread(target=export_all, name="otlp-client", daemon=True)
        try:
            sender.start()
            wait_until(
                lambda: bool(refusals()) or not sender.is_alive(),
                bool,
                DELIVERY_TIMEOUT,
                "the client is told RESOURCE_EXHAUSTED (or has sent everything)",
            )
            if refusals():
                # While full: a raw gRPC call of the same size shows RetryInfo; HTTP answers
                # 503 + Retry-After (a request is refused when it would not fit).
                refused, refused_ids = server_spans(50)
                body = trace_request(refused).SerializeToString()
                code, _, trailing, _ = grpc_call(serve.grpc_target, body)
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
                details = status_pb2.Status.FromString(trailing["grpc-status-details-bin"])
                assert details.code == code_pb2.RESOURCE_EXHAUSTED
                retry = error_details_pb2.RetryInfo()
                assert details.details[0].Unpack(retry)
                assert retry.retry_delay.seconds >= 1
                answer = post(serve, "/v1/traces", body)
                assert answer.status_code in (429, 503), answer.status_code
                assert int(answer.headers["Retry-After"]) >= 1
            restart_influxdb1(influx)
            sender.join(RECOVERY_TIMEOUT)
            assert not sender.is_alive(), "the client was still retrying"
        finally:
            client_logger.removeFilter(records)
            exporter.shutdown()
    # serve has drained on SIGTERM: whatever it acknowledged is in InfluxDB now.
    assert results == [SpanExportResult.SUCCESS] * len(chunks), records.messages
    stored = stored_ids(influx, database)
    lost = len(set(sent) - set(stored))
    assert Counter(stored) == Counter(sent), f"{lost} of {len(sent)} acknowledged spans lost"
    assert [m for m in refusals() if "retrying" in m], "the client was never pushed back"
    assert not set(refused_ids) & set(stored)


def test_request_bigger_than_the_spool_headroom_is_not_refused_forever(
    influxdb1: InfluxDB1, database: str
) -> None:
    """A request that could never fit under the high-water mark, sent to an empty spool, is not
    answered with a retryable RESOURCE_EXHAUSTED (which clients would retry until they drop it)."""
    spans, ids = server_spans(90)  # ~19.5 kB of protobuf
    body = trace_request(spans).SerializeToString()
    env = serve_env(influxdb1.url, database, OTEL_EXPORTER_LUNA_SPOOL_MAX_BYTES="20000")
    with Serve(env) as serve:
        assert 18000 <= len(body) < 20000
        code, details, _, _ = grpc_call(serve.grpc_target, body)
        assert code != grpc.StatusCode.RESOURCE_EXHAUSTED, details
    if code == grpc.StatusCode.OK:
        assert_exactly(influxdb1, database, ids)


# --------------------------------------------------------------------------- errors


def test_malformed_protobuf_is_invalid_argument_then_serving_goes_on(
    influxdb1: InfluxDB1, database: str
) -> None:
    """Malformed protobuf: gRPC INVALID_ARGUMENT, HTTP 400 with a Status body; the next good
    request on each protocol succeeds and nothing of the bad ones is written."""
    garbage = b"\x0a\xff\xff\xff\xff\x0f\x00garbage"
    with Serve(serve_env(influxdb1.url, database)) as serve:
        code, details, _, _ = grpc_call(serve.grpc_target, garbage)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
        ids = good_grpc(serve)
        answer = post(serve, "/v1/traces", garbage)
        assert answer.status_code == 400
        assert status_of(answer).code == code_pb2.INVALID_ARGUMENT
        ids += good_http(serve)
        answer = post(serve, "/v1/traces", b"{not json", **JSON)
        assert answer.status_code == 400
        assert answer.headers["Content-Type"] == "application/json"
        assert json.loads(answer.content)["code"] == code_pb2.INVALID_ARGUMENT
        ids += good_http(serve)
    assert_exactly(influxdb1, database, ids)


def test_wrong_content_type_is_415_then_serving_goes_on(
    influxdb1: InfluxDB1, database: str
) -> None:
    """An HTTP body that is neither protobuf nor JSON gets 415; the next good request works."""
    spans, bad_ids = server_spans(2)
    body = trace_request(spans).SerializeToString()
    with Serve(serve_env(influxdb1.url, database)) as serve:
        answer = post(serve, "/v1/traces", body, Content_Type="text/plain")
        assert answer.status_code == 415
        ids = good_http(serve)
    assert_exactly(influxdb1, database, ids)
    assert not set(bad_ids) & set(ids)


def test_oversized_messages_are_refused_then_serving_goes_on(
    influxdb1: InfluxDB1, database: str
) -> None:
    """With --max-message-bytes 1000: gRPC RESOURCE_EXHAUSTED, HTTP 413 (a plain body, a gzip
    body that inflates past the limit, a chunked body); small requests before and after
    succeed."""
    big, big_ids = server_spans(40)
    body = trace_request(big).SerializeToString()
    assert len(body) > 5000
    with Serve(serve_env(influxdb1.url, database), "--max-message-bytes", "1000") as serve:
        ids = good_grpc(serve)
        code, details, _, _ = grpc_call(serve.grpc_target, body)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
        ids += good_grpc(serve)
        answer = post(serve, "/v1/traces", body)
        assert answer.status_code == 413
        ids += good_http(serve)
        inflating, inflating_ids = server_spans(1, attributes={"luna.field.note": "x" * 5000})
        big_ids += inflating_ids
        compressed = gzip.compress(trace_request(inflating).SerializeToString())
        assert len(compressed) < 1000
        answer = post(serve, "/v1/traces", compressed, Content_Encoding="gzip")
        assert answer.status_code == 413
        ids += good_http(serve)
        answer = requests.post(
            serve.http_url + "/v1/traces", data=chunked(body), headers=PROTOBUF, timeout=10
        )
        assert answer.status_code == 413
        ids += good_http(serve)
    assert_exactly(influxdb1, database, ids)
    assert not set(big_ids) & set(ids)


def test_bearer_token_is_required_on_both_protocols(influxdb1: InfluxDB1, database: str) -> None:
    """With OTEL_EXPORTER_LUNA_SERVE_TOKEN set, a missing or wrong token gets UNAUTHENTICATED /
    401 and writes nothing; the right token succeeds on both protocols."""
    env = serve_env(influxdb1.url, database, OTEL_EXPORTER_LUNA_SERVE_TOKEN="secret")
    spans, bad_ids = server_spans(2)
    body = trace_request(spans).SerializeToString()
    with Serve(env) as serve:
        for metadata in (None, [("authorization", "Bearer wrong")], [("authorization", "secret")]):
            code, details, _, _ = grpc_call(serve.grpc_target, body, metadata=metadata)
            assert code == grpc.StatusCode.UNAUTHENTICATED, (metadata, code, details)
        ids = good_grpc(serve, metadata=[("authorization", "Bearer secret")])
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "secret"}):
            answer = requests.post(
                serve.http_url + "/v1/traces",
                data=body,
                headers={**PROTOBUF, **headers},
                timeout=HTTP_TIMEOUT,
            )
            assert answer.status_code == 401, headers
            assert status_of(answer).code == code_pb2.UNAUTHENTICATED
        ids += good_http(serve, Authorization="Bearer secret")
    assert_exactly(influxdb1, database, ids)
    assert not set(bad_ids) & set(ids)


def chunked(body: bytes) -> Iterator[bytes]:
    """``body`` in three pieces: ``requests`` sends it with ``Transfer-Encoding: chunked``."""
    third = len(body) // 3
    yield from (body[:third], body[third : 2 * third], body[2 * third :])


def test_gzip_json_and_chunked_bodies_give_the_same_points_as_protobuf(
    influxdb1: InfluxDB1, database: str
) -> None:
    """HTTP bodies in gzip-compressed protobuf, OTLP/JSON, gzip JSON and chunked transfer
    encoding (as Node.js exporters send) are accepted (200) and written like plain protobuf."""
    batches = [server_spans(3) for _ in range(6)]
    bodies: list[tuple[Any, dict[str, str]]] = [
        (trace_request(batches[0][0]).SerializeToString(), PROTOBUF),
        (
            gzip.compress(trace_request(batches[1][0]).SerializeToString()),
            {**PROTOBUF, "Content-Encoding": "gzip"},
        ),
        (otlp_json(batches[2][0]), JSON),
        (gzip.compress(otlp_json(batches[3][0])), {**JSON, "Content-Encoding": "gzip"}),
        (chunked(trace_request(batches[4][0]).SerializeToString()), PROTOBUF),
        (
            chunked(gzip.compress(trace_request(batches[5][0]).SerializeToString())),
            {**PROTOBUF, "Content-Encoding": "gzip"},
        ),
    ]
    with Serve(serve_env(influxdb1.url, database)) as serve:
        for body, headers in bodies:
            answer = requests.post(
                serve.http_url + "/v1/traces", data=body, headers=headers, timeout=HTTP_TIMEOUT
            )
            assert answer.status_code == 200, (headers, answer.content)
            assert answer.headers["Content-Type"] == headers["Content-Type"]
            if headers["Content-Type"] == "application/json":
                assert "partialSuccess" not in json.loads(answer.content or b"{}")
    rows = influxdb1.select("SELECT * FROM requests", database)
    assert Counter(row["request_id"] for row in rows) == Counter(
        request_id for _, ids in batches for request_id in ids
    )
    by_id = {row["request_id"]: row for row in rows}
    shapes = {
        tuple(sorted((k, v) for k, v in by_id[i].items() if k not in ("time", "request_id")))
        for _, ids in batches
        for i in ids
    }
    assert len(shapes) == 1, shapes  # same route, status, service and execution_time


def test_zstd_bodies_are_stored_and_a_zstd_bomb_is_refused_like_a_gzip_bomb(
    influxdb1: InfluxDB1, database: str
) -> None:
    """``Content-Encoding: zstd`` (what a Collector exporter with ``compression: zstd`` sends),
    protobuf and JSON, one frame or two, is written like plain protobuf; a small zstd body
    that inflates past the message limit is refused 413 as a gzip one is."""
    batches = [server_spans(3) for _ in range(3)]
    protobuf = [trace_request(spans).SerializeToString() for spans, _ in batches]
    bodies = [
        (zstd.compress(protobuf[0]), PROTOBUF),
        (zstd.compress(protobuf[1][:9]) + zstd.compress(protobuf[1][9:]), PROTOBUF),
        (zstd.compress(otlp_json(batches[2][0])), JSON),
    ]
    with Serve(serve_env(influxdb1.url, database)) as serve:
        for body, headers in bodies:
            answer = post(serve, "/v1/traces", body, **headers, Content_Encoding="zstd")
            assert answer.status_code == 200, (headers, answer.content)
        for bomb, encoding in ((zstd.compress(bytes(1 << 30)), "zstd"), (gzip_bomb(), "gzip")):
            assert len(bomb) < 2 << 20
            answer = post(serve, "/v1/traces", bomb, Content_Encoding=encoding)
            assert answer.status_code == 413, (encoding, answer.content)
            assert "serve_max_message_bytes" in status_of(answer).message
    assert_exactly(influxdb1, database, [i for _, ids in batches for i in ids])


def gzip_bomb() -> bytes:
    """1 GiB of zeros, gzip-compressed (1 MiB)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1 << 20)
    return b"".join(compressor.compress(block) for _ in range(1024)) + compressor.flush()


def test_a_body_of_many_gzip_members_is_refused_at_once_and_good_clients_are_answered(
    influxdb1: InfluxDB1, database: str
) -> None:
    """16 MiB of empty gzip members (once 7 minutes of serve's CPU, each member copied the
    rest of the body): refused 400, while good clients on both protocols are answered."""
    members = gzip.compress(b"") * (16 * 2**20 // len(gzip.compress(b"")))
    with Serve(serve_env(influxdb1.url, database)) as serve:
        answers: list[requests.Response] = []
        sender = threading.Thread(
            target=lambda: answers.append(
                post(serve, "/v1/traces", members, Content_Encoding="gzip")
            )
        )
        sender.start()
        ids = good_http(serve) + good_grpc(serve)
        sender.join()
        assert answers, "the many-members body was not answered"
        assert answers[0].status_code == 400, answers[0].content
        assert "more than 1000 gzip members" in status_of(answers[0]).message
        ids += good_http(serve)
    assert_exactly(influxdb1, database, ids)


def test_logs_are_not_handled(influxdb1: InfluxDB1, database: str) -> None:
    """OTLP logs get HTTP 404 on /v1/logs and gRPC UNIMPLEMENTED; traces still work after."""
    with Serve(serve_env(influxdb1.url, database)) as serve:
        answer = post(serve, "/v1/logs", b"")
        assert answer.status_code == 404
        assert status_of(answer).code == code_pb2.NOT_FOUND
        code, _, _, _ = grpc_call(serve.grpc_target, b"", method=LOGS_EXPORT)
        assert code == grpc.StatusCode.UNIMPLEMENTED
        ids = good_grpc(serve) + good_http(serve)
    assert_exactly(influxdb1, database, ids)


# --------------------------------------------------------------------------- two replicas


class RoundRobin(SpanExporter):
    """Hands each batch to the next of ``exporters`` in turn; counts spans per exporter."""

    def __init__(self, exporters: Sequence[SpanExporter]) -> None:
        self.exporters = list(exporters)
        self.spans = [0] * len(self.exporters)
        self.results: list[SpanExportResult] = []
        self._next = 0
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            index = self._next
            self._next = (index + 1) % len(self.exporters)
        result = self.exporters[index].export(spans)
        with self._lock:
            self.spans[index] += len(spans)
            self.results.append(result)
        return result

    def shutdown(self) -> None:
        for exporter in self.exporters:
            exporter.shutdown()


def test_two_serves_share_one_client_without_loss_or_duplicates(
    influxdb1: InfluxDB1, database: str
) -> None:
    """Two serve processes on their own ports, one database, one client alternating batches
    between them: every request id is written exactly once (InfluxDB's own write counter)."""
    count = 1200
    before = points_written(influxdb1, database)
    env = serve_env(influxdb1.url, database)
    with Serve(env) as first, Serve(env) as second:
        assert {first.grpc_port, first.http_port}.isdisjoint({second.grpc_port, second.http_port})
        balancer = RoundRobin(
            [
                OTLPSpanExporter(endpoint=f"http://{serve.grpc_target}", insecure=True)
                for serve in (first, second)
            ]
        )
        provider = TracerProvider(resource=Resource.create({"service.name": "two-serves"}))
        provider.add_span_processor(
            BatchSpanProcessor(
                balancer, max_export_batch_size=100, schedule_delay_millis=50, max_queue_size=4096
            )
        )
        tracer = provider.get_tracer("two-serves")
        sent = [f"id-{i:05d}" for i in range(count)]
        base = 1_700_000_000 * 10**9
        for index, request_id in enumerate(sent):
            start = base + index * 1000
            span = tracer.start_span(
                "POST /work",
                kind=trace.SpanKind.SERVER,
                start_time=start,
                attributes={
                    "http.request.method": "POST",
                    "http.route": "/work",
                    "http.response.status_code": 200,
                    "luna.request_id": request_id,
                },
            )
            span.end(end_time=start + 1_000_000)
        provider.shutdown()  # flushes the batch processor through both exporters
    assert set(balancer.results) == {SpanExportResult.SUCCESS}
    assert sum(balancer.spans) == count and all(balancer.spans), balancer.spans
    stored = stored_ids(influxdb1, database)
    assert len(stored) == count
    assert set(stored) == set(sent)
    assert points_written(influxdb1, database) - before == count
