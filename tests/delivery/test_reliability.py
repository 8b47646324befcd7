"""Reliability: outages, crashes, network faults, poisoned points, broken spools, short processes.

Every test talks to a real InfluxDB 1.x on 127.0.0.1. Apps run under ``opentelemetry-instrument``
with the luna exporter, as in production, and are stopped by the PID started here. Waiting for
a state is polling with a deadline; the only timed waits are the scenarios' own lengths (the
outage, :data:`OUTAGE_SECONDS`, and a little load around the faults).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import requests
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_luna import LunaSpanExporter, Settings
from otel_luna.delivery._memory_spool import MemorySpool
from otel_luna.delivery._writer import BACKOFF_MAX, BatchWriter, DeadLetters
from otel_luna.sinks._influx_v1 import InfluxV1Sink
from tests.support.faultproxy import PASS, RESET, FaultProxy, slow, status, throttle
from tests.support.servers import (
    InfluxDB1,
    ServerProcess,
    _set_parent_death_signal,
    http_request,
    start_influxdb1,
)
from tests.support.spoolhelpers import segment_bodies, use_disk
from tests.support.waiting import wait_until

#: How long InfluxDB is down in the outage test.
OUTAGE_SECONDS = 30.0
#: After InfluxDB is back, the exporter may sit out one more backoff (at most BACKOFF_MAX).
RECOVERY_TIMEOUT = BACKOFF_MAX + 20.0
#: Deadline for points to reach InfluxDB when nothing is failing any more.
DELIVERY_TIMEOUT = 30.0
APP_START_TIMEOUT = 60.0
APP_STOP_TIMEOUT = 60.0
#: Seconds between two requests of the steady load (20 requests/s).
LOAD_INTERVAL = 0.05
#: Write timeout of the app in the fault test; the slow fault is longer than this.
WRITE_TIMEOUT = 1.0

REL_APP = Path(__file__).parent.parent / "apps" / "rel_app.py"
VENV_BIN = Path(sys.executable).parent
ROUTE = "POST:/work"


# --------------------------------------------------------------------------- helpers


def app_env(endpoint: str, database: str, spool_dir: Path, **extra: str) -> dict[str, str]:
    """Environment of an instrumented app writing to ``endpoint`` through a disk spool."""
    return {
        "OTEL_TRACES_EXPORTER": "luna",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_SERVICE_NAME": "rel-app",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_EXPORTER_LUNA_ENDPOINT": endpoint,
        "OTEL_EXPORTER_LUNA_DATABASE": database,
        "OTEL_EXPORTER_LUNA_API_VERSION": "1",
        "OTEL_EXPORTER_LUNA_FLUSH_INTERVAL": "0.2",
        "OTEL_EXPORTER_LUNA_SPOOL": "disk",
        "OTEL_EXPORTER_LUNA_SPOOL_DIR": str(spool_dir),
        **extra,
    }


class App:
    """An app under ``opentelemetry-instrument``; its output (stdout and stderr) is kept.

    The app must print ``listening on URL``. Stopped by its PID: :meth:`stop` sends SIGTERM (the
    SDK then shuts the exporter down), :meth:`kill` SIGKILL; leaving the ``with`` block stops it
    if it still runs.
    """

    def __init__(self, script: Path, env: dict[str, str]) -> None:
        self.script = script
        command = [str(VENV_BIN / "opentelemetry-instrument"), sys.executable, str(script)]
        self.popen = subprocess.Popen(
            command,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=_set_parent_death_signal if sys.platform == "linux" else None,
        )
        self._lines: list[str] = []
        self._listening = threading.Event()
        self.url = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + APP_START_TIMEOUT
        while not self._listening.wait(0.05):
            if self.popen.poll() is not None or time.monotonic() >= deadline:
                self._halt(signal.SIGKILL)
                raise AssertionError(f"{script.name} did not start:\n{self.output}")

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._lines.append(line)
            if line.startswith("listening on ") and not self.url:
                self.url = line.split()[-1]
                self._listening.set()

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def output(self) -> str:
        return "".join(self._lines)

    def _halt(self, signum: int) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signum)
        try:
            code = self.popen.wait(timeout=APP_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(f"{self.script.name} did not stop:\n{self.output}") from None
        self._reader.join(timeout=10)
        return code

    def stop(self) -> int:
        """SIGTERM, wait; the exit status."""
        return self._halt(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL, wait."""
        self._halt(signal.SIGKILL)

    def __enter__(self) -> App:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.popen.poll() is None:
            self._halt(signal.SIGTERM if exc_type is None else signal.SIGKILL)


class Load:
    """Steady load from a thread: ``POST /work`` with a fresh ``X-Request-Id`` every interval."""

    def __init__(self, base_url: str, interval: float = LOAD_INTERVAL) -> None:
        self._url = f"{base_url}/work"
        self._interval = interval
        self._sent: list[str] = []
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.wait(self._interval):
                request_id = uuid.uuid4().hex
                try:
                    response = session.post(
                        self._url, headers={"X-Request-Id": request_id}, timeout=10
                    )
                except requests.RequestException as error:
                    self.failures.append(f"{request_id}: {error!r}")
                    continue
                if response.status_code != 200:
                    self.failures.append(f"{request_id}: HTTP {response.status_code}")
                    continue
                with self._lock:
                    self._sent.append(request_id)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._sent)

    def run_for(self, seconds: float) -> None:
        """Let the load run ``seconds`` (the scenario's length), failing early if it breaks."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert not self.failures, self.failures[:5]
            self._stop.wait(min(0.1, max(0.0, deadline - time.monotonic())))

    def stop(self) -> list[str]:
        """Stop; the ids of every request the app answered 200."""
        self._stop.set()
        self._thread.join(timeout=30)
        assert not self.failures, self.failures[:5]
        with self._lock:
            return list(self._sent)

    def __enter__(self) -> Load:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def send(base_url: str, count: int) -> list[str]:
    """``count`` requests one after the other; their ids."""
    ids = []
    with requests.Session() as session:
        for _ in range(count):
            request_id = uuid.uuid4().hex
            response = session.post(
                f"{base_url}/work", headers={"X-Request-Id": request_id}, timeout=10
            )
            assert response.status_code == 200, response.text
            ids.append(request_id)
    return ids


def stored_ids(influx: InfluxDB1, database: str) -> list[str]:
    """``request_id`` of every ``requests`` point, duplicates kept."""
    return [row["request_id"] for row in influx.select("SELECT * FROM requests", database)]


def wait_for_ids(
    influx: InfluxDB1, database: str, expected: list[str], timeout: float = DELIVERY_TIMEOUT
) -> list[str]:
    """Poll until InfluxDB holds a point for each of ``expected``; return what it holds."""
    wanted = set(expected)
    return wait_until(
        lambda: stored_ids(influx, database),
        lambda ids: wanted <= set(ids),
        timeout,
        f"{len(wanted)} request ids in {database}",
    )


_REQUEST_ID = re.compile(rb'request_id="([^"]*)"')


def spooled_ids(spool_dir: Path) -> list[str]:
    """Request ids in the disk spool's segment files (acknowledged records included)."""
    bodies = segment_bodies(spool_dir)
    return [match.decode() for body in bodies for match in _REQUEST_ID.findall(body)]


def restart_influxdb1(server: InfluxDB1) -> None:
    """Start a stopped ``influxd`` again: same config file, so same ports and same data."""
    assert not server.process.running()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFLUXDB_")}
    server.process = ServerProcess("influxd", server.process.argv, server.root, env=env)
    server.process.wait_ready(lambda: http_request("GET", f"{server.url}/ping")[0] == 204)


def server_spans(count: int, **attributes: Any) -> list[ReadableSpan]:
    """``count`` finished SERVER spans of ``POST /work`` recorded through the SDK."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "rel"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("rel")
    for _ in range(count):
        span_attributes = {
            "http.method": "POST",
            "http.route": "/work",
            "http.status_code": 200,
            "luna.request_id": uuid.uuid4().hex,
            **attributes,
        }
        with tracer.start_as_current_span(
            "POST /work", kind=trace.SpanKind.SERVER, attributes=span_attributes
        ):
            pass
    provider.shutdown()
    return list(memory.get_finished_spans())


def request_id_of(span: ReadableSpan) -> str:
    assert span.attributes is not None
    return str(span.attributes["luna.request_id"])


def direct_exporter(influx_url: str, database: str, tmp_path: Path, **settings: Any) -> Any:
    options: dict[str, Any] = {
        "endpoint": influx_url,
        "database": database,
        "api_version": "1",
        "flush_interval": 0.1,
        "dead_letter": str(tmp_path / "dead.jsonl"),
        "spool_dir": str(tmp_path / "spool"),
        **settings,
    }
    return LunaSpanExporter(Settings.load({}, **options))


def ids_in(line: str) -> str:
    """The request id of one line-protocol line."""
    match = _REQUEST_ID.search(line.encode())
    assert match is not None, line
    return match[1].decode()


def dead_letters(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


class _FailingOs:
    """``os`` for the spool modules whose ``write`` (and optionally ``replace``) fail
    with ENOSPC, as on a full disk; everything else is the real ``os``."""

    def __init__(self, writes_before_full: int, *, ack_fails_too: bool = False) -> None:
        self.writes_left = writes_before_full
        self.ack_fails_too = ack_fails_too
        self.full = False

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: bytes) -> int:
        if self.writes_left <= 0:
            self.full = True
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.writes_left -= 1
        return os.write(fd, data)

    def replace(self, source: Any, target: Any, **dir_fds: Any) -> None:
        if self.full and self.ack_fails_too:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.replace(source, target, **dir_fds)


@pytest.fixture
def own_influxdb1(tmp_path: Path) -> Iterator[InfluxDB1]:
    """An InfluxDB 1.x of this test alone, so it can be stopped and restarted."""
    server = start_influxdb1(tmp_path / "influxdb")
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- apps


def test_influxdb_outage_loses_no_point(own_influxdb1: InfluxDB1, tmp_path: Path) -> None:
    """InfluxDB down for OUTAGE_SECONDS under steady load: every request's point arrives after."""
    influx = own_influxdb1
    database = influx.fresh_database("outage")
    env = app_env(influx.url, database, tmp_path / "spool")
    with App(REL_APP, env) as app, Load(app.url) as load:
        wait_until(lambda: len(stored_ids(influx, database)), lambda n: n >= 10, 30, "first points")
        influx.stop()
        before = load.count
        load.run_for(OUTAGE_SECONDS)
        during = load.count - before
        restart_influxdb1(influx)
        load.run_for(1.0)
        sent = load.stop()
        assert during >= OUTAGE_SECONDS / LOAD_INTERVAL / 4  # the app kept serving
        stored = wait_for_ids(influx, database, sent, RECOVERY_TIMEOUT)
        code = app.stop()
    assert code == 0, app.output
    assert sorted(stored) == sorted(sent)  # each exactly once: replays overwrite


def test_sigkill_with_spooled_points_replays_them_after_restart(
    influxdb1: InfluxDB1, influxdb1_database: str, tmp_path: Path
) -> None:
    """Points in the disk spool when the app is SIGKILLed are delivered by its next start."""
    spool_dir = tmp_path / "spool"
    with FaultProxy(influxdb1.url, default=status(503)) as proxy:
        env = app_env(proxy.url, influxdb1_database, spool_dir)
        with App(REL_APP, env) as app:
            sent = send(app.url, 40)
            wait_until(
                lambda: sorted(spooled_ids(spool_dir)),
                lambda ids: ids == sorted(sent),
                DELIVERY_TIMEOUT,
                "every request spooled",
            )
            wait_until(lambda: proxy.faults["503"], lambda n: n > 0, 10, "a write attempt")
            app.kill()
        assert stored_ids(influxdb1, influxdb1_database) == []
        proxy.default = PASS
        with App(REL_APP, env) as again:
            stored = wait_for_ids(influxdb1, influxdb1_database, sent)
            code = again.stop()
    assert code == 0, again.output
    assert sorted(stored) == sorted(sent)
    assert spooled_ids(spool_dir) == []  # replayed records are gone from the disk


FAULTS = (status(500), throttle(retry_after=1), RESET, slow(WRITE_TIMEOUT + 1.0))


def test_http_faults_are_retried_until_everything_is_delivered(
    influxdb1: InfluxDB1, influxdb1_database: str, tmp_path: Path
) -> None:
    """500, 429 with Retry-After, a reset and a write slower than the timeout: all delivered."""
    with FaultProxy(influxdb1.url) as proxy:
        proxy.script(*FAULTS)
        env = app_env(
            proxy.url,
            influxdb1_database,
            tmp_path / "spool",
            OTEL_EXPORTER_LUNA_TIMEOUT=str(WRITE_TIMEOUT),
        )
        with App(REL_APP, env) as app, Load(app.url) as load:
            wait_until(lambda: proxy.scripted, lambda n: n == 0, 60, "every fault injected")
            load.run_for(0.5)
            sent = load.stop()
            stored = wait_for_ids(influxdb1, influxdb1_database, sent)
            forwarded_late = wait_until(
                proxy.records,
                lambda records: any(r.fault == "slow" and r.status == 204 for r in records),
                10,
                "the slow write forwarded to InfluxDB",
            )
            code = app.stop()
        records = sorted(forwarded_late, key=lambda record: record.time)
    assert code == 0, app.output
    assert proxy.faults == Counter(fault.name for fault in FAULTS)
    assert sorted(stored) == sorted(sent)  # the slow batch was written twice: one point each
    throttled = next(i for i, record in enumerate(records) if record.fault == "429")
    assert records[throttled + 1].time - records[throttled].time >= 1.0  # Retry-After: 1
    retried = sum(int(n) for n in re.findall(r"\bretried=(\d+)", app.output))
    assert retried >= len(FAULTS), app.output


# --------------------------------------------------------------------------- poisoned points


def test_type_conflicts_are_dead_lettered_and_good_points_land(
    influxdb1: InfluxDB1, influxdb1_database: str, tmp_path: Path
) -> None:
    """In a batch mixing good points and type conflicts, good ones land, bad ones dead-letter."""
    database = influxdb1_database
    influxdb1.write(
        f'requests,route={ROUTE},service=rel,status_code=200 request_id="seed",count=1.5 '
        f"{time.time_ns()}",
        database,
    )
    good = server_spans(12) + server_spans(4, **{"luna.field.count": 2.5})  # no integer: dropped
    good += server_spans(2, **{"luna.field.score_seconds": float("nan")})  # invalid: dropped
    # integer (count's one type) where InfluxDB has a float: a shard written before the type rule
    bad = server_spans(5, **{"luna.field.count": 3})
    mixed = list(good)
    for position, span in zip(range(1, 4 * len(bad), 4), bad, strict=False):
        mixed.insert(position, span)
    exporter = direct_exporter(influxdb1.url, database, tmp_path)
    try:
        assert exporter.export(mixed).name == "SUCCESS"  # one batch
        assert exporter.force_flush(DELIVERY_TIMEOUT * 1000)
        counts = exporter.counts
    finally:
        exporter.shutdown()
    assert sorted(stored_ids(influxdb1, database)) == sorted(
        ["seed", *(request_id_of(span) for span in good)]
    )
    letters = dead_letters(tmp_path / "dead.jsonl")
    assert sorted(ids_in(r["line"]) for r in letters) == sorted(map(request_id_of, bad))
    assert all(r["status"] == 400 and "field type conflict" in r["reason"] for r in letters)
    assert counts["dead_lettered"] == len(bad) and counts["split_writes"] > 0
    assert counts["nonfinite_field"] == 2


def test_unparsable_line_is_dead_lettered_and_good_lines_land(
    influxdb1: InfluxDB1, influxdb1_database: str, tmp_path: Path
) -> None:
    """A garbage line in a body to real InfluxDB 1.x: good lines land, the garbage dead-letters."""
    garbage = "this is not line protocol"
    now = time.time_ns()
    lines = [f"rel,case=parse x={index}i {now + index}" for index in range(20)]
    lines.insert(7, garbage)
    settings = Settings.load({}, endpoint=influxdb1.url, database=influxdb1_database)
    writer = BatchWriter(
        InfluxV1Sink(settings),
        MemorySpool(10**8),
        flush_interval=3600,
        batch_size=1000,
        dead_letters=DeadLetters(str(tmp_path / "dead.jsonl")),
    )
    try:
        writer.submit(lines)
        assert writer.force_flush(DELIVERY_TIMEOUT)
        counts = writer.all_counts()
    finally:
        writer.shutdown(10)
    rows = influxdb1.select("SELECT x FROM rel", influxdb1_database)
    assert sorted(row["x"] for row in rows) == list(range(20))
    (letter,) = dead_letters(tmp_path / "dead.jsonl")
    assert letter["line"] == garbage
    assert letter["status"] == 400 and "unable to parse" in letter["reason"]
    assert counts["dead_lettered"] == 1 and counts["split_writes"] > 0


# --------------------------------------------------------------------------- broken spools


def test_unusable_spool_directory_falls_back_to_memory(
    influxdb1: InfluxDB1,
    influxdb1_database: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A spool directory that cannot be created: a warning, a memory spool, points delivered."""
    not_a_directory = tmp_path / "afile"
    not_a_directory.write_text("")
    with caplog.at_level(logging.WARNING, logger="otel_luna"):
        exporter = direct_exporter(
            influxdb1.url, influxdb1_database, tmp_path, spool_dir=str(not_a_directory / "spool")
        )
    try:
        assert exporter.counts["spool_fallback_memory"] == 1
        assert any(
            str(not_a_directory) in record.getMessage() and "memory" in record.getMessage()
            for record in caplog.records
        ), caplog.text
        spans = server_spans(10)
        assert exporter.export(spans).name == "SUCCESS"
        assert exporter.force_flush(DELIVERY_TIMEOUT * 1000)
    finally:
        exporter.shutdown()
    assert sorted(stored_ids(influxdb1, influxdb1_database)) == sorted(map(request_id_of, spans))


def test_spool_that_fills_up_midway_keeps_points_flowing_in_memory(
    influxdb1: InfluxDB1,
    influxdb1_database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Appends failing with ENOSPC mid-way: no error reaches the caller, every point delivered."""
    failing = _FailingOs(writes_before_full=4)
    use_disk(monkeypatch, failing)
    exporter = direct_exporter(influxdb1.url, influxdb1_database, tmp_path, flush_interval=3600)
    spans = server_spans(10)
    try:
        with caplog.at_level(logging.WARNING, logger="otel_luna"):
            results = [exporter.export([span]).name for span in spans]  # one append each
        assert results == ["SUCCESS"] * len(spans)
        assert failing.full
        assert exporter.force_flush(DELIVERY_TIMEOUT * 1000)
        assert exporter.counts["spool_fallback_memory"] == 1
        assert "keeping points in memory" in caplog.text
    finally:
        exporter.shutdown()
    assert sorted(stored_ids(influxdb1, influxdb1_database)) == sorted(map(request_id_of, spans))


def test_full_disk_that_also_fails_the_ack_file_keeps_points_flowing(
    influxdb1: InfluxDB1, influxdb1_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a full disk (appends and the ack file fail) points still flow through memory."""
    use_disk(monkeypatch, _FailingOs(writes_before_full=2, ack_fails_too=True))
    exporter = direct_exporter(influxdb1.url, influxdb1_database, tmp_path, flush_interval=3600)
    spans = server_spans(6)
    try:
        assert [exporter.export([span]).name for span in spans] == ["SUCCESS"] * len(spans)
        assert exporter.force_flush(5_000)
    finally:
        exporter.shutdown()
    assert sorted(stored_ids(influxdb1, influxdb1_database)) == sorted(map(request_id_of, spans))


# --------------------------------------------------------------------------- retry discipline


def test_retry_after_holds_while_a_full_batch_waits(
    influxdb1: InfluxDB1, influxdb1_database: str, tmp_path: Path
) -> None:
    """A 429 with Retry-After: 2 is honoured even when new spans fill a batch meanwhile."""
    with FaultProxy(influxdb1.url) as proxy:
        proxy.script(throttle(retry_after=2))
        exporter = direct_exporter(proxy.url, influxdb1_database, tmp_path, batch_size=5)
        spans = server_spans(6)
        try:
            exporter.export(spans[:5])  # a full batch: written at once, answered 429
            wait_until(lambda: proxy.requests, lambda n: n >= 1, 10, "the first write")
            exporter.export(spans[5:])  # one more span while the exporter should be waiting
            wait_until(lambda: proxy.requests, lambda n: n >= 2, 10, "the retry")
            assert exporter.force_flush(DELIVERY_TIMEOUT * 1000)
        finally:
            exporter.shutdown()
        first, retry = sorted(proxy.records(), key=lambda record: record.time)[:2]
    assert sorted(stored_ids(influxdb1, influxdb1_database)) == sorted(map(request_id_of, spans))
    assert retry.time - first.time >= 2.0


# --------------------------------------------------------------------------- exit


def test_short_script_that_exits_at_once_delivers_every_point(
    influxdb1: InfluxDB1, influxdb1_database: str, tmp_path: Path
) -> None:
    """A script that records requests and exits at once has every point in InfluxDB 1.x."""
    script = textwrap.dedent(
        """
        import sys
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from otel_luna import LunaSpanExporter, set_request_id
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(LunaSpanExporter()))
        tracer = provider.get_tracer("short")
        attributes = {"http.method": "POST", "http.route": "/work", "http.status_code": 200}
        for request_id in sys.argv[1:]:
            with tracer.start_as_current_span("r", kind=trace.SpanKind.SERVER,
                                              attributes=attributes):
                set_request_id(request_id)
        """
    )
    spool_dir = tmp_path / "spool"
    env = {
        **os.environ,
        **app_env(influxdb1.url, influxdb1_database, spool_dir),
        "OTEL_EXPORTER_LUNA_FLUSH_INTERVAL": "3600",  # only the exit delivers
    }
    ids = [uuid.uuid4().hex for _ in range(25)]
    subprocess.run([sys.executable, "-c", script, *ids], env=env, check=True, timeout=60)
    assert sorted(stored_ids(influxdb1, influxdb1_database)) == sorted(ids)
    assert any(spool_dir.iterdir())  # the disk spool was used
    assert spooled_ids(spool_dir) == []
