"""Fork safety of delivery and sinks: after ``fork()`` the child re-creates every lock of the
writer and the dead-letter file, and writes on connections of its own, never the parent's.

The HTTP peer is a small aiohttp server on 127.0.0.1 that records the client's port of every
request: it answers the InfluxDB 1.x and 2.x write paths and Ping Centre alike (a fake: what is
checked is the client's socket, not the server's reply; InfluxDB 2.x and Ping Centre cannot be
had here).
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from otel_luna.delivery._memory_spool import MemorySpool
from otel_luna.delivery._writer import BatchWriter, DeadLetters
from otel_luna.settings import Settings
from otel_luna.sinks import load_sink
from otel_luna.sinks._file import FileSink

CHILD_TIMEOUT = 30.0


class PeerRecorder:
    """An aiohttp server in a thread; ``requests`` holds (client port, body) of every POST."""

    def __init__(self) -> None:
        self.requests: list[tuple[int, bytes]] = []
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        assert self._started.wait(10), "the recorder did not start"
        self.url = f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = int(self._runner.addresses[0][1])
        self._started.set()
        self._loop.run_forever()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        assert request.transport is not None
        self.requests.append((int(request.transport.get_extra_info("peername")[1]), body))
        return web.Response(status=204)

    def port_of(self, marker: bytes) -> int:
        (port,) = {port for port, body in self.requests if marker in body}
        return port

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def peers() -> Iterator[PeerRecorder]:
    recorder = PeerRecorder()
    yield recorder
    recorder.stop()


def wait_for_child(pid: int) -> int:
    """The exit status of child ``pid``; killed (by that PID) and failed if it hangs."""
    deadline = time.monotonic() + CHILD_TIMEOUT
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"the forked child {pid} hung")


def in_child(work: object) -> int:
    """Fork; the child runs ``work()`` and exits 0 if it returned True. The child's status."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            code = 0 if work() is True else 1  # type: ignore[operator]
        finally:
            os._exit(code)
    return wait_for_child(pid)


def line_for(kind: str, who: str) -> str:
    if kind == "pingcentre":
        return f'{{"topic":"watchdog-proxy","who":"{who}"}}'
    return f"m,who={who} x=1i"


@pytest.mark.parametrize("kind", ["influxdb-v1", "influxdb-v2", "pingcentre"])
def test_forked_child_writes_on_a_connection_of_its_own(peers: PeerRecorder, kind: str) -> None:
    """Parent writes, forks; the child's write comes from another client port, and the parent's
    next write still uses its own connection (the child closed nothing of the parent's)."""
    options = {"org": "o", "token": "t"} if kind == "influxdb-v2" else {}
    schema = "watchdog" if kind == "pingcentre" else "luna"
    settings = Settings.load({}, endpoint=peers.url, sink=kind, schema=schema, **options)
    writer = BatchWriter(
        load_sink(settings), MemorySpool(10**6), flush_interval=3600, batch_size=10
    )
    try:
        writer.submit([line_for(kind, "parent1")])
        assert writer.force_flush(10)

        def child() -> bool:
            writer.submit([line_for(kind, "child")])
            return writer.force_flush(10)

        assert in_child(child) == 0
        writer.submit([line_for(kind, "parent2")])
        assert writer.force_flush(10)
    finally:
        writer.shutdown(10)
    assert peers.port_of(b"child") != peers.port_of(b"parent1")
    assert peers.port_of(b"parent2") == peers.port_of(b"parent1")


def test_locks_held_at_fork_are_fresh_in_the_child(tmp_path: Path) -> None:
    """A fork while other threads hold the writer's, the file sink's and the dead-letter
    file's locks: the child still spools, writes and dead-letters (its locks are new), and
    never hangs."""
    target = tmp_path / "out.lp"
    sink = load_sink(Settings.load({}, endpoint=f"file://{target}"))
    assert isinstance(sink, FileSink)
    letters = DeadLetters(str(tmp_path / "dead.jsonl"))
    writer = BatchWriter(
        sink, MemorySpool(10**6), flush_interval=3600, batch_size=10, dead_letters=letters
    )
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        # as an export or the delivery thread might at fork time
        with writer._lock, sink._lock, letters._lock:
            held.set()
            release.wait(CHILD_TIMEOUT)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert held.wait(10)

    def child() -> bool:
        writer.submit(["m x=1i"])
        letters.write(b"m bad", "HTTP 400: test", 400)
        return writer.force_flush(10)

    try:
        assert in_child(child) == 0
    finally:
        release.set()
        holder.join(10)
        writer.shutdown(10)
    assert (tmp_path / "dead.jsonl").read_text().count("\n") == 1
    assert target.read_text() == "m x=1i\n"
