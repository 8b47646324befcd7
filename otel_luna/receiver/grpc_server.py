"""OTLP/gRPC (grpcio): ``TraceService/Export`` and ``MetricsService/Export`` over one
:class:`~otel_luna.receiver.Receiver`; the Logs service is not registered (``UNIMPLEMENTED``).

**Bounds.** grpcio looks a call's handler up on its polling thread as soon as the headers
arrive, before any byte of the body is read and before a thread of the pool is taken:
:class:`_Handlers` decides there. A call without the right bearer token, or beyond
``SERVE_MAX_CONNECTIONS`` calls in flight, gets a handler that answers at once
(``UNAUTHENTICATED``; ``RESOURCE_EXHAUSTED`` with ``RetryInfo``) on a small pool of its own and
never reads the body. The Export handlers are request-*streaming* on the server side (the wire
is the same as a unary call's): the message is read inside the handler, on the pool, only once
the call was admitted, and a client that takes longer than ``SERVE_READ_TIMEOUT`` to send it is
cancelled. A message read counts against ``SERVE_MAX_INFLIGHT_BYTES`` (shared with HTTP) at what it
may take decoded (:mod:`otel_luna.receiver.decoded`) until it is decoded and spooled; past it the
call is answered ``RESOURCE_EXHAUSTED`` with ``RetryInfo``, and one that may take more than
``SERVE_MAX_DECODED_BYTES`` decoded ``RESOURCE_EXHAUSTED`` without (counted
``requests_refused_decoded_too_large``, as HTTP's 413). So the bytes
serve holds for gRPC requests are at most: the messages being received (one per pool thread,
each up to ``SERVE_MAX_MESSAGE_BYTES``), those being decoded (``SERVE_MAX_INFLIGHT_BYTES``, or
one request alone up to ``SERVE_MAX_DECODED_BYTES``), and
grpc's flow-control window for each admitted call still waiting for a thread (64 KiB: BDP
probing, which grows the windows to megabytes per stream, is off).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any, NoReturn

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from otel_luna.outcomes import Reason
from otel_luna.receiver import RETRY_AFTER_SECONDS, Backpressure, Receiver
from otel_luna.receiver.protocol import (
    DECODE_WAIT,
    METRICS_PATH,
    METRICS_SERVICE,
    TRACE_SERVICE,
    TRACES_PATH,
    Signal,
    decoded_too_large,
    signals,
    token_ok,
)
from otel_luna.settings import Settings

#: Threads that read, decode and accept admitted calls. The work is Python under one
#: interpreter lock, so more threads add no throughput; these overlap reading a body from the
#: network and the spool's disk write with another call's decoding. Each may hold one message
#: being received (up to ``SERVE_MAX_MESSAGE_BYTES``).
POOL_THREADS = 8
#: Threads that answer refused calls (no token, too many calls) without reading them.
REFUSAL_THREADS = 2
#: How often calls that are slow to send their message are looked for (seconds).
READ_TIMEOUT_CHECK = 0.5
#: Seconds a call that waited for a pool thread past its read timeout still gets to be read.
READ_GRACE = 1.0


def _serialize(message: Message) -> bytes:
    data: bytes = message.SerializeToString()
    return data


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("grpc's abort() returned")  # pragma: no cover - it raises


def _abort_retry_later(context: grpc.ServicerContext, message: str) -> NoReturn:
    """``RESOURCE_EXHAUSTED`` with ``RetryInfo``: OTLP clients (the Collector too) retry it."""
    retry = error_details_pb2.RetryInfo(retry_delay=Duration(seconds=RETRY_AFTER_SECONDS))
    details = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=message)
    details.details.add().Pack(retry)
    context.set_trailing_metadata((("grpc-status-details-bin", details.SerializeToString()),))
    _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, message)


class _Refusal:
    """A request-streaming behavior that answers without reading the request, on its own pool
    (grpcio runs a behavior on its ``experimental_thread_pool`` when it has one)."""

    def __init__(self, pool: futures.ThreadPoolExecutor, answer: Callable[[Any], NoReturn]):
        self.experimental_thread_pool = pool
        self._answer = answer

    def __call__(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Message:
        self._answer(context)


class _ReadDeadlines:
    """Cancels the calls whose message has not arrived within ``timeout`` seconds: a slow or
    stalled client holds a pool thread at most that long. One thread checks them all."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._calls: dict[int, tuple[float, grpc.ServicerContext]] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="otlp-grpc-read-timeout")
        self._thread.daemon = True
        self._thread.start()

    def read(
        self, requests: Iterator[bytes], context: grpc.ServicerContext, admitted: float
    ) -> bytes | None:
        """The call's one message; None if the client sent none (``RpcError`` if cancelled).

        The timeout counts from the call's admission, not from when a pool thread took it: a
        flood of stalled calls must not hold the slots for (calls / threads) x timeout. A call
        that waited long for a thread still gets READ_GRACE to deliver a message it may have
        sent meanwhile."""
        key = id(context)
        deadline = max(admitted + self.timeout, time.monotonic() + READ_GRACE)
        with self._lock:
            self._calls[key] = (deadline, context)
        try:
            return next(requests, None)
        finally:
            with self._lock:
                self._calls.pop(key, None)

    def _run(self) -> None:
        while not self._stopped.wait(READ_TIMEOUT_CHECK):
            now = time.monotonic()
            with self._lock:
                late = [key for key, (deadline, _) in self._calls.items() if deadline <= now]
                contexts = [self._calls.pop(key)[1] for key in late]
            for context in contexts:
                context.cancel()

    def stop(self) -> None:
        self._stopped.set()


class _Handlers(grpc.GenericRpcHandler):  # type: ignore[misc]
    """The Export handlers, chosen per call on grpcio's polling thread (see the module doc)."""

    def __init__(self, receiver: Receiver, settings: Settings) -> None:
        self._token = settings.serve_token
        self._max_calls = settings.serve_max_connections
        self._calls = 0
        self._lock = threading.Lock()
        self._receiver = receiver
        self._budget = receiver.budget  # HTTP's too
        self._max_decoded = settings.serve_max_decoded_bytes
        self.deadlines = _ReadDeadlines(settings.serve_read_timeout)
        self.refusal_pool = futures.ThreadPoolExecutor(
            max_workers=REFUSAL_THREADS, thread_name_prefix="otlp-grpc-refusal"
        )
        by_path = signals(receiver)
        self._methods = {
            f"/{service}/Export": by_path[path]
            for service, path in ((TRACE_SERVICE, TRACES_PATH), (METRICS_SERVICE, METRICS_PATH))
        }
        self._unauthenticated = grpc.stream_unary_rpc_method_handler(
            _Refusal(self.refusal_pool, _unauthenticated), response_serializer=_serialize
        )
        self._too_many = grpc.stream_unary_rpc_method_handler(
            _Refusal(self.refusal_pool, _too_many_calls), response_serializer=_serialize
        )

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        signal_ = self._methods.get(handler_call_details.method)
        if signal_ is None:
            return None  # UNIMPLEMENTED
        given = [
            value
            for key, value in handler_call_details.invocation_metadata
            if key == "authorization"
        ]  # repeated: as good as none
        if not token_ok(self._token, given[0] if len(given) == 1 else None):
            return self._unauthenticated
        with self._lock:
            if self._calls >= self._max_calls:
                return self._too_many
            # Counted until its handler ends: grpcio runs every handler it was given (stream
            # handlers even for a cancelled call), so the count cannot leak.
            self._calls += 1
        return grpc.stream_unary_rpc_method_handler(
            self._export(signal_, time.monotonic()), response_serializer=_serialize
        )

    def _done(self) -> None:
        with self._lock:
            self._calls -= 1

    def _export(
        self, signal_: Signal, admitted: float
    ) -> Callable[[Iterator[bytes], Any], Message]:
        def export(requests: Iterator[bytes], context: grpc.ServicerContext) -> Message:
            try:
                data = self.deadlines.read(requests, context, admitted)
                if data is None:
                    _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "no request message")
                # The message is held at what it may take decoded (its size at least).
                size = signal_.decoded_bound(data, False, self._max_decoded)
                if size > self._max_decoded:
                    self._receiver.requests.add(Reason.REQUESTS_REFUSED_DECODED_TOO_LARGE)
                    message = decoded_too_large(size, self._max_decoded)
                    _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, message)
                if not self._budget.take(size, wait=DECODE_WAIT):
                    _abort_retry_later(context, "too many request bytes in flight; retry later")
                try:
                    request = _decode(signal_, data, context)
                    del data  # the decoded request is what is held from here on
                    return _accept(signal_, request, context)
                finally:
                    self._budget.give(size)
            finally:
                self._done()

        return export

    def stop(self) -> None:
        self.deadlines.stop()
        self.refusal_pool.shutdown(wait=False)


def _unauthenticated(context: grpc.ServicerContext) -> NoReturn:
    _abort(context, grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")


def _too_many_calls(context: grpc.ServicerContext) -> NoReturn:
    _abort_retry_later(context, "too many calls in flight; retry later")


def _decode(signal_: Signal, data: bytes, context: grpc.ServicerContext) -> Message:
    try:
        request: Message = signal_.request_type.FromString(data)
    except DecodeError as error:
        _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"malformed OTLP protobuf: {error}")
    return request


def _accept(signal_: Signal, request: Message, context: grpc.ServicerContext) -> Message:
    try:
        rejected, message, _ = signal_.accept(request)
    except Backpressure as error:
        _abort_retry_later(context, str(error))
    return signal_.respond(rejected, message)


class GrpcServer:
    """The started grpcio server and what bounds it; :meth:`stop` as ``grpc.Server``'s."""

    def __init__(self, server: grpc.Server, handlers: _Handlers) -> None:
        self.server = server
        self._handlers = handlers

    def stop(self, grace: float | None) -> threading.Event:
        stopped: threading.Event = self.server.stop(grace)

        def release() -> None:  # once no call is left: the read timeouts and refusals
            stopped.wait()
            self._handlers.stop()

        threading.Thread(target=release, name="otlp-grpc-stop", daemon=True).start()
        return stopped


def start_grpc(
    receiver: Receiver, settings: Settings, port: int, *, reuse_port: bool = False
) -> tuple[GrpcServer, int]:
    """A started gRPC server; returns it and the bound port (``port`` 0 picks one).
    ``reuse_port``: listen with ``SO_REUSEPORT`` (worker processes sharing the port)."""
    options = [
        ("grpc.max_receive_message_length", settings.serve_max_message_bytes),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        # BDP probing grows every stream's flow-control window to megabytes: a flood of large
        # calls would then be buffered by grpc before any handler decides on them.
        ("grpc.http2.bdp_probe", 0),
    ]
    handlers = _Handlers(receiver, settings)
    pool = futures.ThreadPoolExecutor(max_workers=POOL_THREADS, thread_name_prefix="otlp-grpc")
    server = grpc.server(pool, handlers=(handlers,), options=options)
    address = f"{settings.serve_host}:{port}"
    try:
        if settings.serve_tls_cert and settings.serve_tls_key:
            with (
                open(settings.serve_tls_key, "rb") as key,
                open(settings.serve_tls_cert, "rb") as cert,
            ):
                credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
            bound = server.add_secure_port(address, credentials)
        else:
            bound = server.add_insecure_port(address)
        if bound == 0:
            raise OSError(f"cannot listen for OTLP/gRPC on {address}")
        server.start()
    except BaseException:
        handlers.stop()
        raise
    return GrpcServer(server, handlers), bound
