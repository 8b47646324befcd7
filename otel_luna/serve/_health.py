"""``otel-luna serve``'s health and metrics endpoint, on a port of its own (off unless
``serve_health_port`` is set; 127.0.0.1 unless ``serve_health_host`` says otherwise):

* ``GET /healthz`` — liveness: 200 ``{"status": "alive", "uptime": seconds}`` while the process
  serves;
* ``GET /readyz`` — readiness: 200 ``{"ready": true}``, else 503 ``{"ready": false, "reasons":
  [...]}`` while writes to the destination fail (refused, blocked, 5xx, ... — the trouble the
  log names, :attr:`~otel_luna.delivery._writer.BatchWriter.trouble`), the spool cannot store
  requests (its directory not writable, a write refused, or full: requests get 503);
* ``GET /metrics`` — the ``otel_luna.*`` self-metrics in Prometheus text format (0.0.4):
  ``otel_luna_points_total{outcome, reason}``, ``otel_luna_events_total{event}``,
  ``otel_luna_spool_lines`` and ``otel_luna_ready``. The counters are those ``otel-luna
  status`` shows, grouped as :func:`otel_luna.selfmetrics.totals` groups them.

One serve process reports itself (:class:`ReceiverHealth`). With ``--workers N`` the supervisor
serves the endpoint (:class:`SupervisorHealth`): ready when every worker runs and none reports
trouble; the counters summed over the stats files its running workers write (a worker that is
restarted starts its counters again, which Prometheus reads as a counter reset).

A small HTTP/1.1 server of its own (:class:`HealthServer`: one GET per connection, a bounded
head, a read timeout, a cap on connections; the port may be open to probes from anywhere) on an
event loop in a thread of its own; the sources are read in the loop's default executor (they
take locks or read files).
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import logging
import os
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from otel_luna.delivery import process_directories, read_stats
from otel_luna.outcomes import Reason
from otel_luna.selfmetrics import EVENTS_HELP, POINTS_HELP, SPOOL_HELP, totals
from otel_luna.serve._settings import ServeSettings
from otel_luna.serve._startup import HEALTH_CONNECTIONS, host_port, listening

if TYPE_CHECKING:
    from otel_luna.serve._receiver import Receiver

_logger = logging.getLogger(__name__)
#: Seconds the endpoint's loop thread has to start, and to stop.
START_TIMEOUT = STOP_TIMEOUT = 10.0
#: Seconds a request head may take to arrive (serve passes ``serve_read_timeout``).
READ_TIMEOUT = 10.0
#: Bytes a request head may take (a probe's or a scraper's takes a few hundred).
MAX_HEAD_BYTES = 8192
#: The blank line that ends a request head.
_HEAD_END = re.compile(rb"\r?\n\r?\n")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class HealthSource(Protocol):
    """What the endpoint reports."""

    def problems(self) -> list[str]:
        """Why it is not ready; empty when it is."""

    def counts(self) -> Mapping[Reason, int]:
        """Every counter, as ``otel-luna status`` shows them."""

    def queued(self) -> int:
        """Points waiting in the spool."""


class ReceiverHealth:
    """One serve process: its receiver's delivery and spool."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver

    def problems(self) -> list[str]:
        found = []
        state = self.receiver.ingest.delivery_state()
        if state is not None:
            if state.trouble is not None:
                found.append(_trouble_text(state.destination, state.trouble))
            directory = state.spool_directory
            if directory is not None and not _writable(directory):
                found.append(f"the spool directory {directory} is not writable")
        if self.receiver.spool_refused is not None:
            found.append(f"the spool refused the last request: {self.receiver.spool_refused}")
        if self.receiver.spool_full:
            found.append("the spool is full: requests are refused with 503 until it drains")
        return found

    def counts(self) -> Mapping[Reason, int]:
        return self.receiver.counts()

    def queued(self) -> int:
        return self.receiver.ingest.queued()


class SupervisorHealth:
    """``--workers N``: what the workers last wrote to their stats files (``otel-luna
    status``'s reading of them), and whether every worker runs. ``workers()`` gives each
    slot's pid, None for a slot whose worker is not running or not ready yet."""

    def __init__(
        self, settings: ServeSettings, workers: Callable[[], Sequence[int | None]]
    ) -> None:
        from otel_luna.delivery import destination_name, destination_slug
        from otel_luna.serve._receiver import HIGH_WATER

        self.settings = settings
        self._workers = workers
        self._destination = destination_slug(settings)
        self._name = destination_name(settings)
        self._high_water = int(settings.spool_max_bytes * HIGH_WATER)

    def _stats(self) -> list[tuple[int, dict[str, object]]]:
        """(pid, stats) of each ready worker's spool directory of this destination. Only the
        stats files are read (never a segment), each bounded."""
        pids = {pid for pid in self._workers() if pid is not None}
        found = []
        for directory in process_directories(self.settings.spool_dir):
            pid = _pid_of(directory.name)
            if directory.parent.name == self._destination and pid in pids:
                found.append((pid, _read_stats(directory)))
        return found

    def problems(self) -> list[str]:
        found = [
            f"worker {slot} is not running"
            for slot, pid in enumerate(self._workers())
            if pid is None
        ]
        if not _writable(Path(self.settings.spool_dir)):
            found.append(f"the spool directory {self.settings.spool_dir} is not writable")
        for pid, stats in self._stats():
            trouble = stats.get("trouble")
            if isinstance(trouble, dict):
                found.append(f"worker {pid}: {_trouble_text(self._name, trouble)}")
            pending = stats.get("pending")
            waiting = pending.get("bytes") if isinstance(pending, dict) else None
            if isinstance(waiting, int) and waiting >= self._high_water:
                found.append(
                    f"worker {pid}: the spool is full: requests are refused with 503 until it "
                    "drains"
                )
        return found

    def counts(self) -> Mapping[Reason, int]:
        total: Counter[Reason] = Counter()
        for _, stats in self._stats():
            for name, value in stats.items():
                try:
                    reason = Reason.of(name)
                except ValueError:  # a state (trouble, pending, ...) or another version's
                    continue
                if isinstance(value, int) and not isinstance(value, bool):
                    total[reason] += value
        return total

    def queued(self) -> int:
        total = 0
        for _, stats in self._stats():
            pending = stats.get("pending")
            lines = pending.get("lines") if isinstance(pending, dict) else None
            if isinstance(lines, int):
                total += lines
        return total


def prometheus_text(counts: Mapping[Reason, int], queued: int, ready: bool) -> str:
    """The counters, the spool and readiness in Prometheus text format 0.0.4. Pure."""
    points, events = totals((None, reason, value) for reason, value in counts.items())
    lines = [
        f"# HELP otel_luna_points_total {POINTS_HELP}",
        "# TYPE otel_luna_points_total counter",
    ]
    lines += [
        f'otel_luna_points_total{{outcome="{outcome.value}",reason="{_label(label)}"}} {value}'
        for (_, outcome, label), value in sorted(
            points.items(), key=lambda item: (item[0][1].value, item[0][2])
        )
    ]
    lines += [
        f"# HELP otel_luna_events_total {EVENTS_HELP}",
        "# TYPE otel_luna_events_total counter",
    ]
    lines += [
        f'otel_luna_events_total{{event="{_label(str(event))}"}} {value}'
        for (_, event), value in sorted(events.items(), key=lambda item: str(item[0][1]))
    ]
    lines += [
        f"# HELP otel_luna_spool_lines {SPOOL_HELP}",
        "# TYPE otel_luna_spool_lines gauge",
        f"otel_luna_spool_lines {queued}",
        "# HELP otel_luna_ready 1 when /readyz says ready, else 0",
        "# TYPE otel_luna_ready gauge",
        f"otel_luna_ready {int(ready)}",
    ]
    return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _trouble_text(destination: str, trouble: Mapping[str, object]) -> str:
    since = trouble.get("since")
    lasted = ""
    if isinstance(since, (int, float)):
        lasted = f" for {max(0.0, time.time() - since):.0f} s"
    return (
        f"cannot deliver to {destination}{lasted} ({trouble.get('kind')}): {trouble.get('reason')}"
    )


def _read_stats(directory: Path) -> dict[str, object]:
    """A process directory's stats file (the writer's, as ``otel-luna status`` reads it:
    never through a link, at most ``STATS_MAX_BYTES``); empty if it cannot be read."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        return read_stats(dir_fd)
    except OSError:
        return {}
    finally:
        os.close(dir_fd)


def _writable(directory: Path | str) -> bool:
    return os.access(directory, os.W_OK | os.X_OK)


def _pid_of(process: str) -> int | None:
    head = process.split("-", 1)[0]
    return int(head) if head.isdigit() else None


class HealthServer:
    """The endpoint on ``host:port`` (0: any free port, see :attr:`port`), serving until
    :meth:`stop`.

    A small HTTP/1.1 server of its own on an event loop in a thread, hardened for a port that
    may be open to more than the operator (a Kubernetes probe comes to the pod's address): one
    ``GET`` per connection, answered with ``Connection: close``; the request head must arrive
    within ``read_timeout`` seconds and in :data:`MAX_HEAD_BYTES` (else ``408`` / ``431``,
    nothing logged); a body is never read; at most :data:`HEALTH_CONNECTIONS` connections at
    once: a new one closes the one that has been waiting for its head longest."""

    def __init__(
        self, source: HealthSource, host: str, port: int, read_timeout: float = READ_TIMEOUT
    ) -> None:
        from otel_luna.serve._http_server import _listen

        self.source = source
        self.read_timeout = read_timeout
        self._started = time.monotonic()
        self._sock = listening(
            "serve_health_port",
            host,
            port,
            False,
            lambda: _listen(host, port, reuse_port=False),
            host_setting="serve_health_host",
        )
        self.host = host
        self.port = int(self._sock.getsockname()[1])
        self.loop = asyncio.new_event_loop()
        #: Connections being served, oldest first: True once their head has arrived.
        self._connections: dict[asyncio.Task[None], bool] = {}
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="otel-luna-health", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            self.stop()
            raise OSError("the health endpoint did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        accepting = self.loop.create_task(self._accept_forever())
        self.loop.call_soon(self._ready.set)
        self.loop.run_forever()
        tasks = [accepting, *self._connections]
        for task in tasks:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self.loop.close()

    async def _accept_forever(self) -> None:
        failing = False
        while True:
            try:
                conn, _ = await self.loop.sock_accept(self._sock)
            except OSError as error:  # out of file descriptors, ...: try again shortly
                if not failing:  # once until it accepts again
                    _logger.warning("otel-luna serve: health endpoint cannot accept: %s", error)
                failing = True
                await asyncio.sleep(0.1)
                continue
            failing = False
            if len(self._connections) >= HEALTH_CONNECTIONS:
                self._close_one()
            task = self.loop.create_task(self._serve_one(conn))
            self._connections[task] = False
            task.add_done_callback(lambda done: self._connections.pop(done, None))

    def _close_one(self) -> None:
        """Make room: close the connection that has waited for its head longest (else the
        oldest being answered)."""
        waiting = (task for task, answering in self._connections.items() if not answering)
        oldest = next(waiting, None) or next(iter(self._connections))
        del self._connections[oldest]
        oldest.cancel()  # its socket is closed as it ends

    async def _serve_one(self, conn: socket.socket) -> None:
        try:
            try:
                head = await asyncio.wait_for(self._read_head(conn), self.read_timeout)
            except asyncio.TimeoutError:
                answer = _answer(408, "the request head did not arrive in time")
            except OSError:  # reset, or closed before the end of the head
                return
            else:
                task = asyncio.current_task()
                if task in self._connections:
                    self._connections[task] = True  # answering: closed for room only last
                answer = await self._route(head) if head is not None else _TOO_LARGE
            with contextlib.suppress(OSError, asyncio.TimeoutError):  # the client went away
                await asyncio.wait_for(self.loop.sock_sendall(conn, answer), self.read_timeout)
        finally:
            conn.close()

    async def _read_head(self, conn: socket.socket) -> bytes | None:
        """The request head up to its blank line (CRLF or bare LF line ends, as RFC 9112
        lets a server accept); None if it passes MAX_HEAD_BYTES."""
        head = b""
        while (end := _HEAD_END.search(head)) is None:
            if len(head) > MAX_HEAD_BYTES:
                return None
            data = await self.loop.sock_recv(conn, MAX_HEAD_BYTES + 1)
            if not data:
                raise ConnectionResetError("closed before the end of the head")
            head += data
        head = head[: end.start()]
        return head if len(head) <= MAX_HEAD_BYTES else None

    async def _route(self, head: bytes) -> bytes:
        method, _, rest = head.lstrip(b"\r\n").split(b"\n", 1)[0].partition(b" ")
        path = rest.partition(b" ")[0].partition(b"?")[0]
        if not method or not path:
            return _answer(400, "not an HTTP request line")
        handler = self._routes().get(path)
        if handler is None:
            return _answer(404, "not found")
        if method not in (b"GET", b"HEAD"):
            return _answer(405, "only GET and HEAD", {"Allow": "GET, HEAD"})
        answer = await handler()
        if method == b"HEAD":  # the same head, no body
            return answer.partition(b"\r\n\r\n")[0] + b"\r\n\r\n"
        return answer

    def _routes(self) -> dict[bytes, Callable[[], Awaitable[bytes]]]:
        return {b"/healthz": self._healthz, b"/readyz": self._readyz, b"/metrics": self._metrics}

    async def _healthz(self) -> bytes:
        uptime = round(time.monotonic() - self._started, 3)
        return _json_answer(200, {"status": "alive", "uptime": uptime})

    async def _readyz(self) -> bytes:
        try:
            problems = await self.loop.run_in_executor(None, self.source.problems)
        except Exception as error:  # a bug: an answer and a log line, never a dropped answer
            _logger.exception("otel-luna serve: cannot tell whether it is ready")
            problems = [f"cannot tell: {type(error).__name__}"]
        if problems:
            return _json_answer(503, {"ready": False, "reasons": problems})
        return _json_answer(200, {"ready": True})

    async def _metrics(self) -> bytes:
        try:
            text = await self.loop.run_in_executor(None, self._scrape)
        except Exception as error:  # a bug: an answer and a log line, never a dropped answer
            _logger.exception("otel-luna serve: cannot read the metrics")
            return _answer(500, f"cannot read the metrics: {type(error).__name__}")
        return _answer(200, text, {"Content-Type": CONTENT_TYPE})

    def _scrape(self) -> str:
        return prometheus_text(
            self.source.counts(), self.source.queued(), not self.source.problems()
        )

    def stop(self) -> None:
        if not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed meanwhile
                self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(STOP_TIMEOUT)
        self._sock.close()


def _answer(status: int, text: str, headers: Mapping[str, str] | None = None) -> bytes:
    """An HTTP/1.1 answer that closes the connection (plain text unless ``headers`` say)."""
    body = text.encode()
    fields = {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}
    lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}"]
    lines += [f"{name}: {value}" for name, value in fields.items()]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "Server: otel-luna"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


_TOO_LARGE = _answer(431, "head too large")


def _json_answer(status: int, value: object) -> bytes:
    return _answer(status, json.dumps(value), {"Content-Type": "application/json"})


def start_health(source: HealthSource, settings: ServeSettings) -> HealthServer | None:
    """The endpoint ``settings`` ask for (``serve_health_port``), serving; None when off."""
    if settings.serve_health_port is None:
        return None
    return HealthServer(
        source,
        settings.serve_health_host,
        settings.serve_health_port,
        settings.serve_read_timeout,
    )


def start_line(server: HealthServer) -> str:
    """What serve prints when the endpoint listens (tests read the port from it)."""
    return f"otel-luna serve: health and metrics on {host_port(server.host, server.port)}"
