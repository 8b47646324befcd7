"""``otel-luna serve``: OTLP/gRPC and OTLP/HTTP front ends over one :class:`Receiver`.

gRPC (grpcio): ``TraceService/Export`` and ``MetricsService/Export``; the Logs service is not
registered, so clients get ``UNIMPLEMENTED``. HTTP (standard library): ``POST /v1/traces`` and
``/v1/metrics`` with ``application/x-protobuf`` or ``application/json`` bodies, optionally
gzip-compressed; ``/v1/logs`` answers 404. Errors follow the OTLP specification: a malformed
body is ``INVALID_ARGUMENT`` / 400, a full spool ``RESOURCE_EXHAUSTED`` with ``RetryInfo`` /
503 with ``Retry-After``, a missing or wrong bearer token ``UNAUTHENTICATED`` / 401, an
oversized message ``RESOURCE_EXHAUSTED`` / 413.
"""

from __future__ import annotations

import contextlib
import gzip
import hmac
import http.server
import io
import logging
import signal
import socket
import ssl
import threading
import zlib
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsPartialSuccess,
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from otel_luna.ingest import Result, otlp
from otel_luna.receiver import RETRY_AFTER_SECONDS, Backpressure, Receiver
from otel_luna.settings import Settings

_logger = logging.getLogger(__name__)

TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
METRICS_SERVICE = "opentelemetry.proto.collector.metrics.v1.MetricsService"
TRACES_PATH = "/v1/traces"
METRICS_PATH = "/v1/metrics"
LOGS_PATH = "/v1/logs"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"


class _Signal:
    """How one OTLP signal is parsed, accepted and answered."""

    def __init__(
        self,
        request_type: type[Message],
        accept: Callable[[Any], Result],
        respond: Callable[[int, str], Message],
    ) -> None:
        self.request_type = request_type
        self.accept = accept
        self.respond = respond


def _signals(receiver: Receiver) -> dict[str, _Signal]:
    # A message with 0 rejected is the OTLP way to warn (values dropped from written points).
    def traces_response(rejected: int, message: str) -> Message:
        if not rejected and not message:
            return ExportTraceServiceResponse()
        partial = ExportTracePartialSuccess(rejected_spans=rejected, error_message=message)
        return ExportTraceServiceResponse(partial_success=partial)

    def metrics_response(rejected: int, message: str) -> Message:
        if not rejected and not message:
            return ExportMetricsServiceResponse()
        partial = ExportMetricsPartialSuccess(rejected_data_points=rejected, error_message=message)
        return ExportMetricsServiceResponse(partial_success=partial)

    return {
        TRACES_PATH: _Signal(ExportTraceServiceRequest, receiver.accept_traces, traces_response),
        METRICS_PATH: _Signal(
            ExportMetricsServiceRequest, receiver.accept_metrics, metrics_response
        ),
    }


def _token_ok(expected: str | None, header: str | None) -> bool:
    if expected is None:
        return True
    if header is None:
        return False
    # As bytes: compare_digest refuses str with non-ASCII characters (a hostile header).
    given = header.encode("utf-8", "surrogatepass")
    return hmac.compare_digest(given, f"Bearer {expected}".encode("utf-8", "surrogatepass"))


# -- gRPC ---------------------------------------------------------------------------------------


def _grpc_handler(signal_: _Signal, token: str | None) -> Callable[[bytes, Any], Message]:
    def export(data: bytes, context: grpc.ServicerContext) -> Message:
        metadata = dict(context.invocation_metadata())
        if not _token_ok(token, metadata.get("authorization")):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        try:
            request = signal_.request_type.FromString(data)
        except DecodeError as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed OTLP protobuf: {error}")
        try:
            rejected, message, _ = signal_.accept(request)
        except Backpressure as error:
            retry = error_details_pb2.RetryInfo(retry_delay=Duration(seconds=RETRY_AFTER_SECONDS))
            details = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=str(error))
            details.details.add().Pack(retry)
            context.set_trailing_metadata(
                (("grpc-status-details-bin", details.SerializeToString()),)
            )
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
        return signal_.respond(rejected, message)

    return export


def start_grpc(receiver: Receiver, settings: Settings, port: int) -> tuple[grpc.Server, int]:
    """A started gRPC server; returns it and the bound port (``port`` 0 picks one)."""
    options = [
        ("grpc.max_receive_message_length", settings.serve_max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=options)
    signals = _signals(receiver)
    for service, path in ((TRACE_SERVICE, TRACES_PATH), (METRICS_SERVICE, METRICS_PATH)):
        handler = grpc.unary_unary_rpc_method_handler(
            _grpc_handler(signals[path], settings.serve_token),
            request_deserializer=None,  # raw bytes: we answer malformed input ourselves
            response_serializer=lambda message: message.SerializeToString(),
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, {"Export": handler}),)
        )
    address = f"{settings.serve_host}:{port}"
    if settings.serve_tls_cert and settings.serve_tls_key:
        with open(settings.serve_tls_key, "rb") as key, open(settings.serve_tls_cert, "rb") as cert:
            credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
        bound = server.add_secure_port(address, credentials)
    else:
        bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot listen for OTLP/gRPC on {address}")
    server.start()
    return server, bound


# -- HTTP ---------------------------------------------------------------------------------------


class _HttpServer(http.server.ThreadingHTTPServer):
    # Non-daemon handler threads, so server_close() joins them: requests in flight finish.
    # (socketserver does not track daemon threads at all.) Keep-alive connections waiting for
    # their next request are ended by close_idle() first, or server_close() would wait for them.
    daemon_threads = False
    block_on_close = True

    def __init__(self, address: tuple[str, int], receiver: Receiver, settings: Settings) -> None:
        self.signals = _signals(receiver)
        self.settings = settings
        self._connections_lock = threading.Lock()
        self._idle: set[socket.socket] = set()
        self._closing = False
        super().__init__(address, _HttpHandler)

    def idle(self, connection: socket.socket, idle: bool) -> bool:
        """Mark a connection as waiting for a request (or not); False once closing."""
        with self._connections_lock:
            if not idle:
                self._idle.discard(connection)
            elif self._closing:
                return False
            else:
                self._idle.add(connection)
        return True

    def close_idle(self) -> None:
        """End the connections that wait for a next request; requests in flight go on."""
        with self._connections_lock:
            self._closing = True
            idle, self._idle = self._idle, set()
        for connection in idle:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _HttpHandler(http.server.BaseHTTPRequestHandler):
    server: _HttpServer
    protocol_version = "HTTP/1.1"
    #: Seconds a connection may stay silent (idle or mid-body) before it is closed; also
    #: bounds how long a stalled client can hold up shutdown.
    timeout = 30

    def handle_one_request(self) -> None:
        if not self.server.idle(self.connection, True):
            self.close_connection = True
            return
        super().handle_one_request()

    def finish(self) -> None:
        self.server.idle(self.connection, False)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        _logger.debug("otlp/http %s: " + format, self.client_address[0], *args)

    def _reply(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _error(
        self, status: int, code: int, message: str, content_type: str, **headers: str
    ) -> None:
        # A parse error may quote the body's lone surrogate: protobuf strings must be UTF-8.
        message = message.encode("utf-8", "backslashreplace").decode()
        error = status_pb2.Status(code=code, message=message)
        body = (
            json_format.MessageToJson(error).encode()
            if content_type == JSON
            else error.SerializeToString()
        )
        extra = {name.replace("_", "-"): value for name, value in headers.items()}
        self._reply(status, body, content_type, extra)

    def do_POST(self) -> None:
        self.server.idle(self.connection, False)
        settings = self.server.settings
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        answer_type = JSON if content_type == JSON else PROTOBUF
        try:
            raw = self._read_body(settings.serve_max_message_bytes)
        except _TooLarge:
            self.close_connection = True  # the rest of the body is not read
            self._error(413, code_pb2.RESOURCE_EXHAUSTED, "request too large", answer_type)
            return
        except ValueError as error:
            self.close_connection = True
            self._error(400, code_pb2.INVALID_ARGUMENT, f"malformed body: {error}", answer_type)
            return
        except OSError:  # the client went silent or away mid-body: nothing to answer
            self.close_connection = True
            return
        path = self.path.split("?")[0]
        signal_ = self.server.signals.get(path)
        if signal_ is None:
            what = "logs are not handled by otel-luna" if path == LOGS_PATH else "no such path"
            self._error(404, code_pb2.NOT_FOUND, what, answer_type)
            return
        if not _token_ok(settings.serve_token, self.headers.get("Authorization")):
            self._error(401, code_pb2.UNAUTHENTICATED, "missing or wrong bearer token", answer_type)
            return
        if content_type not in (PROTOBUF, JSON):
            self._error(415, code_pb2.INVALID_ARGUMENT, f"use {PROTOBUF} or {JSON}", answer_type)
            return
        try:
            body = _decompress(raw, self.headers.get("Content-Encoding"), settings)
            request = signal_.request_type()
            if content_type == JSON:
                otlp.parse_json(body, request)
            else:
                request.ParseFromString(body)
        except _TooLarge:
            self._error(413, code_pb2.RESOURCE_EXHAUSTED, "request too large", answer_type)
            return
        except (DecodeError, ValueError, OSError, EOFError, zlib.error) as error:
            self._error(400, code_pb2.INVALID_ARGUMENT, f"malformed request: {error}", answer_type)
            return
        except Exception as error:  # noqa: BLE001 - json_format.ParseError, RecursionError, ...
            # Whatever the body, an answer: a dropped connection makes clients retry forever.
            reason = f"malformed request: {type(error).__name__}: {str(error)[:200]}"
            self._error(400, code_pb2.INVALID_ARGUMENT, reason, answer_type)
            return
        try:
            rejected, message, _ = signal_.accept(request)
        except Backpressure as error:
            self._error(
                503,
                code_pb2.UNAVAILABLE,
                str(error),
                answer_type,
                Retry_After=str(RETRY_AFTER_SECONDS),
            )
            return
        response = signal_.respond(rejected, message)
        body = (
            json_format.MessageToJson(response).encode()
            if answer_type == JSON
            else response.SerializeToString()
        )
        self._reply(200, body, answer_type)

    def _read_body(self, limit: int) -> bytes:
        """The request body: ``Content-Length`` bytes, or every chunk of a chunked body (Node.js
        OTLP/HTTP exporters stream theirs). ``_TooLarge`` past ``limit``; ``ValueError`` when
        the framing is broken."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return _read_chunked(self.rfile, limit)
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0:
            raise ValueError("negative Content-Length")
        if length > limit:
            raise _TooLarge
        body = self.rfile.read(length)
        if len(body) != length:  # the client went away mid-body: never parse a truncated one
            raise OSError("body shorter than Content-Length")
        return body


class _TooLarge(Exception):
    pass


def _read_chunked(stream: Any, limit: int) -> bytes:
    """Decode a ``Transfer-Encoding: chunked`` body (RFC 9112, section 7.1) from ``stream``."""
    body = bytearray()
    while True:
        size_line = stream.readline(1024)
        if not size_line.endswith(b"\n"):
            raise ValueError("bad chunk size line")
        size = int(size_line.split(b";")[0].strip(), 16)
        if size < 0:
            raise ValueError("negative chunk size")
        if size == 0:
            break
        if len(body) + size > limit:
            raise _TooLarge
        chunk = stream.read(size)
        if len(chunk) != size or stream.readline(3) not in (b"\r\n", b"\n"):
            raise ValueError("truncated chunk")
        body += chunk
    while stream.readline(8192) not in (b"\r\n", b"\n", b""):  # trailer fields
        pass
    return bytes(body)


def _decompress(raw: bytes, encoding: str | None, settings: Settings) -> bytes:
    if not encoding or encoding.lower() == "identity":
        return raw
    if encoding.lower() != "gzip":
        raise ValueError(f"unsupported Content-Encoding {encoding!r}")
    with gzip.GzipFile(fileobj=io.BytesIO(raw)) as file:
        body = file.read(settings.serve_max_message_bytes + 1)
    if len(body) > settings.serve_max_message_bytes:
        raise _TooLarge
    return body


def start_http(receiver: Receiver, settings: Settings, port: int) -> tuple[_HttpServer, int]:
    """A serving HTTP server (in a thread); returns it and the bound port."""
    server = _HttpServer((settings.serve_host, port), receiver, settings)
    if settings.serve_tls_cert and settings.serve_tls_key:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(settings.serve_tls_cert, settings.serve_tls_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, name="otlp-http", daemon=True)
    thread.start()
    return server, server.server_address[1]


# -- the whole server ---------------------------------------------------------------------------


class Server:
    """Both front ends and the receiver; :meth:`stop` drains in-flight requests, then flushes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.receiver = Receiver(settings)
        self.grpc: grpc.Server | None = None
        self.http: _HttpServer | None = None
        self.grpc_port = self.http_port = 0
        try:
            self.grpc, self.grpc_port = start_grpc(
                self.receiver, settings, settings.serve_grpc_port
            )
            self.http, self.http_port = start_http(
                self.receiver, settings, settings.serve_http_port
            )
        except BaseException:
            self.stop()
            raise

    def stop(self, grace: float = 5.0) -> None:
        if self.grpc is not None:
            self.grpc.stop(grace).wait(grace + 1)
        if self.http is not None:
            self.http.shutdown()
            self.http.close_idle()
            self.http.server_close()  # waits for the requests in flight
        self.receiver.shutdown()

    def wait_for_signal(self) -> None:
        """Block until SIGTERM or SIGINT, then stop gracefully."""
        done = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: done.set())
        # Wait with a timeout: a signal delivered to another thread only sets a flag that the
        # main thread checks when it runs Python code; a wait without timeout may never return.
        while not done.wait(0.5):
            pass
        self.stop()
