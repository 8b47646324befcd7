"""OTLP/gRPC (grpcio): ``TraceService/Export`` and ``MetricsService/Export`` over one
the ``Receiver``; the Logs service is not registered (``UNIMPLEMENTED``).

**Bounds.** grpcio looks a call's handler up on its polling thread as soon as the headers
arrive, before any byte of the body is read and before a thread of the pool is taken:
:class:`_Handlers` decides there. A call without the right bearer token gets a handler that
answers ``UNAUTHENTICATED`` at once on a small pool of its own and never reads the body: it is
never admitted. At most ``SERVE_MAX_CONNECTIONS`` calls (and :data:`MAX_CALLS`) are admitted at
once, each with a thread of its own; beyond them a call is answered ``RESOURCE_EXHAUSTED`` with
``RetryInfo`` (counted ``requests_refused_busy``) from that small pool, unless the unread call
admitted first has waited :data:`SPARE` seconds: it gives its slot to the new call. The Export
handlers are request-*streaming* on the server side (the wire is the same as a unary call's):
the message is received only when the handler reads it, and only :data:`READERS` calls read,
decode and accept at once, the calls admitted *last* first; a reader whose message has not come
within :data:`SPARE` seconds while other calls wait for one is cancelled, and so is a call that
has not sent its message ``SERVE_READ_TIMEOUT`` after its admission (both counted
``requests_refused_timeout``; see :class:`_Admission`). So a flood of stalled calls costs a good
call a second or two, not the flood's read timeouts one after the other. A message read counts
against ``SERVE_MAX_INFLIGHT_BYTES`` (shared with HTTP) at what it may take decoded
(:mod:`otel_luna.serve._decoded`) until it is decoded and spooled; past it the call is
answered ``RESOURCE_EXHAUSTED`` with ``RetryInfo``, and one that may take more than
``SERVE_MAX_DECODED_BYTES`` decoded ``RESOURCE_EXHAUSTED`` without (counted
``requests_refused_decoded_too_large``, as HTTP's 413). So the bytes serve holds for gRPC
requests are at most: the messages being received (one per reader, each up to
``SERVE_MAX_MESSAGE_BYTES``), those being decoded (``SERVE_MAX_INFLIGHT_BYTES``, or one request
alone up to ``SERVE_MAX_DECODED_BYTES``), and grpc's flow-control window for each admitted call
not yet read (64 KiB: BDP probing, which grows the windows to megabytes per stream, is off).

**Connections.** A connection must send the HTTP/2 preface within ``SERVE_READ_TIMEOUT``; one
without a call for ``SERVE_IDLE_TIMEOUT`` gets ``GOAWAY``; at most
:func:`~otel_luna.serve._startup.grpc_connection_limit` are open at once (grpc core closes a
new one beyond it as soon as it is accepted), so that idle connections cannot take the file
descriptors OTLP/HTTP and the spool need.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any, NoReturn

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from otel_luna.outcomes import Counts, Reason
from otel_luna.serve._protocol import (
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
from otel_luna.serve._receiver import RETRY_AFTER_SECONDS, Backpressure, Receiver
from otel_luna.serve._settings import ServeSettings
from otel_luna.serve._startup import grpc_connection_limit, host_port

#: Admitted calls that receive, decode and accept their message at once. The work is Python
#: under one interpreter lock, so more add no throughput; these overlap the network and the
#: spool's disk write with another call's decoding. Each may hold one message (up to
#: ``SERVE_MAX_MESSAGE_BYTES``) being received.
READERS = 8
#: Most calls admitted at once whatever ``SERVE_MAX_CONNECTIONS`` says: each has a thread.
MAX_CALLS = 1024
#: Threads that answer refused calls (no token, too many calls) without reading them.
REFUSAL_THREADS = 2
#: How often calls that are slow to send their message are looked for (seconds).
READ_TIMEOUT_CHECK = 0.25
#: Seconds an admitted call may wait for its message before, at the cap, a new call takes its
#: slot, and a reader may wait for it while other calls wait for a reader (a good client sends
#: the message with the headers).
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
    """An admitted call: when, its context once its handler runs, where it is (:data:`_NEW`
    … :data:`_DROPPED`), whether it holds its slot and a reader."""

    __slots__ = ("admitted", "context", "counted", "reader", "since", "state")

    def __init__(self, admitted: float) -> None:
        self.admitted = admitted
        self.context: grpc.ServicerContext | None = None
        self.state = _NEW
        self.since = admitted  # of its state
        self.counted = True  # holds one of the slots
        self.reader = False  # holds one of the readers


#: Admitted, its handler not begun; waiting for a reader; reading its message (for ever, if
#: the client stalls); read, being decoded and accepted; refused unread (its slot taken).
_NEW, _WAITING, _READING, _READ, _DROPPED = range(5)


class _Admission:
    """The admitted calls (at most ``limit``) and the ``readers`` of their messages.

    Each admitted call has a thread of its own; it reads its message (the message is received
    only then) and decodes it once it has one of the ``readers``, so at most that many messages
    are received or decoded at once. Free readers go to the call admitted last: a flood of
    stalled calls admitted before a good one does not stand in front of it. While a call waits
    for a reader, the call that has been reading the longest without its message arriving
    (:data:`SPARE` seconds at least) is cancelled; so is, at the cap, the unread call admitted
    first (:data:`SPARE` seconds ago at least), to give its slot to a new call. A call not read
    ``timeout`` seconds after its admission is cancelled if it was reading (the client stalls),
    else answered ``RESOURCE_EXHAUSTED`` with ``RetryInfo`` (serve was too busy to read it).
    One thread checks the deadlines."""

    def __init__(self, limit: int, readers: int, timeout: float, counts: Counts) -> None:
        self.limit = limit
        self.timeout = timeout
        self._counts = counts
        self._unread: dict[int, _Call] = {}  # admitted and not read yet, by id
        self._waiting: list[_Call] = []  # for a reader, in the order they began to wait
        self._free = readers
        self._count = 0  # slots taken
        self._changed = threading.Condition(threading.Lock())
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="otlp-grpc-read-timeout")
        self._thread.daemon = True
        self._thread.start()

    def admit(self) -> _Call | None:
        """A slot for a new call (taken from the oldest unread call at the cap), or None."""
        now = time.monotonic()
        with self._changed:
            if self._count >= self.limit:
                victim = min(self._unread.values(), key=lambda c: c.admitted, default=None)
                if victim is None or victim.admitted > now - SPARE:
                    return None
                self._drop(victim)
            self._count += 1
            call = _Call(now)
            self._unread[id(call)] = call
            return call

    def wait_for_reader(self, call: _Call, context: grpc.ServicerContext) -> None:
        """Return once the call has a reader (it keeps it until :meth:`done`); else answer it
        ``RESOURCE_EXHAUSTED`` with ``RetryInfo``."""
        # A call that ends while it waits (its client gave up, serve stops) stops waiting.
        ended = not context.add_callback(functools.partial(self._ended, call))
        with self._changed:
            call.context = context
            if call.state == _NEW and ended:
                self._set(call, _DROPPED)
            if call.state == _NEW:
                self._set(call, _WAITING)
                self._waiting.append(call)
                self._hand_out()
                while call.state == _WAITING:
                    self._changed.wait()
            dropped = call.state == _DROPPED
        if dropped:
            _abort_retry_later(context, "too many calls in flight; retry later")

    def read(self, call: _Call, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        """The call's one message (by a call that has a reader)."""
        data = next(requests, None)  # None: the client sent none. RpcError: cancelled
        with self._changed:
            self._unread.pop(id(call), None)
            self._set(call, _READ)
        if data is None:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "no request message")
        return data

    def done(self, call: _Call) -> None:
        """The call's handler ends: its slot and its reader are free."""
        with self._changed:
            self._unread.pop(id(call), None)
            if call.counted:
                call.counted = False
                self._count -= 1
            if call.reader:
                call.reader = False
                self._free += 1
                self._hand_out()

    def _ended(self, call: _Call) -> None:
        """grpcio's callback at the end of the call: one that still waits for a reader is
        taken out of the line (its handler then ends)."""
        with self._changed:
            if call.state == _WAITING:
                self._waiting.remove(call)
                self._set(call, _DROPPED)
                self._changed.notify_all()

    def _set(self, call: _Call, state: int) -> None:
        call.state = state
        call.since = time.monotonic()

    def _hand_out(self) -> None:
        """Under the lock: free readers to the calls that began to wait last."""
        while self._free and self._waiting:
            call = self._waiting.pop()
            self._free -= 1
            call.reader = True
            self._set(call, _READING)
            self._changed.notify_all()

    def _drop(self, call: _Call) -> None:
        """Under the lock: ``call`` is refused unread; its slot is free."""
        self._unread.pop(id(call), None)
        if call.counted:
            call.counted = False
            self._count -= 1
        reading = call.state == _READING
        self._counts.add(
            Reason.REQUESTS_REFUSED_TIMEOUT if reading else Reason.REQUESTS_REFUSED_BUSY
        )
        if call in self._waiting:
            self._waiting.remove(call)
        self._set(call, _DROPPED)
        self._changed.notify_all()  # a waiting one answers RESOURCE_EXHAUSTED
        if reading and call.context is not None:
            call.context.cancel()  # its reader is free once its handler ends

    def _run(self) -> None:
        while not self._stopped.wait(READ_TIMEOUT_CHECK):
            now = time.monotonic()
            with self._changed:
                for call in [c for c in self._unread.values() if c.admitted <= now - self.timeout]:
                    self._drop(call)
                stalled = sorted(
                    (c for c in self._unread.values() if c.state == _READING),
                    key=lambda c: c.since,
                )
                for call in stalled[: len(self._waiting)]:
                    if call.since <= now - SPARE:
                        self._drop(call)

    def stop(self) -> None:
        self._stopped.set()


class _Handlers(grpc.GenericRpcHandler):  # type: ignore[misc]
    """The Export handlers, chosen per call on grpcio's polling thread (see the module doc)."""

    def __init__(self, receiver: Receiver, settings: ServeSettings) -> None:
        self._token = settings.serve_token
        self._receiver = receiver
        self._budget = receiver.budget  # HTTP's too
        self._max_decoded = settings.serve_max_decoded_bytes
        self.admission = _Admission(
            call_slots(settings), READERS, settings.serve_read_timeout, receiver.requests
        )
        self.refusal_pool = futures.ThreadPoolExecutor(
            max_workers=REFUSAL_THREADS, thread_name_prefix="otlp-grpc-refusal"
        )
        # The readers' work runs on threads of their own: a message and its decoding are
        # allocated by READERS threads, not by whichever of hundreds of call threads got a
        # reader (each thread may get a malloc arena of its own, which keeps what it freed:
        # +40 % peak RSS under a flood of large calls).
        self.reader_pool = futures.ThreadPoolExecutor(
            max_workers=READERS, thread_name_prefix="otlp-grpc-read"
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
                self.admission.wait_for_reader(call, context)
                return self.reader_pool.submit(read, requests, context).result()
            finally:
                self.admission.done(call)

        def read(requests: Iterator[bytes], context: grpc.ServicerContext) -> Message:
            data = self.admission.read(call, requests, context)
            return self._decode_and_accept(signal_, data, context)

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
        self.reader_pool.shutdown(wait=False)
        self.refusal_pool.shutdown(wait=False)


def call_slots(settings: ServeSettings) -> int:
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


#: A gRPC connection is closed (GOAWAY; clients reconnect) after this many
#: ``serve_idle_timeout``s, busy or not (5 minutes by default).
CONNECTION_AGE_IDLE_TIMEOUTS = 5


def start_grpc(
    receiver: Receiver, settings: ServeSettings, port: int, *, reuse_port: bool = False
) -> tuple[GrpcServer, int]:
    """A started gRPC server; returns it and the bound port (``port`` 0 picks one).
    ``reuse_port``: listen with ``SO_REUSEPORT`` (worker processes sharing the port)."""
    options = [
        ("grpc.max_receive_message_length", settings.serve_max_message_bytes),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        # BDP probing grows every stream's flow-control window to megabytes: a flood of large
        # calls would then be buffered by grpc before any handler decides on them.
        ("grpc.http2.bdp_probe", 0),
        # What a connection may hold without sending anything: the connection preface and
        # SETTINGS within serve_read_timeout (else closed), no call for serve_idle_timeout
        # (else GOAWAY: clients reconnect), and at most so many connections at once (beyond,
        # grpc closes a new one as soon as it is accepted), so that idle or half-open
        # connections cannot take all file descriptors from the OTLP/HTTP port.
        ("grpc.server_handshake_timeout_ms", int(settings.serve_read_timeout * 1000)),
        ("grpc.max_connection_idle_ms", int(settings.serve_idle_timeout * 1000)),
        # ... and a connection that keeps calling (even with a wrong token) is closed with
        # GOAWAY after CONNECTION_AGE_IDLE_TIMEOUTS idle timeouts all the same, its calls given
        # serve_read_timeout to end: no client holds a slot of the cap for ever.
        (
            "grpc.max_connection_age_ms",
            int(settings.serve_idle_timeout * CONNECTION_AGE_IDLE_TIMEOUTS * 1000),
        ),
        ("grpc.max_connection_age_grace_ms", int(settings.serve_read_timeout * 1000)),
        (
            "grpc.max_allowed_incoming_connections",
            grpc_connection_limit(settings.serve_max_connections),
        ),
    ]
    handlers = _Handlers(receiver, settings)
    # A thread for each admitted call (and for those whose slot a newer call took, while they
    # end): none waits for another's message.
    pool = futures.ThreadPoolExecutor(
        max_workers=2 * call_slots(settings), thread_name_prefix="otlp-grpc"
    )
    server = grpc.server(pool, handlers=(handlers,), options=options)
    address = host_port(settings.serve_host, port)
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
