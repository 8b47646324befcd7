"""``otel-luna serve --workers N`` and the bounds of its gRPC front end.

End to end: ``--workers 2`` writing to a real InfluxDB 1.x while gRPC and HTTP clients keep
sending with retries, one worker killed with SIGKILL mid-run: every request acknowledged is in
InfluxDB at the end, the worker was restarted and counted, SIGTERM to the supervisor stops
every process. The supervisor's restart rate limit and start-up failure run with a stand-in
worker command. The gRPC bounds (calls in flight, read timeout, request bytes in flight, the
token checked before the body is read) run against a single serve. Liveness bounds only.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from google.rpc import error_details_pb2, status_pb2

from otel_luna.serve import ServeSettings
from otel_luna.serve import _workers as workers
from tests.support.servehelpers import (
    RPC_TIMEOUT,
    TRACE_EXPORT,
    VENV_BIN,
    Serve,
    grpc_call,
    serve_env,
    server_spans,
    stored_ids,
    trace_request,
)
from tests.support.servers import InfluxDB1
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow  # otel-luna serve --workers processes

PROTOBUF = {"Content-Type": "application/x-protobuf"}
#: Deadline for one request to be acknowledged, retries included.
SEND_DEADLINE = 60.0
_RETRIED = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNKNOWN,
}
_WORKERS_LINE = re.compile(r"^otel-luna serve: (\d+) workers \(pids ([\d, ]+)\)$", re.M)


@pytest.fixture
def database(influxdb1: InfluxDB1, influxdb1_database: str) -> str:
    return influxdb1_database


def worker_pids(serve: Serve) -> list[int]:
    """The pids of the ``N workers (pids ...)`` line, printed after the ports."""
    match = wait_until(lambda: _WORKERS_LINE.search(serve.output), bool, 10, "the workers line")
    assert match is not None
    return [int(pid) for pid in match[2].split(", ")]


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (zombies count as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def retry_delay(trailing: dict[str, Any]) -> float | None:
    """The RetryInfo delay in ``grpc-status-details-bin``, if there is one."""
    raw = trailing.get("grpc-status-details-bin")
    if raw is None:
        return None
    for detail in status_pb2.Status.FromString(raw).details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


class Clients:
    """Threads that send OTLP requests of 3 spans with unique request ids over gRPC (a channel,
    so a connection, each) and HTTP (a keep-alive session each) until stopped, resending a
    request until it is acknowledged, as OTLP exporters do. ``acked`` holds the ids of every
    acknowledged request; ``retries`` counts resends."""

    def __init__(self, serve: Serve, grpc_threads: int, http_threads: int) -> None:
        self.serve = serve
        self.acked: list[str] = []
        self.retries = {"grpc": 0, "http": 0}
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._grpc, daemon=True) for _ in range(grpc_threads)
        ] + [threading.Thread(target=self._http, daemon=True) for _ in range(http_threads)]
        for thread in self.threads:
            thread.start()

    def _ack(self, ids: list[str]) -> None:
        with self._lock:
            self.acked += ids

    def _grpc(self) -> None:
        # A connection of its own (channels of one process share them by default): the
        # kernel spreads connections over the workers.
        options = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(self.serve.grpc_target, options=options) as channel:
            call = channel.unary_unary(TRACE_EXPORT, request_serializer=None)
            while not self._stop.is_set():
                spans, ids = server_spans(3)
                body = trace_request(spans).SerializeToString()
                deadline = time.monotonic() + SEND_DEADLINE
                while True:
                    try:
                        call(body, timeout=RPC_TIMEOUT)
                    except grpc.RpcError as error:
                        if error.code() not in _RETRIED or time.monotonic() > deadline:
                            self.failures.append(f"grpc {error.code()}: {error.details()}")
                            return
                        with self._lock:
                            self.retries["grpc"] += 1
                        time.sleep(0.05)
                        continue
                    self._ack(ids)
                    break

    def _http(self) -> None:
        url = f"{self.serve.http_url}/v1/traces"
        with requests.Session() as session:
            while not self._stop.is_set():
                spans, ids = server_spans(3)
                body = trace_request(spans).SerializeToString()
                deadline = time.monotonic() + SEND_DEADLINE
                while True:
                    try:
                        answer = session.post(url, data=body, headers=PROTOBUF, timeout=10)
                    except requests.RequestException as error:  # the worker went away
                        outcome = repr(error)
                    else:
                        if answer.status_code == 200:
                            self._ack(ids)
                            break
                        outcome = f"{answer.status_code} {answer.content!r}"
                        if answer.status_code != 503:
                            self.failures.append(f"http {outcome}")
                            return
                    if time.monotonic() > deadline:
                        self.failures.append(f"http {outcome}")
                        return
                    with self._lock:
                        self.retries["http"] += 1
                    time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        for thread in self.threads:
            thread.join(timeout=SEND_DEADLINE + RPC_TIMEOUT)
            assert not thread.is_alive()


def pending_dirs(spool_root: Path) -> dict[int, int]:
    """Bytes of segment files per process directory (by pid) under the spool root."""
    found: dict[int, int] = {}
    for directory in spool_root.glob("*/*-*"):
        if directory.is_dir() and not directory.name.startswith("."):
            pid = int(directory.name.split("-")[0])
            found[pid] = sum(p.stat().st_size for p in directory.glob("*.seg"))
    return found


def test_killed_worker_loses_nothing_is_restarted_and_sigterm_stops_all(
    influxdb1: InfluxDB1, database: str, tmp_path: Path
) -> None:
    """--workers 2 into InfluxDB, gRPC and HTTP clients sending with retries; one worker that
    holds acknowledged, undelivered points (flush interval 60 s) is SIGKILLed. Its spool is
    adopted and delivered, it is restarted and counted (log, status), every acknowledged id is
    in InfluxDB after SIGTERM, and no process is left."""
    spool = tmp_path / "spool"
    env = serve_env(
        influxdb1.url,
        database,
        OTEL_EXPORTER_LUNA_FLUSH_INTERVAL="60",
        OTEL_EXPORTER_LUNA_BATCH_SIZE="1000000",
        OTEL_EXPORTER_LUNA_SPOOL_DIR=str(spool),
    )
    serve = Serve(env, "--workers", "2")
    clients: Clients | None = None
    try:
        first = worker_pids(serve)
        assert len(first) == 2 and all(alive(pid) for pid in first)
        clients = Clients(serve, grpc_threads=6, http_threads=2)
        # A worker with acknowledged points in its spool (none delivered: 60 s flush interval).
        with_data = wait_until(
            lambda: [pid for pid, size in pending_dirs(spool).items() if size and pid in first],
            bool,
            30,
            "a worker with spooled points",
        )
        time.sleep(1.0)
        victim = with_data[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: serve.output,
            lambda out: (
                f"(pid {victim}) was killed by SIGKILL" in out
                and re.search(r"worker \d restarted as pid \d+", out) is not None
            ),
            30,
            "the restart",
        )
        replacement = int(re.findall(r"worker \d restarted as pid (\d+)", serve.output)[0])
        acked_at_kill = len(clients.acked)
        wait_until(lambda: len(clients.acked), lambda n: n > acked_at_kill + 20, 30, "traffic")
        status = subprocess.run(
            [str(VENV_BIN / "otel-luna"), "status", str(spool)],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        assert f"serve supervisor {serve.pid}: running, 2 workers" in status, status
        assert "restarts: 1" in status and f"(pid {victim}) was killed by SIGKILL" in status
    finally:
        if clients is not None:
            clients.stop()
        code = serve.stop()
    assert code == 0, serve.output
    assert "otel-luna serve: stopped (2 workers, restarts: 1)" in serve.output, serve.output
    assert not clients.failures, clients.failures
    for pid in [*first, replacement]:
        assert not alive(pid), f"worker {pid} left behind"
    assert not list(spool.glob("serve-supervisor-*.json"))
    # The victim's spool was taken over by a living worker (its replacement, at its start).
    replayed = re.search(
        rf"otel-luna spool: replaying (\d+) lines left in \S+/{victim}-", serve.output
    )
    acked = clients.acked
    assert len(acked) > 50
    stored = set(stored_ids(influxdb1, database))
    missing = set(acked) - stored
    assert not missing, (
        f"{len(missing)} of {len(acked)} acknowledged ids not stored\n{serve.output}"
    )
    assert replayed and int(replayed[1]) > 0, serve.output
    logging.getLogger(__name__).info("retries after the kill: %s", clients.retries)


def test_sigterm_with_idle_workers_stops_everything(tmp_path: Path) -> None:
    """--workers 3 (file sink): answers on both ports, then SIGTERM: exit 0, every worker gone,
    the status file removed."""
    spool = tmp_path / "spool"
    env = {
        "OTEL_EXPORTER_LUNA_ENDPOINT": f"file://{tmp_path / 'points.lp'}",
        "OTEL_EXPORTER_LUNA_SPOOL_DIR": str(spool),
    }
    serve = Serve(env, "--workers", "3")
    try:
        pids = worker_pids(serve)
        assert len(pids) == 3
        assert [p.name for p in spool.glob("serve-supervisor-*.json")] == [
            f"serve-supervisor-{serve.pid}.json"
        ]
        spans, _ = server_spans(2)
        code, details, _, _ = grpc_call(serve.grpc_target, trace_request(spans).SerializeToString())
        assert code == grpc.StatusCode.OK, details
        answer = requests.post(
            f"{serve.http_url}/v1/traces",
            data=trace_request(spans).SerializeToString(),
            headers=PROTOBUF,
            timeout=10,
        )
        assert answer.status_code == 200
    finally:
        code = serve.stop()
    assert code == 0, serve.output
    assert "otel-luna serve: stopped (3 workers, restarts: 0)" in serve.output
    assert not any(alive(pid) for pid in pids)
    assert not list(spool.glob("serve-supervisor-*.json"))
    assert "Traceback" not in serve.output


# --------------------------------------------------------------------------- the supervisor

#: A stand-in worker: says ready on its pipe, then exits with the status in its env.
_FAKE_WORKER = (
    "import os, sys\n"
    "fd = int(sys.argv[sys.argv.index('--ready-fd') + 1])\n"
    "if os.environ.get('FAKE_READY') == '1':\n"
    "    os.write(fd, b'ready\\n')\n"
    "sys.exit(int(os.environ.get('FAKE_EXIT', '3')))\n"
)


def _supervisor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> Any:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = ServeSettings.load({}, spool_dir=str(tmp_path / "spool"))
    return workers.Supervisor(settings, {}, 2, argv=[sys.executable, "-c", _FAKE_WORKER])


def test_a_crash_loop_is_slowed_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Workers that die right after their start are restarted at once the first time, then
    after delays that double: in 5 s, a handful of restarts, not dozens."""
    supervisor = _supervisor(tmp_path, monkeypatch, FAKE_READY="1", FAKE_EXIT="3")
    caplog.set_level(logging.WARNING, logger=workers.__name__)
    try:
        supervisor.start()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            supervisor.check()
            time.sleep(0.05)
    finally:
        supervisor.stop()
    # Per worker: now, +1 s, +2 s (at ~3 s), +4 s (at ~7 s: not within 5 s).
    assert 4 <= supervisor.restarts <= 8, supervisor.restarts
    messages = [record.getMessage() for record in caplog.records]
    assert any("exited with status 3" in m and "restarting it now" in m for m in messages)
    assert any("restarting it in 2 s (3 quick failures in a row)" in m for m in messages)
    assert supervisor.last_exit is not None and supervisor.last_exit["returncode"] == 3
    assert all(w is None or w.popen.poll() is not None for w in supervisor.workers)


def test_a_worker_that_cannot_start_stops_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    supervisor = _supervisor(tmp_path, monkeypatch, FAKE_READY="0", FAKE_EXIT="1")
    with pytest.raises(RuntimeError, match=r"worker 0 \(pid \d+\) exited with status 1"):
        supervisor.start()
    assert all(w is None or w.popen.poll() is not None for w in supervisor.workers)


def test_worker_count_and_exit_descriptions() -> None:
    assert workers.worker_count(3) == 3
    assert workers.worker_count(0) == len(os.sched_getaffinity(0))
    assert workers.describe_exit(-9) == "was killed by SIGKILL"
    assert workers.describe_exit(2) == "exited with status 2"


def test_a_port_in_use_without_reuse_port_is_refused() -> None:
    """The supervisor's reservation fails loudly on a port another program holds."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        with pytest.raises(OSError):
            workers.reserve_port("127.0.0.1", holder.getsockname()[1])
    first = workers.reserve_port("127.0.0.1", 0)
    with first, workers.reserve_port("127.0.0.1", first.getsockname()[1]) as second:
        assert second.getsockname() == first.getsockname()


# --------------------------------------------------------------------------- gRPC bounds


class _Stalled:
    """A gRPC call that sends its headers and never its message (a request stream held open)."""

    def __init__(self, channel: grpc.Channel, metadata: Any = None) -> None:
        self._release = threading.Event()
        call = channel.stream_unary(TRACE_EXPORT, request_serializer=None)
        self.future = call.future(self._requests(), timeout=60, metadata=metadata)

    def _requests(self) -> Iterator[bytes]:
        self._release.wait(60)
        yield from ()

    def release(self) -> None:
        self._release.set()


def test_grpc_calls_over_the_cap_are_refused_with_retry_info_and_slow_ones_cancelled(
    tmp_path: Path,
) -> None:
    """SERVE_MAX_CONNECTIONS 2: two calls that never send their message fill it; a third is
    RESOURCE_EXHAUSTED with RetryInfo, a call without the token UNAUTHENTICATED; after the
    read timeout (1 s) the stalled calls are cancelled and a good call is OK again."""
    env = {
        "OTEL_EXPORTER_LUNA_ENDPOINT": f"file://{tmp_path / 'points.lp'}",
        "OTEL_EXPORTER_LUNA_SERVE_MAX_CONNECTIONS": "2",
        "OTEL_EXPORTER_LUNA_SERVE_READ_TIMEOUT": "1",
        "OTEL_EXPORTER_LUNA_SERVE_TOKEN": "secret",
    }
    good = [("authorization", "Bearer secret")]
    spans, _ = server_spans(2)
    body = trace_request(spans).SerializeToString()
    with Serve(env) as serve, grpc.insecure_channel(serve.grpc_target) as channel:
        stalled = [_Stalled(channel, good) for _ in range(2)]
        try:
            started = time.monotonic()
            time.sleep(0.3)  # their headers reach serve
            code, details, trailing, _ = grpc_call(serve.grpc_target, body, metadata=good)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
            assert retry_delay(trailing) == 1.0, trailing
            code, _, _, _ = grpc_call(serve.grpc_target, body)
            assert code == grpc.StatusCode.UNAUTHENTICATED
            for call in stalled:
                with pytest.raises(grpc.RpcError) as raised:
                    call.future.result(timeout=10)
                assert raised.value.code() == grpc.StatusCode.CANCELLED
            assert time.monotonic() - started < 8
        finally:
            for call in stalled:
                call.release()
        code, details, _, _ = grpc_call(serve.grpc_target, body, metadata=good)
        assert code == grpc.StatusCode.OK, details


def test_grpc_request_bytes_in_flight_are_capped(influxdb1: InfluxDB1, database: str) -> None:
    """SERVE_MAX_INFLIGHT_BYTES at its minimum: of 8 large requests sent at once, those
    arriving while another is decoded wait their turn (or, past protocol.DECODE_WAIT, get
    RESOURCE_EXHAUSTED with RetryInfo and are resent): every one is accepted and stored, and
    serve stays up."""
    env = serve_env(influxdb1.url, database, OTEL_EXPORTER_LUNA_SERVE_MAX_INFLIGHT_BYTES="1024")
    requests_ = [server_spans(1500) for _ in range(8)]
    bodies = [trace_request(spans).SerializeToString() for spans, _ in requests_]
    refused: list[float | None] = []
    errors: list[str] = []
    lock = threading.Lock()

    def send(target: str, body: bytes) -> None:
        deadline = time.monotonic() + SEND_DEADLINE
        while True:
            code, details, trailing, _ = grpc_call(target, body)
            if code == grpc.StatusCode.OK:
                return
            with lock:
                if code != grpc.StatusCode.RESOURCE_EXHAUSTED or "bytes in flight" not in details:
                    errors.append(f"{code}: {details}")
                    return
                refused.append(retry_delay(trailing))
            if time.monotonic() > deadline:
                errors.append("not accepted before the deadline")
                return
            time.sleep(0.05)

    with Serve(env) as serve:
        threads = [threading.Thread(target=send, args=(serve.grpc_target, b)) for b in bodies]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=SEND_DEADLINE + 10)
    assert not errors, errors
    assert set(refused) <= {1.0}, refused  # any refusal carries RetryInfo
    expected = {request_id for _, ids in requests_ for request_id in ids}
    assert set(stored_ids(influxdb1, database)) == expected
