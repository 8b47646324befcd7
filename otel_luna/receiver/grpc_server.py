"""OTLP/gRPC (grpcio): ``TraceService/Export`` and ``MetricsService/Export`` over one
:class:`~otel_luna.receiver.Receiver`; the Logs service is not registered (``UNIMPLEMENTED``).

**Bounds.** grpcio looks a call's handler up on its polling thread as soon as the headers
arrive, before any byte of the body is read and before a thread of the pool is taken:
:class:`_Handlers` decides there. A call without the right bearer token gets a handler that
answers ``UNAUTHENTICATED`` at once on a small pool of its own and never reads the body: it is
never admitted. At most ``SERVE_MAX_CONNECTIONS`` calls (and :data:`MAX_CALLS`) are admitted at
once, and each has a thread of its own from admission, which waits for its message: a stalled
sender holds one slot and one idle thread, never a thread another call waits for. The Export
handlers are request-*streaming* on the server side (the wire is the same as a unary call's): the
message is read inside the handler, and a client that has not sent it ``SERVE_READ_TIMEOUT``
after admission is cancelled (counted ``requests_refused_timeout``). At the cap, a new call takes
the slot of the call that has waited longest for its message, once that is :data:`SPARE` seconds
(cancelled, counted the same): a flood of stalled calls delays a good sender by that much at
most. With no such call, the new one is answered ``RESOURCE_EXHAUSTED`` with ``RetryInfo``
(counted ``requests_refused_busy``). Only :data:`DECODE_THREADS` calls decode at once. A message
read counts against ``SERVE_MAX_INFLIGHT_BYTES`` (shared with HTTP) at what it
may take decoded (:mod:`otel_luna.receiver.decoded`) until it is decoded and spooled; past it the
call is answered ``RESOURCE_EXHAUSTED`` with ``RetryInfo``, and one that may take more than
``SERVE_MAX_DECODED_BYTES`` decoded ``RESOURCE_EXHAUSTED`` without (counted
``requests_refused_decoded_too_large``, as HTTP's 413). So the bytes
serve holds for gRPC requests are at most: grpc's flow-control window for each admitted call
(64 KiB: BDP probing, which grows the windows to megabytes per stream, is off), the messages
received and waiting to be decoded (each up to ``SERVE_MAX_MESSAGE_BYTES``), and those being
decoded (``SERVE_MAX_INFLIGHT_BYTES``, or one request alone up to ``SERVE_MAX_DECODED_BYTES``).
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

#: Admitted calls that decode and accept at once. The work is Python under one interpreter
#: lock, so more threads add no throughput; these overlap the spool's disk write with another
#: call's decoding.
DECODE_THREADS = 8
#: Most calls admitted at once whatever ``SERVE_MAX_CONNECTIONS`` says: each has a thread.
MAX_CALLS = 1024
#: Threads that answer refused calls (no token, too many calls) without reading them.
REFUSAL_THREADS = 2
#: How often calls that are slow to send their message are looked for (seconds).
READ_TIMEOUT_CHECK = 0.5
#: Seconds an admitted call may wait for its message before, at the cap, a new call takes its
#: slot (a good client sends the message with the headers).
SPARE = 1.0


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


class _Call:
    """An admitted call: when, its context once its handler runs, whether it still holds its
    slot (a newer call may take it) and whether its message arrived."""

    __slots__ = ("admitted", "context", "counted", "read")

    def __init__(self, admitted: float) -> None:
        self.admitted = admitted
        self.context: grpc.ServicerContext | None = None
        self.counted = True
        self.read = False


class _Admission:
    """The admitted calls (at most ``limit``) and their read deadlines: a call whose message has
    not arrived ``timeout`` seconds after its admission is cancelled; at the cap, the one that
    has waited longest for its message (:data:`SPARE` seconds at least) gives its slot to a new
    call. One thread checks the deadlines."""

    def __init__(self, limit: int, timeout: float, cut: Callable[[], None]) -> None:
        self.limit = limit
        self.timeout = timeout
        self._cut = cut  # counts a call cancelled unread
        self._waiting: dict[int, _Call] = {}  # admitted, message not yet read, by id
        self._count = 0
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="otlp-grpc-read-timeout")
        self._thread.daemon = True
        self._thread.start()

    def admit(self) -> _Call | None:
        """A slot for a new call (taken from the slowest sender at the cap), or None."""
        now = time.monotonic()
        with self._lock:
            if self._count >= self.limit:
                victim = min(self._waiting.values(), key=lambda c: c.admitted, default=None)
                if victim is None or victim.admitted > now - SPARE:
                    return None
                self._drop(victim)  # its slot is the new call's
                self._count -= 1
            self._count += 1
            call = _Call(now)
            self._waiting[id(call)] = call
            return call

    def _drop(self, call: _Call) -> None:
        """Under the lock: ``call`` is cancelled unread and holds no slot any more."""
        self._waiting.pop(id(call), None)
        call.counted = False
        self._cut()
        if call.context is not None:
            call.context.cancel()
        # else its handler has not begun: it finds itself dropped and ends at once

    def read(self, call: _Call, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        """The call's one message (``RpcError`` if it was cancelled, as a dropped call is)."""
        with self._lock:
            call.context = context
            if not call.counted:
                context.cancel()
        data = next(requests, None)  # None: the client sent none
        with self._lock:
            self._waiting.pop(id(call), None)
            call.read = True
        if data is None:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "no request message")
        return data

    def done(self, call: _Call) -> None:
        with self._lock:
            self._waiting.pop(id(call), None)
            if call.counted:
                call.counted = False
                self._count -= 1

    def _run(self) -> None:
        while not self._stopped.wait(READ_TIMEOUT_CHECK):
            cutoff = time.monotonic() - self.timeout
            with self._lock:
                for call in [c for c in self._waiting.values() if c.admitted <= cutoff]:
                    self._drop(call)
                    self._count -= 1

    def stop(self) -> None:
        self._stopped.set()


class _Handlers(grpc.GenericRpcHandler):  # type: ignore[misc]
    """The Export handlers, chosen per call on grpcio's polling thread (see the module doc)."""

    def __init__(self, receiver: Receiver, settings: Settings) -> None:
        self._token = settings.serve_token
        self._receiver = receiver
        self._budget = receiver.budget  # HTTP's too
        self._max_decoded = settings.serve_max_decoded_bytes
        self.admission = _Admission(
            call_slots(settings),
            settings.serve_read_timeout,
            lambda: receiver.requests.add(Reason.REQUESTS_REFUSED_TIMEOUT),
        )
        self._decoding = threading.BoundedSemaphore(DECODE_THREADS)
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
            self._receiver.requests.add(Reason.REQUESTS_REFUSED_UNAUTHENTICATED)
            return self._unauthenticated
        # Counted until its handler ends: grpcio runs every handler it was given (stream
        # handlers even for a cancelled call), so the count cannot leak.
        call = self.admission.admit()
        if call is None:
            self._receiver.requests.add(Reason.REQUESTS_REFUSED_BUSY)
            return self._too_many
        return grpc.stream_unary_rpc_method_handler(
            self._export(signal_, call), response_serializer=_serialize
        )

    def _export(self, signal_: Signal, call: _Call) -> Callable[[Iterator[bytes], Any], Message]:
        def export(requests: Iterator[bytes], context: grpc.ServicerContext) -> Message:
            try:
                data = self.admission.read(call, requests, context)
                with self._decoding:
                    return self._decode_and_accept(signal_, data, context)
            finally:
                self.admission.done(call)

        return export

    def _decode_and_accept(
        self, signal_: Signal, data: bytes, context: grpc.ServicerContext
    ) -> Message:
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

    def stop(self) -> None:
        self.admission.stop()
        self.refusal_pool.shutdown(wait=False)


def call_slots(settings: Settings) -> int:
    """Calls admitted at once: ``SERVE_MAX_CONNECTIONS``, at most :data:`MAX_CALLS`."""
    return min(settings.serve_max_connections, MAX_CALLS)


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
    # A thread for each admitted call (and for those whose slot a newer call took, while they
    # end): none waits for another's message.
    pool = futures.ThreadPoolExecutor(
        max_workers=2 * call_slots(settings), thread_name_prefix="otlp-grpc"
    )
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
