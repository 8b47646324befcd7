"""OTLP/HTTP on aiohttp: ``POST /v1/traces`` and ``/v1/metrics``, hosted on one asyncio event
loop in a thread of the serve process. What to answer is
:class:`~otel_luna.serve._protocol.HttpProtocol`; this module moves bytes and keeps the limits
that need sockets:

- at most ``serve_max_connections`` connections: more wait in the listen backlog; when a new
  client waits, the connection idle longest between requests is closed, else the one whose
  request head has been arriving longest (408), else the one whose body has been arriving
  longest at less than :data:`MIN_BODY_RATE` (408, closed at once), each after a second at least;
- everything :meth:`HttpProtocol.check` decides (path, method, token, content type, declared
  length, transfer coding) is answered before any body byte is read, and the connection closed;
  what the client still sends of the body is thrown away by the kernel (``MSG_TRUNC``: not
  copied, not parsed) after the answer, so that it reads the answer and not a reset;
- what aiohttp's parser refuses (request line, headers, framing) is answered like the rest:
  ``400`` (``414``/``431`` for a request line or headers too long) with a ``google.rpc.Status``
  in the request's encoding when its ``Content-Type`` line arrived, HTTP/1.1, closed;
- at most ``serve_max_inflight_bytes`` of request bodies read or decoded at once (a declared
  length from the head on): beyond it ``503`` + ``Retry-After`` without reading, and bodies
  arriving at less than :data:`MIN_BODY_RATE` that hold the room are cut (408) for the retry;
- ``serve_read_timeout`` for a request's head and body together, from the head's first byte (its
  admission: a trickling head does not buy its body more time), for the TLS handshake (done on
  the loop, never in the accept path), and so for how long a slow client can hold up
  :meth:`HttpServer.stop`; a body still arriving when the stop's grace ends is answered ``503``
  + ``Retry-After``;
- decoding and accepting run in a few threads, so the loop goes on serving other connections.

Why aiohttp's connection is extended rather than used through its public options only, or
replaced by a protocol of our own. Measured with aiohttp 3.14.5's public ``web.Server`` +
``ServerRunner``/``TCPSite`` (``keepalive_timeout=1``, the per-line limits ``max_line_size``,
``max_field_size``, ``max_headers``): a head trickling in a byte at a time is never timed out
(the keep-alive timer runs only between requests; here: 408 after ``serve_read_timeout``); 128
unfinished heads of 127 x 8 KB lines took the server from 37 to 293 MiB (here: 431 past
:data:`MAX_HEAD_BYTES`); a good request with junk behind it in one read got only a 400, the
good one lost (here: 200, then 400); what the parser refuses is answered in plain text over
HTTP/1.0 with a traceback in the log (here: a ``google.rpc.Status`` in the request's encoding,
one line). A protocol of our own on ``h11`` (pure Python) or ``httptools`` (llhttp) could keep
those limits, but it would be a new parser with its own refusals for the ~40 tests that pin an
answer per malformed request, and the code around it (slots, budget, drains, stop) stays as it
is. So aiohttp stays, pinned to one minor version (``pyproject.toml``), and every hook into it
that its documentation does not promise is listed here and asserted by
``tests/test_aiohttp_contract.py``, so that an upgrade fails there first:

- ``aiohttp.http.HttpRequestParser(..., max_msg_queue_size=1)`` stops after each request until
  ``message_consumed()``; a parse error raises ``HttpProcessingError`` (``LineTooLong`` from
  ``aiohttp.http_exceptions`` for a line over its limit, "Too many headers" in its message);
- ``web.RequestHandler`` keeps its parser in ``_parser`` (replaced by :class:`_Parser`), feeds
  it from ``data_received`` (overridden to count and time the head), calls
  ``message_consumed()`` as it takes a request, writes each answer in
  ``finish_response(request, response, start_time)``, and answers its own errors through
  ``handle_error`` and logs through ``log_exception`` (both overridden);
- its keyword arguments ``keepalive_timeout``, ``lingering_time``, ``auto_decompress`` and
  ``access_log``, given here to the connection itself (one per slot) instead of through
  ``web.Server``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import http
import logging
import os
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from aiohttp import StreamReader, web
from aiohttp.http import HttpProcessingError, HttpRequestParser
from aiohttp.http_exceptions import LineTooLong

from otel_luna.serve._protocol import Answer, ByteBudget, HttpProtocol
from otel_luna.serve._receiver import Receiver
from otel_luna.serve._settings import ServeSettings

#: Connections the kernel holds while all ``serve_max_connections`` are taken (capped by
#: ``net.core.somaxconn``).
BACKLOG = 1024
#: Threads that decode and accept request bodies, off the event loop.
DECODE_THREADS = 4
#: Seconds a refused body's sender may pause before its connection is closed: while it sends,
#: the rest of the body is thrown away (for at most ``serve_read_timeout``), so that the client
#: reads the answer rather than a connection reset. Over TLS, where the bytes must be decrypted,
#: aiohttp reads and throws them away for at most this long in all.
LINGER = 1.0
#: Bytes of a request body aiohttp buffers before it stops reading the socket (its default).
READ_BUFSIZE = 1 << 18
#: Bytes of a request head kept, to answer in its encoding what aiohttp could not parse.
HEAD_KEPT = 16384
#: Bytes a request head may take in all (aiohttp's own limits are per line: 8,190 bytes x 128
#: headers, 1 MiB a head, held before any token is checked: 256 such heads took 580 MB).
MAX_HEAD_BYTES = 64 * 1024
#: Bytes per second of refused bodies thrown away, all connections together, each its share:
#: a client alone gets its answer at once; a flood of them is slowed down by TCP itself.
DRAIN_RATE = 64 << 20
#: Bytes of a refused body thrown away at once (and at its start, beyond its share).
DRAIN_BURST = 1 << 20
#: Seconds a connection must have idled, or have been receiving a request head, before it may
#: be closed (a head: answered 408) to make room for a new client at the connection cap.
SPARE = 1.0
#: Bytes per second below which a body that has been arriving for SPARE seconds is slow: at the
#: connection cap, it is cut (408) to make room for a new client.
MIN_BODY_RATE = 64 * 1024
#: Seconds a TLS connection being closed waits for the client's close_notify.
TLS_SHUTDOWN_TIMEOUT = 2.0
#: Seconds the loop thread has to start.
START_TIMEOUT = 30.0


class _TooLarge(Exception):
    pass


class _Busy(Exception):
    pass


class _Stopped(Exception):
    """The stop's grace ended while the body was arriving."""


class _CutForRoom(Exception):
    """The body arrived too slowly while a new client waited at the connection cap."""


#: Where the kernel is told to throw received bytes away (``MSG_TRUNC`` writes nothing to it).
_DISCARD = memoryview(bytearray(DRAIN_BURST))


class _Hold:
    """Bytes one request holds in the budget; all given back by :meth:`release`."""

    __slots__ = ("_budget", "held")

    def __init__(self, budget: ByteBudget, held: int) -> None:
        self._budget = budget
        self.held = held

    def take(self, count: int) -> bool:
        if not self._budget.take(count):
            return False
        self.held += count
        return True

    def release(self) -> None:
        held, self.held = self.held, 0
        if held:
            self._budget.give(held)


class _Slot:
    """One of the ``serve_max_connections``, from accept to close (released once)."""

    __slots__ = ("_front", "_held")

    def __init__(self, front: HttpServer) -> None:
        self._front = front
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._front._slot_freed()

    def hand_over(self) -> _Slot:
        """A slot that holds this one's place; this one then holds none."""
        taken = _Slot(self._front)
        taken._held, self._held = self._held, False
        return taken


class _Drain:
    """The rest of a refused body, after the answer was sent and the sending side shut (FIN):
    thrown away by the kernel as it arrives (``recv`` with ``MSG_TRUNC`` copies nothing), all
    drains together at most :data:`DRAIN_RATE` (shared equally; beyond it the clients wait, TCP
    slows them down), until the client closes, pauses for :data:`LINGER`, or
    ``serve_read_timeout`` has passed. It keeps the connection's slot (a victim at the cap
    before idle connections: it has its answer)."""

    __slots__ = (
        "_allowance",
        "_deadline",
        "_front",
        "_last",
        "_reading",
        "_slot",
        "_sock",
        "_stamp",
        "_timer",
        "since",
    )

    def __init__(self, front: HttpServer, sock: socket.socket, slot: _Slot) -> None:
        self._front = front
        self._sock = sock
        self._slot = slot
        loop = front.loop
        self.since = self._last = self._stamp = loop.time()  # began; bytes last came; allowed
        self._deadline = self.since + front.settings.serve_read_timeout
        self._allowance = float(DRAIN_BURST)  # bytes it may throw away now
        front.drains.add(self)
        loop.add_reader(sock.fileno(), self._readable)
        self._reading = True
        self._timer: asyncio.TimerHandle | None = loop.call_at(
            min(self._deadline, self._last + LINGER), self._tick
        )

    def _readable(self) -> None:
        loop = self._front.loop
        now = loop.time()
        share = DRAIN_RATE / len(self._front.drains)
        self._allowance = min(DRAIN_BURST, self._allowance + (now - self._stamp) * share)
        self._stamp = now
        while True:
            want = min(len(_DISCARD), int(self._allowance))
            if want < 1:
                if not _sent_all(self._sock):
                    break
                want = len(_DISCARD)  # all it sends is here: nothing to slow down
            try:
                count = self._sock.recv_into(_DISCARD, want, socket.MSG_TRUNC)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                count = 0  # reset
            if not count:
                self.close()  # the client closed (or reset)
                return
            self._allowance = max(0.0, self._allowance - count)
            self._last = now
        # Its share used: read again once it may read half a burst (the client waits).
        loop.remove_reader(self._sock.fileno())
        self._reading = False
        self._schedule(now + (DRAIN_BURST / 2 - self._allowance) / share)

    def _tick(self) -> None:
        self._timer = None
        now = self._front.loop.time()
        if now >= self._deadline or (self._reading and now - self._last >= LINGER):
            self.close()
            return
        if not self._reading:  # its pause is over
            self._front.loop.add_reader(self._sock.fileno(), self._readable)
            self._reading = True
            self._last = now
        self._schedule(self._last + LINGER)

    def _schedule(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._front.loop.call_at(min(self._deadline, when), self._tick)

    def close(self) -> None:
        """Close the socket and free the slot (idempotent)."""
        if self._sock.fileno() < 0:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._reading:
            self._front.loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._front.drains.discard(self)
        self._slot.release()


class _Parser:
    """aiohttp's request parser, one request at a time, telling the connection of what it
    cannot parse (and parsing nothing more on that connection) instead of letting aiohttp
    answer it.

    aiohttp parses all the requests of a read at once, and bytes it cannot parse behind a
    good request raise an error that takes the place of the request (the client got the 400
    meant for the junk, the request was neither stored nor counted). Made with a queue of one
    request (``max_msg_queue_size``), the parser stops after each request and keeps the rest;
    it goes on when aiohttp takes the request (:meth:`message_consumed`), so an error is only
    ever the error of bytes behind every request it returned."""

    def __init__(self, connection: _Connection, loop: asyncio.AbstractEventLoop) -> None:
        self._parser = HttpRequestParser(
            connection,
            loop,
            READ_BUFSIZE,
            max_line_size=connection.max_line_size,
            max_field_size=connection.max_field_size,
            max_headers=connection.max_headers,
            payload_exception=web.RequestPayloadError,
            auto_decompress=False,  # HttpProtocol inflates, within the limits
            max_msg_queue_size=1,
        )
        self._connection = connection
        self.failed = False
        #: Requests returned and not answered yet; the body of the last one.
        self.unanswered = 0
        self.payload: StreamReader | None = None

    def feed_data(self, data: bytes) -> Any:
        if self.failed:
            return (), False, b""
        try:
            messages, upgraded, tail = self._parser.feed_data(data)
        except HttpProcessingError as error:
            self.failed = True
            self._connection.parse_failed(error)
            return (), False, b""
        if messages:
            self.unanswered += len(messages)
            self.payload = messages[-1][1]
        return messages, upgraded, tail

    def message_consumed(self) -> None:
        """aiohttp took a request: parse what arrived behind it."""
        self._parser.message_consumed()
        self._connection.data_received(b"")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parser, name)


class _Connection(web.RequestHandler):
    """aiohttp's connection, plus what the server tracks: whether a request is being handled
    (from its head to its answer written), whether it idles between requests or receives a
    request head (with its deadline and first bytes)."""

    def __init__(self, manager: _Server, slot: _Slot, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.front = manager.front
        self.slot = slot
        self.in_request = False
        self.payload: StreamReader | None = None  # the body of the request being handled
        self.idle = True  # between requests, no byte of the next one yet
        self.idle_since = self.front.loop.time()
        self.head_since: float | None = None  # when the head being received began
        self.admitted = 0.0  # when the request being handled began (its head's first byte)
        self.body_since: float | None = None  # when its body began to be read
        self.body_read = 0  # bytes of it read so far
        self.cut_for_room = False  # its body was cut for a new client: closed without a drain
        self.hold: _Hold | None = None  # the budget its request holds
        self._head = b""  # its first HEAD_KEPT bytes
        self._head_bytes = 0  # bytes of the head being received, until its blank line
        self._head_end = b""  # its last bytes so far (the blank line may straddle two reads)
        self._head_done = False  # its blank line arrived
        self._head_timer: asyncio.TimerHandle | None = None
        self._after: Answer | None = None  # to send once the answer being written is out
        self.parser = _Parser(self, self.front.loop)
        self._parser = cast(Any, self.parser)  # in place of aiohttp's

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.front.connections.add(self)
        self.front.changed()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_head_timer()
        try:
            super().connection_lost(exc)
        finally:
            self.front.connections.discard(self)
            self.slot.release()
            self.front.changed()

    def data_received(self, data: bytes) -> None:
        if data and self.idle and not self.in_request:
            self.idle = False  # a request head begins: it has serve_read_timeout to complete
            self.head_since = self.front.loop.time()
            self._head_timer = self.front.loop.call_later(
                self.front.settings.serve_read_timeout, self._head_timed_out
            )
            self.front.changed()
        if len(self._head) < HEAD_KEPT and (
            not self.in_request or (self.payload is not None and self.payload.is_eof())
        ):  # a head (also one pipelined behind the request being handled)
            self._head += data[: HEAD_KEPT - len(self._head)]
        if not self.in_request and not self._head_done and self._head_overflows(data):
            self._head_too_large()
            return
        super().data_received(data)

    def _head_overflows(self, data: bytes) -> bool:
        """Count ``data`` into the head being received, up to its blank line; True when the
        head passes :data:`MAX_HEAD_BYTES` without one. (The handler learns of a request only
        later, from a task: body bytes may come first, and are not counted.)"""
        window = self._head_end + data
        if not self._head_bytes:
            window = window.lstrip(b"\r\n")  # empty lines before a request line are no end
        if b"\r\n\r\n" in window:
            self._head_done = True
            return False
        self._head_bytes += len(data)
        self._head_end = window[-3:]
        return self._head_bytes > MAX_HEAD_BYTES

    def _head_too_large(self) -> None:
        """A head past :data:`MAX_HEAD_BYTES`: ``431``, and no more of it is read."""
        self._head_done = True  # answered once
        answer = self.front.protocol.bad_request(
            _content_type_of(self._head), f"request head over {MAX_HEAD_BYTES} bytes", 431
        )
        self._send_and_close(answer)

    def request_started(self, request: web.BaseRequest) -> None:
        self._cancel_head_timer()
        now = self.front.loop.time()
        self.admitted = now if self.head_since is None else self.head_since
        self.body_since = now
        self.body_read = 0
        self.in_request = True
        self.payload = request.content
        self.idle = False
        self.head_since = None
        self._head = b""

    def request_finished(self) -> None:
        self.parser.unanswered -= 1
        self.in_request = False
        self.payload = None
        self.body_since = None
        self.hold = None
        self.idle = True
        self.idle_since = self.front.loop.time()
        self._head = b""
        self._head_bytes = 0
        self._head_end = b""
        self._head_done = False
        self.front.changed()

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        """aiohttp writes the answer; then the connection is ready for the next request, or
        sends the answer that waited for this one, or throws away the rest of a refused body."""
        payload = self.payload
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self.request_finished()
            after, self._after = self._after, None
            if after is not None:
                self._send_and_close(after)
            elif self.cut_for_room:
                self.force_close()  # its slot is a new client's now
            elif payload is not None and not payload.is_eof() and not resp.keep_alive:
                self._drain()

    def parse_failed(self, error: HttpProcessingError) -> None:
        """What aiohttp's parser refused: in the body of the last request parsed, its handler
        answers (the body read fails); else the answer goes out now, or after the answers of
        the requests before it. Counted and logged once, as every answer."""
        payload = self.parser.payload
        if payload is not None and not payload.is_eof():
            payload.set_exception(error)
            return
        status = 400
        if isinstance(error, LineTooLong) or "Too many headers" in error.message:
            line_end = self._head.find(b"\r\n")
            status = 414 if line_end < 0 or line_end > self.max_line_size else 431
        headers = _content_type_of(self._head)
        answer = self.front.protocol.bad_request(headers, _why(error), status)
        if self.parser.unanswered:
            self._after = answer  # behind a request not answered yet
        else:
            self._send_and_close(answer)

    def slow_body_since(self, now: float) -> float | None:
        """When the body being read began, unless it has come at :data:`MIN_BODY_RATE` at
        least (over :data:`SPARE` seconds at least) or is read whole: None then."""
        since = self.body_since
        if since is None or self.payload is None or self.payload.is_eof() or self.cut_for_room:
            return None
        if self.body_read >= max(now - since, SPARE) * MIN_BODY_RATE:
            return None
        return since

    def cut_body(self) -> None:
        """Answer 408 to the body being read (its reader fails) and close without a drain."""
        if self.payload is not None and not self.payload.is_eof():
            self.cut_for_room = True
            self.payload.set_exception(_CutForRoom())

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        self.cut()

    def cut(self) -> None:
        """Answer 408 to a head that is still arriving, and close."""
        self._cancel_head_timer()
        if self.in_request or self.transport is None:
            return
        answer = self.front.protocol.timed_out(_content_type_of(self._head))
        self.transport.write(_raw(answer))
        self.force_close()

    def _send_and_close(self, answer: Answer) -> None:
        """``answer`` in one write, outside aiohttp (which has no request to answer), then
        the rest of what the client sends thrown away."""
        self._cancel_head_timer()
        if self.transport is None:
            return
        self.transport.write(_raw(answer))
        if not self._drain():
            self.force_close()

    def _drain(self) -> bool:
        """Shut the sending side once the answer is on the socket, and give the socket (and the
        slot) to a :class:`_Drain`; False where that cannot be done: over TLS (aiohttp lingers
        there) or with the answer not yet on the socket."""
        transport = self.transport
        if transport is None or self.front.tls or self.front.closing:
            return False
        if transport.get_write_buffer_size():
            return False
        raw = transport.get_extra_info("socket")
        if raw is None:
            return False
        try:
            sock = socket.socket(fileno=os.dup(raw.fileno()))
        except OSError:
            return False
        try:
            sock.setblocking(False)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return False
        _Drain(self.front, sock, self.slot.hand_over())
        self.force_close()  # the duplicate keeps the socket open
        return True

    # aiohttp's own answers (a request it cannot parse, a handler that raised) as OTLP answers,
    # each a log line without a traceback.
    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        protocol = self.front.protocol
        if status >= 500:
            answer = protocol.failed(request.headers, exc or RuntimeError(message or "error"))
        else:
            why = message or (str(exc) if exc is not None else "bad request")
            answer = protocol.bad_request(request.headers, why[:300], status)
        return _response(answer, close=True)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        error = kw.get("exc_info")
        try:
            text = str(args[0] % args[1:]) if args else "error"
        except (TypeError, ValueError):
            text = " ".join(map(str, args))
        if isinstance(error, BaseException):
            text += f": {type(error).__name__}: {error}"
        self.front.protocol.log("http_layer", text[:300])


class _Server(web.Server):
    """aiohttp's low-level server, making :class:`_Connection` for one slot at a time."""

    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        front: HttpServer,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, loop=front.loop)
        self.front = front
        self._connection_kwargs = kwargs

    def connection(self, slot: _Slot) -> _Connection:
        return _Connection(self, slot, loop=self.front.loop, **self._connection_kwargs)


class HttpServer:
    """The OTLP/HTTP front end: a listening socket, an event loop in a thread, a few decoding
    threads. :meth:`stop` drains it."""

    def __init__(
        self, receiver: Receiver, settings: ServeSettings, port: int, *, reuse_port: bool = False
    ) -> None:
        self.settings = settings
        self.protocol = HttpProtocol(receiver, settings)
        self.connections: set[_Connection] = set()
        self.drains: set[_Drain] = set()
        self._ssl = _ssl_context(settings)
        self.tls = self._ssl is not None
        self.closing = False  # the stop closes every connection: no more drains
        self._sock = _listen(settings.serve_host, port, reuse_port)
        self.port: int = self._sock.getsockname()[1]
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(self._loop_error)
        self._executor = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="otlp-http-decode")
        self._open = 0  # slots taken: accepted sockets not yet closed
        self._in_flight = 0  # requests being handled
        self._stopping = False
        self._stop_lock = threading.Lock()
        self._stopped = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._finished: asyncio.Future[None] | None = None
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="otlp-http", daemon=True
        )
        self._thread.start()
        if not ready.wait(START_TIMEOUT):
            self.stop(0)
            raise OSError("the OTLP/HTTP event loop did not start")

    # -- the loop thread ----------------------------------------------------------------------

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve(ready))
        finally:
            pending = [task for task in asyncio.all_tasks(self.loop) if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    async def _serve(self, ready: threading.Event) -> None:
        self._server = _Server(
            self._handle,
            self,
            keepalive_timeout=self.settings.serve_idle_timeout,
            lingering_time=LINGER,
            auto_decompress=False,  # HttpProtocol inflates, within the limits
            access_log=None,
        )
        self._finished = self.loop.create_future()
        self._spawn(self._accept_forever())
        ready.set()
        await self._finished

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = self.loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def changed(self) -> None:
        """A connection opened, closed, went idle or began a request head, or a request ended:
        what :meth:`_wait_for_slot` and :meth:`_shutdown` wait for."""
        self._changed.set()

    def _slot_freed(self) -> None:
        self._open -= 1
        self.changed()

    async def _accept_forever(self) -> None:
        while True:
            await self._wait_for_slot()
            try:
                conn, _ = await self.loop.sock_accept(self._sock)
            except OSError as error:  # out of file descriptors, ...: try again shortly
                self.protocol.log("accept", f"cannot accept: {error}", logging.ERROR)
                await asyncio.sleep(0.1)
                continue
            self._open += 1
            self._spawn(self._start_connection(conn, _Slot(self)))

    async def _wait_for_slot(self) -> None:
        """Return when a connection may be accepted. At the cap, the connection idle longest is
        closed once a new client waits in the backlog; with none idle, wait for one to close."""
        limit = self.settings.serve_max_connections
        while self._open >= limit:
            self._changed.clear()
            victim, later = self._victim()
            if victim is None:  # wait for a connection to close, or to become a victim
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wait_changed(), later)
                continue
            waiting: asyncio.Future[None] = self.loop.create_future()
            self.loop.add_reader(self._sock, _resolve, waiting)
            changed = self.loop.create_task(self._wait_changed())
            try:
                await asyncio.wait((waiting, changed), return_when=asyncio.FIRST_COMPLETED)
            finally:
                self.loop.remove_reader(self._sock)
                changed.cancel()
            victim, _ = self._victim()
            if waiting.done() and self._open >= limit and victim is not None:
                self._changed.clear()
                if isinstance(victim, _Drain):
                    what = "a connection throwing away a refused body"
                    victim.close()
                elif victim.idle:
                    what = "an idle connection"
                    victim.force_close()
                elif victim.in_request:
                    what = "a slow request body"
                    victim.cut_body()
                else:
                    what = "a slow request head"
                    victim.cut()
                self.protocol.log(
                    "connection_closed_for_new_client",
                    f"closed {what} for a new client (serve_max_connections={limit} reached)",
                    logging.INFO,
                )
                await self._changed.wait()  # its slot is free once it is closed

    async def _wait_changed(self) -> None:
        await self._changed.wait()

    def _victim(self) -> tuple[_Connection | _Drain | None, float | None]:
        """The connection to close when a new client waits at the cap: the one throwing away a
        refused body for longest (it has its answer), else the one idle longest between
        requests, else the one whose head has been arriving for longest, else the one whose
        body has been arriving for longest below MIN_BODY_RATE — each only after SPARE seconds
        (a client that just got its answer is likely to send again soon). Else (None, seconds
        until there may be one, or None)."""
        now = self.loop.time()
        soonest: float | None = None
        live = [c for c in self.connections if c.transport is not None]
        open_ = [c for c in live if not c.in_request]
        slow = [(c.slow_body_since(now), c) for c in live if c.in_request]
        groups: tuple[list[tuple[float, _Connection | _Drain]], ...] = (
            [(d.since, d) for d in self.drains],
            [(c.idle_since, c) for c in open_ if c.idle],
            [(c.head_since, c) for c in open_ if c.head_since is not None and not c.idle],
            [(since, c) for since, c in slow if since is not None],
        )
        for since in groups:
            if not since:
                continue
            oldest, connection = min(since, key=lambda pair: pair[0])
            if now - oldest >= SPARE:
                return connection, None
            later = oldest + SPARE - now
            soonest = later if soonest is None else min(soonest, later)
        return None, soonest

    async def _start_connection(self, conn: socket.socket, slot: _Slot) -> None:
        try:
            await self.loop.connect_accepted_socket(
                lambda: self._server.connection(slot),
                conn,
                ssl=self._ssl,
                ssl_handshake_timeout=self.settings.serve_read_timeout if self._ssl else None,
                ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT if self._ssl else None,
            )
        except BaseException as error:
            slot.release()
            conn.close()
            if not isinstance(error, Exception):
                raise
            self.protocol.log("handshake", f"connection not set up: {error!r}", logging.INFO)

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        text = str(context.get("message", "event loop error"))
        if error is not None:
            text += f": {type(error).__name__}: {error}"
        self.protocol.log("event_loop", text[:300], logging.INFO)

    # -- one request ----------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        connection = request.protocol
        if isinstance(connection, _Connection):
            connection.request_started(request)  # finished once its answer is written
        self._in_flight += 1
        try:
            return await self._answer(request)
        except Exception as error:  # noqa: BLE001 - a bug: an answer all the same
            return _response(self.protocol.failed(request.headers, error), close=True)
        finally:
            self._in_flight -= 1
            self.changed()

    async def _answer(self, request: web.BaseRequest) -> web.StreamResponse:
        protocol = self.protocol
        headers = request.headers
        if self._stopping:
            return _response(protocol.stopping(headers), close=True)
        refused = protocol.check(request.method, request.path, headers)
        if refused is not None:  # the body, if any, is not read: the connection is closed
            return _response(refused, close=request.body_exists)
        declared = request.content_length
        hold = _Hold(protocol.budget, 0)
        if not hold.take(declared or 0):
            self._cut_slow_bodies(declared or 0)  # for the client's retry
            return _response(protocol.busy(headers), close=request.body_exists)
        connection = request.protocol if isinstance(request.protocol, _Connection) else None
        if connection is not None:
            connection.hold = hold
        # The head and the body within serve_read_timeout of the head's first byte.
        admitted = self.loop.time() if connection is None else connection.admitted
        left = admitted + self.settings.serve_read_timeout - self.loop.time()
        try:
            if headers.get("Expect", "").lower() == "100-continue":
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            try:
                body = await asyncio.wait_for(
                    self._read_body(request.content, declared, hold, connection), max(0.0, left)
                )
            except (asyncio.TimeoutError, _CutForRoom):
                return _response(protocol.timed_out(headers), close=True)
            except _TooLarge:
                return _response(protocol.too_large(headers), close=True)
            except _Busy:
                return _response(protocol.busy(headers), close=True)
            except _Stopped:
                return _response(protocol.cut_at_stop(headers), close=True)
            except Exception as error:  # noqa: BLE001 - broken framing, or the client went away
                why = f"unreadable body: {_why(error)}"
                return _response(protocol.bad_request(headers, why[:300]), close=True)
            answer = await self.loop.run_in_executor(
                self._executor, protocol.handle, request.path, headers, body
            )
            return _response(answer, close=self._stopping)
        finally:
            hold.release()

    def _cut_slow_bodies(self, needed: int) -> None:
        """Cut (408) bodies that have been arriving for :data:`SPARE` seconds at less than
        :data:`MIN_BODY_RATE`, slowest first, until they give back ``needed`` bytes of the
        budget: trickling senders do not keep the budget from good ones for long."""
        now = self.loop.time()
        slow = []
        for connection in self.connections:
            since = connection.slow_body_since(now)
            if since is not None and now - since >= SPARE and connection.hold is not None:
                slow.append((connection.body_read / (now - since), connection))
        freed = 0
        for _, connection in sorted(slow, key=lambda pair: pair[0]):
            if freed >= needed:
                break
            assert connection.hold is not None
            freed += connection.hold.held
            connection.cut_body()

    async def _read_body(
        self,
        content: StreamReader,
        declared: int | None,
        hold: _Hold,
        connection: _Connection | None,
    ) -> bytearray:
        """The body as aiohttp decodes its framing (``Content-Length`` or chunked). A chunked
        body is held in the budget as it arrives and may not pass the message limit."""
        limit = self.settings.serve_max_message_bytes
        body = bytearray()
        while True:
            chunk = await content.readany()
            if not chunk:
                break
            if declared is None:
                if len(body) + len(chunk) > limit:
                    raise _TooLarge
                if not hold.take(len(chunk)):
                    raise _Busy
            body += chunk
            if connection is not None:
                connection.body_read = len(body)
        if declared is not None and len(body) != declared:
            raise ConnectionError("body shorter than its Content-Length")
        return body

    # -- stopping -------------------------------------------------------------------------

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting (the port is closed), close connections that wait for a request, give
        requests in flight ``grace`` seconds (a body still arriving also has its
        ``serve_read_timeout``), answer ``503`` to bodies still arriving then (their clients get
        :data:`LINGER` to read it), then close the rest. Idempotent."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        if self._thread.is_alive() and not self.loop.is_closed():
            future = asyncio.run_coroutine_threadsafe(self._shutdown(grace), self.loop)
            with contextlib.suppress(Exception):
                future.result(grace + 10)
        self._thread.join(grace + 10)
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._sock.close()

    async def _shutdown(self, grace: float) -> None:
        self._stopping = True
        for task in list(self._tasks):  # the accept loop and connections being set up
            task.cancel()
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self._sock)
        self._sock.close()
        for connection in list(self.connections):
            if not connection.in_request:
                connection.force_close()
        deadline = self.loop.time() + grace
        await self._until(lambda: not self._in_flight, deadline)
        # Bodies still arriving: answered 503 (another serve takes the retry), the answers
        # written and the clients given LINGER to finish sending and read them.
        cut = [c for c in self.connections if c.payload is not None and not c.payload.is_eof()]
        for connection in cut:
            assert connection.payload is not None
            connection.payload.set_exception(_Stopped())
        await self._until(
            lambda: not self.drains and not any(c.in_request for c in cut if c.transport),
            self.loop.time() + LINGER,
        )
        self.closing = True
        for drain in list(self.drains):
            drain.close()
        for connection in list(self.connections):
            connection.force_close()
        assert self._finished is not None
        self._finished.set_result(None)

    async def _until(self, done: Callable[[], bool], deadline: float) -> None:
        """Wait until ``done()`` (checked at each change), or the loop time ``deadline``."""
        while not done() and self.loop.time() < deadline:
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), deadline - self.loop.time())


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


#: TCP states (linux/tcp_states.h) in which the peer has sent its FIN: TIME_WAIT, CLOSE,
#: CLOSE_WAIT, LAST_ACK, CLOSING.
_PEER_DONE = frozenset({6, 7, 8, 9, 11})


def _sent_all(sock: socket.socket) -> bool:
    """Whether the client has sent all it will (its FIN arrived), where the system says."""
    option = getattr(socket, "TCP_INFO", None)
    if option is None:
        return False
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, option, 1)[0] in _PEER_DONE
    except OSError:
        return False


def _raw(answer: Answer) -> bytes:
    """``answer`` as HTTP/1.1 bytes with ``Connection: close``, for a request aiohttp does not
    answer (a head cut by its timeout, one its parser refused)."""
    lines = [f"HTTP/1.1 {answer.status} {http.HTTPStatus(answer.status).phrase}"]
    lines += [f"{name}: {value}" for name, value in answer.headers.items()]
    lines += [f"Date: {email.utils.formatdate(usegmt=True)}", "Server: otel-luna"]
    lines += [f"Content-Length: {len(answer.body)}", "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + answer.body


def _content_type_of(head: bytes) -> dict[str, str]:
    """The ``Content-Type`` of a request head aiohttp did not parse, if its line arrived whole
    (the answer is in the request's encoding): an empty dict otherwise."""
    for line in head.split(b"\r\n")[1:-1]:  # after the request line; the last is incomplete
        if not line:
            break  # the end of the head
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"content-type":
            return {"Content-Type": value.strip().decode("latin-1")}
    return {}


def _why(error: BaseException) -> str:
    """What went wrong, in one line: aiohttp's parser errors carry several (with a pointer)."""
    if isinstance(error, HttpProcessingError):
        text = error.message.strip().split("\n", 1)[0].rstrip(":")
        return text[:200] or type(error).__name__
    return f"{type(error).__name__}: {error}"[:200]


def _response(answer: Answer, *, close: bool) -> web.Response:
    headers = {**answer.headers, "Server": "otel-luna"}  # not aiohttp's versions
    response = web.Response(status=answer.status, body=answer.body, headers=headers)
    if close:
        response.force_close()
    return response


def _ssl_context(settings: ServeSettings) -> ssl.SSLContext | None:
    if not (settings.serve_tls_cert and settings.serve_tls_key):
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.serve_tls_cert, settings.serve_tls_key)
    context.set_alpn_protocols(["http/1.1"])
    return context


def _listen(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A listening TCP socket (IPv4 first where the host has both, as before), with
    ``SO_REUSEPORT`` when several processes share the port."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def start_http(
    receiver: Receiver, settings: ServeSettings, port: int, *, reuse_port: bool = False
) -> tuple[HttpServer, int]:
    """A serving OTLP/HTTP server (its loop in a thread); returns it and the bound port."""
    server = HttpServer(receiver, settings, port, reuse_port=reuse_port)
    return server, server.port
