"""OTLP/HTTP: ``POST /v1/traces`` and ``/v1/metrics`` with ``application/x-protobuf`` or
``application/json`` bodies, optionally gzip-compressed; ``/v1/logs`` answers 404."""

from __future__ import annotations

import contextlib
import gzip
import http.server
import io
import logging
import socket
import ssl
import threading
import zlib
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, status_pb2

from otel_luna.ingest import otlp
from otel_luna.receiver import RETRY_AFTER_SECONDS, Backpressure, Receiver
from otel_luna.receiver.protocol import JSON, LOGS_PATH, PROTOBUF, signals, token_ok
from otel_luna.settings import Settings

_logger = logging.getLogger(__name__)


class _HttpServer(http.server.ThreadingHTTPServer):
    # Non-daemon handler threads, so server_close() joins them: requests in flight finish.
    # (socketserver does not track daemon threads at all.) Keep-alive connections waiting for
    # their next request are ended by close_idle() first, or server_close() would wait for them.
    daemon_threads = False
    block_on_close = True

    def __init__(
        self,
        address: tuple[str, int],
        receiver: Receiver,
        settings: Settings,
        reuse_port: bool = False,
    ) -> None:
        self.allow_reuse_port = reuse_port  # SO_REUSEPORT before bind: workers share the port
        self.signals = signals(receiver)
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
        if not token_ok(settings.serve_token, self.headers.get("Authorization")):
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


def start_http(
    receiver: Receiver, settings: Settings, port: int, *, reuse_port: bool = False
) -> tuple[_HttpServer, int]:
    """A serving HTTP server (in a thread); returns it and the bound port. ``reuse_port``:
    listen with ``SO_REUSEPORT`` (worker processes sharing the port)."""
    server = _HttpServer((settings.serve_host, port), receiver, settings, reuse_port)
    if settings.serve_tls_cert and settings.serve_tls_key:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(settings.serve_tls_cert, settings.serve_tls_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, name="otlp-http", daemon=True)
    thread.start()
    return server, server.server_address[1]
