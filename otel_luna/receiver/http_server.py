"""OTLP/HTTP on aiohttp: ``POST /v1/traces`` and ``/v1/metrics``, hosted on one asyncio event
loop in a thread of the serve process. What to answer is
:class:`~otel_luna.receiver.protocol.HttpProtocol`; this module moves bytes and keeps the limits
that need sockets:

- at most ``serve_max_connections`` connections: more wait in the listen backlog; when a new
  client waits, the connection idle longest between requests is closed, else the one whose
  request head has been arriving longest (408), either after a second at least;
- everything :meth:`HttpProtocol.check` decides (path, method, token, content type, declared
  length) is answered before any body byte is read, and the connection closed;
- at most ``serve_max_inflight_bytes`` of request bodies read or decoded at once: beyond it
  ``503`` + ``Retry-After`` without reading;
- ``serve_read_timeout`` for a request's head (from its first byte) and again for its body (from
  the end of the head), for the TLS handshake (done on the loop, never in the accept path), and
  so for how long a slow client can hold up :meth:`HttpServer.stop`;
- decoding and accepting run in a few threads, so the loop goes on serving other connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from otel_luna.receiver import Receiver
from otel_luna.receiver.protocol import Answer, ByteBudget, HttpProtocol
from otel_luna.settings import Settings

#: Connections the kernel holds while all ``serve_max_connections`` are taken (capped by
#: ``net.core.somaxconn``).
BACKLOG = 1024
#: Seconds a keep-alive connection may wait for its next request.
IDLE_TIMEOUT = 60.0
#: Threads that decode and accept request bodies, off the event loop.
DECODE_THREADS = 4
#: Seconds the unread rest of a refused body is read and thrown away before the connection is
#: closed: the client then reads the answer rather than a connection reset.
LINGER = 1.0
#: Seconds a connection must have idled, or have been receiving a request head, before it may
#: be closed (a head: answered 408) to make room for a new client at the connection cap.
SPARE = 1.0
#: Seconds a TLS connection being closed waits for the client's close_notify.
TLS_SHUTDOWN_TIMEOUT = 2.0
#: Seconds the loop thread has to start.
START_TIMEOUT = 30.0


class _TooLarge(Exception):
    pass


class _Busy(Exception):
    pass


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


class _Connection(RequestHandler):
    """aiohttp's connection, plus what the server tracks: whether a request is being handled,
    whether it idles between requests or receives a request head (with its deadline)."""

    def __init__(self, manager: _Server, slot: _Slot, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.front = manager.front
        self.slot = slot
        self.in_request = False
        self.idle = True  # between requests, no byte of the next one yet
        self.idle_since = self.front.loop.time()
        self.head_since: float | None = None  # when the head being received began
        self._head_timer: asyncio.TimerHandle | None = None

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
        super().data_received(data)

    def request_started(self) -> None:
        self._cancel_head_timer()
        self.in_request = True
        self.idle = False
        self.head_since = None

    def request_finished(self) -> None:
        self.in_request = False
        self.idle = True
        self.idle_since = self.front.loop.time()

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
        answer = self.front.protocol.timed_out({})
        head = (
            f"HTTP/1.1 {answer.status} Request Timeout\r\n"
            f"Content-Type: {answer.headers['Content-Type']}\r\n"
            f"Content-Length: {len(answer.body)}\r\nConnection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + answer.body)
        self.force_close()

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
        self, receiver: Receiver, settings: Settings, port: int, *, reuse_port: bool = False
    ) -> None:
        self.settings = settings
        self.protocol = HttpProtocol(receiver, settings)
        self.connections: set[_Connection] = set()
        self._ssl = _ssl_context(settings)
        self._sock = _listen(settings.serve_host, port, reuse_port)
        self.port: int = self._sock.getsockname()[1]
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(self._loop_error)
        self._executor = (
            ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="otlp-http-decode")
            if DECODE_THREADS
            else None
        )
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
            keepalive_timeout=IDLE_TIMEOUT,
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
                what = "an idle connection" if victim.idle else "a slow request head"
                if victim.idle:
                    victim.force_close()
                else:
                    victim.cut()
                self.protocol.log(
                    "connection_closed_for_new_client",
                    f"closed {what} for a new client (serve_max_connections={limit} reached)",
                    logging.INFO,
                )
                await self._changed.wait()  # its slot is free once it is closed

    async def _wait_changed(self) -> None:
        await self._changed.wait()

    def _victim(self) -> tuple[_Connection | None, float | None]:
        """The connection to close when a new client waits at the cap: the one idle longest
        between requests, else the one whose head has been arriving for longest — either only
        after SPARE seconds (a client that just got its answer is likely to send again soon).
        Else (None, seconds until there may be one, or None)."""
        now = self.loop.time()
        soonest: float | None = None
        for waiting in (True, False):
            since = [
                (c.idle_since if waiting else c.head_since or now, c)
                for c in self.connections
                if c.transport is not None
                and not c.in_request
                and (c.idle if waiting else c.head_since is not None)
            ]
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
            connection.request_started()
        self._in_flight += 1
        try:
            return await self._answer(request)
        except Exception as error:  # noqa: BLE001 - a bug: an answer all the same
            return _response(self.protocol.failed(request.headers, error), close=True)
        finally:
            self._in_flight -= 1
            if isinstance(connection, _Connection):
                connection.request_finished()
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
            return _response(protocol.busy(headers), close=request.body_exists)
        try:
            if headers.get("Expect", "").lower() == "100-continue":
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            try:
                body = await asyncio.wait_for(
                    self._read_body(request.content, declared, hold),
                    self.settings.serve_read_timeout,
                )
            except asyncio.TimeoutError:
                return _response(protocol.timed_out(headers), close=True)
            except _TooLarge:
                return _response(protocol.too_large(headers), close=True)
            except _Busy:
                return _response(protocol.busy(headers), close=True)
            except Exception as error:  # noqa: BLE001 - broken framing, or the client went away
                why = f"unreadable body: {type(error).__name__}: {error}"
                return _response(protocol.bad_request(headers, why[:300]), close=True)
            if self._executor is None:
                answer = protocol.handle(request.path, headers, body)
            else:
                answer = await self.loop.run_in_executor(
                    self._executor, protocol.handle, request.path, headers, body
                )
            return _response(answer, close=self._stopping)
        finally:
            hold.release()

    async def _read_body(
        self, content: StreamReader, declared: int | None, hold: _Hold
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
        if declared is not None and len(body) != declared:
            raise ConnectionError("body shorter than its Content-Length")
        return body

    # -- stopping -------------------------------------------------------------------------

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting (the port is closed), close connections that wait for a request, give
        requests in flight ``grace`` seconds (a body still arriving also has its
        ``serve_read_timeout``), then close the rest. Idempotent."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        if self._thread.is_alive() and not self.loop.is_closed():
            future = asyncio.run_coroutine_threadsafe(self._shutdown(grace), self.loop)
            with contextlib.suppress(Exception):
                future.result(grace + 10)
        self._thread.join(grace + 10)
        if self._executor is not None:
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
        while self._in_flight and self.loop.time() < deadline:
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), deadline - self.loop.time())
        for connection in list(self.connections):
            connection.force_close()
        assert self._finished is not None
        self._finished.set_result(None)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _response(answer: Answer, *, close: bool) -> web.Response:
    headers = {**answer.headers, "Server": "otel-luna"}  # not aiohttp's versions
    response = web.Response(status=answer.status, body=answer.body, headers=headers)
    if close:
        response.force_close()
    return response


def _ssl_context(settings: Settings) -> ssl.SSLContext | None:
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
    receiver: Receiver, settings: Settings, port: int, *, reuse_port: bool = False
) -> tuple[HttpServer, int]:
    """A serving OTLP/HTTP server (its loop in a thread); returns it and the bound port."""
    server = HttpServer(receiver, settings, port, reuse_port=reuse_port)
    return server, server.port
