"""A fault-injecting HTTP reverse proxy for the reliability tests.

:class:`FaultProxy` listens on 127.0.0.1 (port 0) in a thread of the test process and forwards
each request to an upstream URL, unless a fault is programmed for it. Faults are consumed in
order, one per request (:meth:`FaultProxy.script`); when none is queued, :attr:`default`
applies. What can be injected:

* :data:`PASS` — forward the request and relay the upstream's answer;
* :func:`status` — answer with an HTTP status without forwarding (:func:`throttle` is 429 with
  ``Retry-After``);
* :data:`RESET` — read the request, then close the socket with a TCP reset and no response;
* :func:`slow` — wait before forwarding (the client may give up; the upstream still gets it).

Every request is counted and logged (:attr:`FaultProxy.requests`, :attr:`FaultProxy.faults`,
:attr:`FaultProxy.log`). Only the standard library is used.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

HOST = "127.0.0.1"
UPSTREAM_TIMEOUT = 30.0
# Hop-by-hop headers (RFC 9110, section 7.6.1), and those the proxy sets itself.
_NOT_FORWARDED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


@dataclass(frozen=True)
class Fault:
    """What the proxy does with one request; ``name`` is how it is counted."""

    kind: str  # "pass", "status", "reset" or "slow"
    status: int = 0
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0

    @property
    def name(self) -> str:
        if self.kind == "status":
            return str(self.status)
        return self.kind


PASS = Fault("pass")
RESET = Fault("reset")


def status(code: int, *headers: tuple[str, str]) -> Fault:
    """Answer ``code`` (with ``headers``) without forwarding."""
    return Fault("status", status=code, headers=headers)


def throttle(retry_after: int = 1) -> Fault:
    """429 Too Many Requests with ``Retry-After: retry_after``."""
    return status(429, ("Retry-After", str(retry_after)))


def slow(seconds: float) -> Fault:
    """Forward after ``seconds``."""
    return Fault("slow", delay=seconds)


@dataclass(frozen=True)
class Record:
    """One request the proxy saw: when (monotonic), what, the fault, the status answered."""

    time: float
    method: str
    path: str
    fault: str
    status: int | None


class FaultProxy:
    """A reverse proxy to ``upstream`` with programmable faults; a context manager."""

    def __init__(self, upstream: str, *, default: Fault = PASS) -> None:
        parts = urllib.parse.urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be http://host:port, not {upstream!r}")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.default = default
        self.requests = 0
        #: Faults injected, by name (pass-through requests are not counted here).
        self.faults: Counter[str] = Counter()
        self.log: list[Record] = []
        self._queue: list[Fault] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = _Server((HOST, 0), _Handler)
        self._server.proxy = self
        self.port = int(self._server.server_address[1])
        self.url = f"http://{HOST}:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"faultproxy:{self.port}",
            daemon=True,
        )
        self._thread.start()

    def __repr__(self) -> str:
        return f"FaultProxy(url={self.url!r}, requests={self.requests}, faults={self.faults!r})"

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def script(self, *faults: Fault) -> None:
        """Apply ``faults`` to the next requests, one each, after those already scripted."""
        with self._lock:
            self._queue.extend(faults)

    @property
    def scripted(self) -> int:
        """Faults scripted and not yet used."""
        with self._lock:
            return len(self._queue)

    def records(self) -> list[Record]:
        """A snapshot of :attr:`log`."""
        with self._lock:
            return list(self.log)

    def stop(self) -> None:
        """Stop serving; interrupts slow requests (they are then dropped without a response)."""
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    # -- used by the handler ----------------------------------------------------------------

    def _next_fault(self) -> Fault:
        with self._lock:
            self.requests += 1
            fault = self._queue.pop(0) if self._queue else self.default
            if fault.kind != "pass":
                self.faults[fault.name] += 1
            return fault

    def _record(
        self, started: float, method: str, path: str, fault: Fault, code: int | None
    ) -> None:
        with self._lock:
            self.log.append(Record(started, method, path, fault.name, code))

    def _forward(self, method: str, path: str, headers: Any, body: bytes) -> tuple[int, Any, bytes]:
        connection = http.client.HTTPConnection(
            self.upstream_host, self.upstream_port, timeout=UPSTREAM_TIMEOUT
        )
        try:
            forwarded = {k: v for k, v in headers.items() if k.lower() not in _NOT_FORWARDED}
            connection.request(method, path, body=body, headers=forwarded)
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    proxy: FaultProxy


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like InfluxDB
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        proxy = self.server.proxy
        started = time.monotonic()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        fault = proxy._next_fault()
        if fault.kind == "reset":
            proxy._record(started, self.command, self.path, fault, None)
            self._reset()
            return
        if fault.kind == "status":
            proxy._record(started, self.command, self.path, fault, fault.status)
            self._respond(fault.status, list(fault.headers), b'{"error":"injected fault"}')
            return
        if fault.kind == "slow" and proxy._stopping.wait(fault.delay):
            proxy._record(started, self.command, self.path, fault, None)
            self._reset()
            return
        try:
            code, headers, payload = proxy._forward(self.command, self.path, self.headers, body)
        except OSError as error:  # upstream down: answer like a gateway does
            code, headers, payload = 502, [], f"upstream: {error}".encode()
        proxy._record(started, self.command, self.path, fault, code)
        kept = [(k, v) for k, v in headers if k.lower() not in _NOT_FORWARDED]
        self._respond(code, kept, payload)

    def _respond(self, code: int, headers: list[tuple[str, str]], payload: bytes) -> None:
        try:
            self.send_response(code)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()
        except OSError:  # the client gave up (after a slow answer): nothing to tell it
            self.close_connection = True

    def _reset(self) -> None:
        """Close with RST (SO_LINGER 0) and no response."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass
