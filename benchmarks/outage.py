"""An InfluxDB outage under load: the instrumented process's memory, the disk spool, the drain.

    .venv/bin/python benchmarks/outage.py [--outage 300] [--rate 2000] [--json]
        [--warmup 10] [--after 10] [--drain-timeout SECONDS] [--keep]

Targets (issue 4, "Benchmarks"): during a 5-minute outage at 2,000 spans/s the instrumented
process's RSS stays <= 150 MB while the disk spool grows; after recovery the backlog drains at
>= 5x the ingest rate.

What it does, all on 127.0.0.1 in a temporary directory:

1. starts a real InfluxDB 1.x (``influxd`` from Debian) on two ports it picks, creates the
   database;
2. starts the *instrumented process*: a child Python process (this file, ``--child``) with a
   TracerProvider, a BatchSpanProcessor (the SDK's defaults: 512 spans per batch, 5 s delay,
   2048 queued) and ``LunaSpanExporter(Settings.load({}, endpoint=..., database=...,
   spool="disk", spool_dir=..., flush_interval=1))`` — every other setting at its default
   (batch_size 5000 lines, spool_max_bytes 512 MiB). It emits SERVER spans at a steady
   ``--rate`` (paced against the clock), the realistic spans of ``exporter_overhead.py`` (15
   attributes, 10 % failed) each with a unique ``luna.request_id``;
3. lets it run ``--warmup`` seconds with the database up, then stops ``influxd`` (SIGTERM) and
   holds its HTTP port bound (not listening: connections are refused, nobody else takes it) for
   ``--outage`` seconds;
4. restarts ``influxd`` with the same config, data and port, and measures the drain until the
   spool holds less than one write (``batch_size`` lines): from the moment InfluxDB answers
   ``/ping`` and from the first successful write (the writer backs off exponentially up to 30 s
   while the database is down, so the first write after recovery may come up to ~30 s late);
5. runs ``--after`` seconds more in steady state, stops the child with SIGTERM (it stops
   emitting, shuts the TracerProvider down, which flushes the exporter), and checks that InfluxDB
   holds every request id the child emitted (``count(request_id)`` of ``requests`` and
   ``errors``) and that nothing was dropped or dead-lettered.

Sampled once a second by the parent: the child's RSS (``VmRSS`` in ``/proc/<pid>/status``;
``VmHWM``, the kernel's high-water mark, catches peaks between samples), the bytes under the spool
directory, and the child's own report (spans emitted, lines pending in the spool, the exporter's
counters). ``describe()`` (the spool) (what ``otel-luna status --json`` prints) is read
at the end of the outage, when drained and at the end, as a cross-check of the pending lines. The
child wraps the sink and the spool's ``read``/``ack`` in timers (pass-through, per batch) so that a
slow drain can be explained: time in HTTP writes to InfluxDB, in reading the spool, in
acknowledging, and the rest.

Rates: ingest = spans/s achieved x lines per span (``requests`` + ``errors`` lines / spans).
Drain rate = backlog lines (pending when InfluxDB is back) / drain seconds; the gross write rate
(all lines written during the drain, the backlog and what arrived meanwhile) is reported too.
Exit status is 0 whatever the figures (1 only if the run itself broke). Every process started
is stopped by its PID, also on Ctrl-C and errors; both also get SIGTERM from the kernel if this
script dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
DATABASE = "luna_outage"
RSS_TARGET_MB = 150.0
DRAIN_TARGET = 5.0
MiB = 1024 * 1024

INFLUXDB_CONFIG = """\
reporting-enabled = false
bind-address = "{host}:{rpc_port}"

[meta]
  dir = "{root}/meta"
  retention-autocreate = true
  logging-enabled = false

[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  wal-fsync-delay = "0s"
  query-log-enabled = false

[monitor]
  store-enabled = false

[continuous_queries]
  enabled = false

[subscriber]
  enabled = false

[http]
  enabled = true
  bind-address = "{host}:{http_port}"
  auth-enabled = false
  log-enabled = false
  pprof-enabled = false
  unix-socket-enabled = false
  https-enabled = false

[logging]
  level = "warn"
  suppress-logo = true
"""


# =========================================================================== the child process


class ProbeSink:
    """Pass-through around the real sink: times every write, remembers failures and recovery."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        #: Lines pending in the spool (set once the spool exists); the pending count after a
        #: write is this minus the lines just written (the writer acks right after the write).
        self.pending: Callable[[], int] = lambda: 0
        self.format = getattr(inner, "format", "line-protocol")
        self.lock = threading.Lock()
        self.ok = self.failed = 0
        self.ok_seconds = self.failed_seconds = 0.0
        self.ok_lines = self.ok_bytes = 0
        self.failing_since: float | None = None  # monotonic time of the first failure in a row
        self.last_failure: float | None = None
        self.last_error = ""
        self.recoveries: list[dict[str, Any]] = []  # first success after each run of failures
        #: (start, seconds, lines, ok, lines pending once this write is acked)
        self.writes: list[tuple[float, float, int, bool, int]] = []

    def write(self, body: bytes) -> None:
        begin = time.monotonic()
        try:
            self.inner.write(body)
        except BaseException as error:
            end = time.monotonic()
            with self.lock:
                self.failed += 1
                self.failed_seconds += end - begin
                if self.failing_since is None:
                    self.failing_since = begin
                self.last_failure = begin
                self.last_error = f"{type(error).__name__}: {error}"[:300]
                self.writes.append((begin, end - begin, body.count(b"\n"), False, -1))
            raise
        end = time.monotonic()
        lines = body.count(b"\n")
        pending_after = self.pending() - lines
        with self.lock:
            self.ok += 1
            self.ok_seconds += end - begin
            self.ok_lines += lines
            self.ok_bytes += len(body)
            self.writes.append((begin, end - begin, lines, True, pending_after))
            if self.failing_since is not None:
                self.recoveries.append(
                    {
                        "failing_since": self.failing_since,
                        "last_failed_attempt": self.last_failure,
                        "first_ok_start": begin,
                        "first_ok_end": end,
                        "last_error": self.last_error,
                    }
                )
                self.failing_since = None

    def close(self) -> None:
        self.inner.close()

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "ok": self.ok,
                "failed": self.failed,
                "ok_seconds": self.ok_seconds,
                "failed_seconds": self.failed_seconds,
                "ok_lines": self.ok_lines,
                "ok_bytes": self.ok_bytes,
                "failing_since": self.failing_since,
                "last_error": self.last_error,
                "recoveries": list(self.recoveries),
            }


class SpoolProbe:
    """Times ``read`` and ``ack`` of the writer's spool (instance attributes shadow the methods;
    nothing in otel_luna changes). Also notes how many bytes each read takes from its segment
    file: ``SegmentLog.read`` (``otel_luna.delivery._segments``) reads from the read position
    to the end of the segment."""

    def __init__(self, spool: Any) -> None:
        self.spool = spool
        self.reads = self.acks = 0
        self.read_seconds = self.ack_seconds = 0.0
        self.read_batch_bytes = self.read_batch_lines = 0
        self.read_file_bytes = 0
        self._read, self._ack = spool.read, spool.ack
        spool.read, spool.ack = self.read, self.ack

    def _own_log(self) -> Any:
        disk = getattr(self.spool, "disk", self.spool)
        return getattr(disk, "_own", None)

    def read(self, max_lines: int) -> Any:
        log = self._own_log()
        to_read = 0
        with contextlib.suppress(Exception):
            adopted = getattr(getattr(self.spool, "disk", self.spool), "_adopted", [])
            if log is not None and not adopted:
                to_read = log._sizes.get(log.read_segment, 0) - log.read_offset
        begin = time.monotonic()
        batch = self._read(max_lines)
        self.read_seconds += time.monotonic() - begin
        self.reads += 1
        if batch is not None:
            self.read_batch_bytes += len(batch.body)
            self.read_batch_lines += batch.lines
            self.read_file_bytes += max(0, to_read)
        return batch

    def ack(self, token: Any) -> None:
        begin = time.monotonic()
        self._ack(token)
        self.ack_seconds += time.monotonic() - begin
        self.acks += 1

    def stats(self) -> dict[str, Any]:
        return {
            "reads": self.reads,
            "read_seconds": self.read_seconds,
            "read_batch_bytes": self.read_batch_bytes,
            "read_batch_lines": self.read_batch_lines,
            "read_file_bytes": self.read_file_bytes,
            "acks": self.acks,
            "ack_seconds": self.ack_seconds,
        }


def child_main(config_path: str) -> int:
    """The instrumented process: emits paced SERVER spans until SIGTERM, then shuts down."""
    import logging

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from exporter_overhead import requests
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import SpanKind, StatusCode

    from otel_luna._exporter import LunaSpanExporter
    from otel_luna.settings import Settings
    from otel_luna.sinks import load_sink

    config = json.loads(Path(config_path).read_text())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    class QueueFull(logging.Handler):  # BatchSpanProcessor logs each span it drops
        dropped = 0

        def emit(self, record: logging.LogRecord) -> None:
            if "Queue full" in record.getMessage():
                QueueFull.dropped += 1

    logging.basicConfig(level=logging.WARNING, format="child %(levelname)s %(name)s: %(message)s")
    logging.getLogger("opentelemetry").addHandler(QueueFull())

    settings = Settings.load(
        {},
        endpoint=config["endpoint"],
        database=config["database"],
        spool="disk",
        spool_dir=config["spool_dir"],
        dead_letter=config["dead_letter"],
        flush_interval=config["flush_interval"],
    )
    sink = ProbeSink(load_sink(settings))
    exporter = LunaSpanExporter(settings, sink=sink)
    writer = exporter._ingest.delivery
    assert writer is not None
    probe = SpoolProbe(writer.spool)
    sink.pending = lambda: writer.queued
    provider = TracerProvider(
        resource=Resource.create({"service.name": "luna-handlers"}), shutdown_on_exit=False
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("otel-luna-outage-benchmark")
    templates = requests(997, seed=config["seed"], error_share=0.1, semconv="default")
    run_id = config["run_id"]
    rate = float(config["rate"])
    progress_path = Path(config["progress"])
    state = {"emitted": 0, "errors": 0, "started": time.monotonic(), "stopped": None}

    def counts() -> dict[str, int]:
        for _ in range(10):
            try:
                return {k: v for k, v in exporter.counts.items() if v}
            except RuntimeError:  # a counter changed size while summed; try again
                time.sleep(0.001)
        return {}

    def report(done: bool = False, extra: dict[str, Any] | None = None) -> None:
        data = {
            "pid": os.getpid(),
            "mono": time.monotonic(),
            "started": state["started"],
            "stopped": state["stopped"],
            "emitted": state["emitted"],
            "errors_emitted": state["errors"],
            "pending_lines": writer.queued,
            "pending_bytes": writer.spool.pending_bytes,
            "counts": counts(),
            "bsp_dropped": QueueFull.dropped,
            "sink": sink.stats(),
            "spool": probe.stats(),
            "spool_class": type(writer.spool).__name__,
            "spool_directory": str(getattr(getattr(writer.spool, "disk", None), "directory", "")),
            "done": done,
            **(extra or {}),
        }
        if done:
            data["writes"] = list(sink.writes)
        temporary = progress_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(data))
        os.replace(temporary, progress_path)

    def reporter() -> None:
        while not stop.wait(config["report_interval"]):
            with contextlib.suppress(Exception):
                report()

    threading.Thread(target=reporter, name="outage-reporter", daemon=True).start()
    report()

    start_span = tracer.start_span
    server = SpanKind.SERVER
    error = StatusCode.ERROR
    started = state["started"] = time.monotonic()
    i = 0
    n_templates = len(templates)
    while not stop.is_set():
        due = int((time.monotonic() - started) * rate)
        while i < due:
            r = templates[i % n_templates]
            span = start_span(r.name, kind=server, attributes=r.start_attributes)
            span.set_attribute("luna.request_id", f"{run_id}-{i:09d}")
            status = 0
            for key, value in r.later_attributes:
                span.set_attribute(key, value)
                if key == "http.status_code":
                    status = value
            span.set_status(r.status)
            span.end()
            i += 1
            state["emitted"] = i
            if status >= 400 or r.status.status_code is error:
                state["errors"] += 1
        # sleep until about 10 more spans are due (5 ms at 2,000/s)
        time.sleep(max(0.0, started + (i + 10) / rate - time.monotonic()))
    state["stopped"] = time.monotonic()
    begin = time.monotonic()
    provider.shutdown()  # BatchSpanProcessor flushes, then LunaSpanExporter.shutdown() delivers
    shutdown_seconds = time.monotonic() - begin
    report(done=True, extra={"shutdown_seconds": shutdown_seconds})
    return 0


# =========================================================================== the parent


def _pdeathsig() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


def free_port(avoid: tuple[int, ...] = ()) -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if port not in avoid:
            return port


def http(
    method: str, url: str, data: bytes | None = None, timeout: float = 30.0
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


def stop_process(popen: subprocess.Popen[bytes], timeout: float) -> int | None:
    """SIGTERM by PID, wait, SIGKILL on timeout; the exit status."""
    if popen.poll() is None:
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(timeout=timeout)
    return popen.returncode


class Influxd:
    """``influxd`` on fixed ports in ``root``; can be stopped and started again on the same
    ports and data. While down, the HTTP port is held bound (not listening)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.http_port = free_port()
        self.rpc_port = free_port(avoid=(self.http_port,))
        self.url = f"http://{HOST}:{self.http_port}"
        self.config = root / "influxdb.conf"
        self.config.write_text(
            INFLUXDB_CONFIG.format(
                host=HOST, rpc_port=self.rpc_port, http_port=self.http_port, root=root
            )
        )
        self.log = root / "influxd.log"
        self.popen: subprocess.Popen[bytes] | None = None
        self.version: str | None = None
        self._hold: socket.socket | None = None
        binary = shutil.which("influxd")
        if binary is None:
            raise RuntimeError("influxd is not on PATH (apt-get install influxdb)")
        self.binary = binary

    def start(self, timeout: float = 30.0) -> float:
        """Start and wait for ``/ping``; the monotonic time it answered."""
        self.release()
        env = {k: v for k, v in os.environ.items() if not k.startswith("INFLUXDB_")}
        with open(self.log, "ab") as log:
            self.popen = subprocess.Popen(
                [self.binary, "-config", str(self.config)],
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_pdeathsig,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.popen.poll() is not None:
                raise RuntimeError(f"influxd exited with {self.popen.returncode}; see {self.log}")
            with contextlib.suppress(OSError):
                request = urllib.request.Request(f"{self.url}/ping")
                with urllib.request.urlopen(request, timeout=1.0) as response:
                    if response.status == 204:
                        self.version = response.headers.get("X-Influxdb-Version")
                        return time.monotonic()
            if time.monotonic() > deadline:
                raise RuntimeError(f"influxd not ready after {timeout} s; see {self.log}")
            time.sleep(0.01)

    def stop(self) -> None:
        if self.popen is not None:
            stop_process(self.popen, 15.0)
            self.popen = None

    def hold_port(self) -> bool:
        """Keep the HTTP port bound without listening: connections are refused, and nobody
        else can take the port before influxd is started on it again."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, self.http_port))
        except OSError:
            sock.close()
            return False
        self._hold = sock
        return True

    def release(self) -> None:
        if self._hold is not None:
            self._hold.close()
            self._hold = None

    def query(self, q: str) -> dict[str, Any]:
        body = urllib.parse.urlencode({"q": q, "db": DATABASE}).encode()
        status, raw = http("POST", f"{self.url}/query", data=body, timeout=120.0)
        result: dict[str, Any] = json.loads(raw or b"{}")
        if status != 200 or "error" in result:
            raise RuntimeError(f"query {q!r}: HTTP {status} {raw[:300]!r}")
        for statement in result.get("results", []):
            if "error" in statement:
                raise RuntimeError(f"query {q!r}: {statement['error']}")
        return result

    def count(self, measurement: str) -> int:
        result = self.query(f"SELECT count(request_id) FROM {measurement}")
        for statement in result.get("results", []):
            for series in statement.get("series", []):
                return int(series["values"][0][1])
        return 0


def vm_status(pid: int) -> dict[str, float]:
    """VmRSS, VmHWM, RssAnon, RssFile of ``pid`` in MB (empty if it is gone)."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) / 1024  # kB -> MB (MiB)
    return out


def tree_bytes(root: Path) -> tuple[int, int]:
    """Bytes of all files under ``root`` and of the ``*.seg`` files among them."""
    total = segments = 0
    for directory, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                size = os.stat(os.path.join(directory, name)).st_size
                total += size
                if name.endswith(".seg"):
                    segments += size
    return total, segments


def describe_pending(root: Path) -> dict[str, Any]:
    """Pending lines and bytes by ``otel_luna.delivery._spool_status.describe``
    (``otel-luna status``)."""
    from otel_luna.delivery._spool_status import describe

    begin = time.monotonic()
    entries = describe(root)
    return {
        "pending_lines": sum(int(e["pending_lines"]) for e in entries),
        "pending_bytes": sum(int(e["pending_bytes"]) for e in entries),
        "corrupt_records": sum(int(e["corrupt_records"]) for e in entries),
        "processes": len(entries),
        "seconds": round(time.monotonic() - begin, 3),
    }


class Run:
    """The parent's state: processes, samples, phase marks."""

    def __init__(self, options: argparse.Namespace, root: Path) -> None:
        self.options = options
        self.root = root
        self.spool_dir = root / "spool"
        self.progress_path = root / "progress.json"
        self.influx = Influxd(root / "influxdb")
        self.child: subprocess.Popen[bytes] | None = None
        self.samples: list[dict[str, Any]] = []
        self.marks: dict[str, float] = {}
        self.t0 = time.monotonic()
        self.phase = "start"

    # -- child ------------------------------------------------------------------------------

    def start_child(self) -> None:
        config = {
            "endpoint": self.influx.url,
            "database": DATABASE,
            "spool_dir": str(self.spool_dir),
            "dead_letter": str(self.root / "dead-letter.jsonl"),
            "flush_interval": 1.0,
            "rate": self.options.rate,
            "seed": self.options.seed,
            "run_id": f"r{os.getpid()}",
            "progress": str(self.progress_path),
            "report_interval": 0.1,
        }
        config_path = self.root / "child.json"
        config_path.write_text(json.dumps(config))
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        self.child_log = self.root / "child.log"
        with open(self.child_log, "ab") as log:
            self.child = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--child", str(config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_pdeathsig,
            )
        deadline = time.monotonic() + 60
        while not self.progress_path.exists():
            if self.child.poll() is not None:
                raise RuntimeError(f"the child exited with {self.child.returncode}: {self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the child did not start: {self.tail()}")
            time.sleep(0.05)

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.child_log.read_text(errors="replace").splitlines()[-20:])
        return ""

    def progress(self) -> dict[str, Any]:
        for _ in range(20):
            with contextlib.suppress(OSError, ValueError):
                return dict(json.loads(self.progress_path.read_text()))
            time.sleep(0.01)
        return {}

    # -- sampling ---------------------------------------------------------------------------

    def sample(self) -> dict[str, Any]:
        assert self.child is not None
        now = time.monotonic()
        vm = vm_status(self.child.pid)
        on_disk, segments = tree_bytes(self.spool_dir)
        p = self.progress()
        row = {
            "t": round(now - self.t0, 2),
            "mono": now,
            "phase": self.phase,
            "rss_mb": round(vm.get("VmRSS", 0.0), 1),
            "hwm_mb": round(vm.get("VmHWM", 0.0), 1),
            "rss_anon_mb": round(vm.get("RssAnon", 0.0), 1),
            "spool_bytes": on_disk,
            "segment_bytes": segments,
            "pending_lines": p.get("pending_lines"),
            "pending_bytes": p.get("pending_bytes"),
            "emitted": p.get("emitted"),
            "written": p.get("counts", {}).get("written", 0),
            "report_age": round(now - p.get("mono", now), 2),
        }
        self.samples.append(row)
        return row

    def wait(
        self,
        seconds: float,
        tick: float = 1.0,
        until: Callable[[], bool] | None = None,
        say: Callable[[dict[str, Any]], None] | None = None,
    ) -> bool:
        """Sample every ``tick`` for ``seconds``, or until ``until()``; True if it came true."""
        assert self.child is not None
        end = time.monotonic() + seconds
        next_sample = time.monotonic()
        while time.monotonic() < end:
            if self.child.poll() is not None:
                raise RuntimeError(f"the child exited with {self.child.returncode}: {self.tail()}")
            if time.monotonic() >= next_sample:
                row = self.sample()
                next_sample += tick
                if say is not None:
                    say(row)
            if until is not None and until():
                return True
            time.sleep(min(0.1, max(0.0, end - time.monotonic())))
        return False

    def mark(self, name: str, when: float | None = None) -> float:
        self.marks[name] = time.monotonic() if when is None else when
        return self.marks[name]

    def log(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.1f} s] {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.child is not None:
            stop_process(self.child, 60.0)
        self.influx.stop()
        self.influx.release()


def run(options: argparse.Namespace, root: Path) -> dict[str, Any]:
    r = Run(options, root)
    try:
        return _measure(r)
    finally:
        r.close()


def _measure(r: Run) -> dict[str, Any]:
    o = r.options
    influx = r.influx
    influx.start()
    influx.query(f'CREATE DATABASE "{DATABASE}"')
    r.log(f"influxd {influx.version} on {influx.url} (pid {influx.popen.pid})")  # type: ignore
    r.start_child()
    assert r.child is not None
    r.log(f"child pid {r.child.pid} emitting {o.rate:g} spans/s; warm-up {o.warmup:g} s, DB up")
    r.phase = "warmup"
    r.mark("child_started")
    r.wait(min(2.0, o.warmup))
    rss_start = r.samples[-1]["rss_mb"]
    r.wait(max(0.0, o.warmup - 2.0))
    warm = r.progress()

    # -- outage ------------------------------------------------------------------------------
    influx.stop()
    held = influx.hold_port()
    r.phase = "outage"
    outage_start = r.mark("outage_start")
    before = r.progress()
    r.log(f"influxd stopped; outage of {o.outage:g} s (port held: {held})")
    every = max(1, int(o.outage // 10))
    state = {"n": 0}

    def say(row: dict[str, Any]) -> None:
        state["n"] += 1
        if state["n"] % every == 0:
            r.log(
                f"{r.phase}: RSS {row['rss_mb']:.1f} MB, spool {row['spool_bytes'] / MiB:.1f} MiB, "
                f"pending {row['pending_lines']} lines, emitted {row['emitted']}"
            )

    r.wait(o.outage, say=say)
    outage_end_progress = r.progress()
    described_end = describe_pending(r.spool_dir)
    spool_end_bytes, spool_end_segments = tree_bytes(r.spool_dir)
    outage_samples = [s for s in r.samples if s["phase"] == "outage"]
    hwm_outage = vm_status(r.child.pid).get("VmHWM", 0.0)

    # -- recovery and drain -------------------------------------------------------------------
    r.phase = "drain"
    backlog_progress = r.progress()
    up = r.mark("influx_up", influx.start())
    backlog = int(backlog_progress.get("pending_lines") or 0)
    r.log(f"influxd up again after {up - outage_start:.1f} s; backlog {backlog} lines")
    threshold = 5000  # lines: less than one write's worth (the batch_size setting's default)
    drained: dict[str, Any] = {}

    def is_drained() -> bool:
        p = r.progress()
        recoveries = p.get("sink", {}).get("recoveries", [])
        if not recoveries or recoveries[-1]["first_ok_start"] < outage_start:
            return False
        if (p.get("pending_lines") or 0) < threshold:
            drained.update(p)
            return True
        return False

    timeout = o.drain_timeout if o.drain_timeout else max(120.0, 2.0 * o.outage)
    done = r.wait(timeout, tick=1.0, until=is_drained, say=say)
    drained_at = r.mark("drained", drained.get("mono", time.monotonic()))
    count_at_drained = None
    count_query_seconds = None
    if done:
        begin = time.monotonic()
        count_at_drained = influx.count("requests")
        count_query_seconds = time.monotonic() - begin
        r.log(f"drained in {drained_at - up:.1f} s after influxd was up")
    else:
        r.log(f"NOT drained within {timeout:g} s")
    described_drained = describe_pending(r.spool_dir)

    # -- steady state after, then stop the child ---------------------------------------------
    r.phase = "after"
    r.wait(o.after)
    final_live = r.sample()
    hwm_end = vm_status(r.child.pid).get("VmHWM", 0.0)
    r.phase = "stop"
    stop_begin = time.monotonic()
    exit_status = stop_process(r.child, 120.0)
    stop_seconds = time.monotonic() - stop_begin
    final = r.progress()
    r.log(f"child stopped (exit {exit_status}) in {stop_seconds:.1f} s")
    described_final = describe_pending(r.spool_dir)
    count_requests = influx.count("requests")
    count_errors = influx.count("errors")
    distinct = None
    distinct_seconds = None
    if o.distinct:
        begin = time.monotonic()
        result = influx.query("SELECT count(distinct(request_id)) FROM requests")
        for statement in result.get("results", []):
            for series in statement.get("series", []):
                distinct = int(series["values"][0][1])
        distinct_seconds = time.monotonic() - begin
    dead_letters = 0
    with contextlib.suppress(OSError):
        dead_letters = len((r.root / "dead-letter.jsonl").read_text().splitlines())

    return analyse(
        r,
        rss_start=rss_start,
        warm=warm,
        before=before,
        outage_end=outage_end_progress,
        backlog_progress=backlog_progress,
        drained=drained if done else None,
        final=final,
        final_live=final_live,
        outage_samples=outage_samples,
        hwm_outage=hwm_outage,
        hwm_end=hwm_end,
        spool_end=(spool_end_bytes, spool_end_segments),
        described={
            "outage_end": described_end,
            "drained": described_drained,
            "final": described_final,
        },
        counts={
            "requests": count_requests,
            "errors": count_errors,
            "distinct": distinct,
            "distinct_seconds": distinct_seconds,
            "requests_at_drained": count_at_drained,
            "count_query_seconds": count_query_seconds,
        },
        dead_letters=dead_letters,
        exit_status=exit_status,
        stop_seconds=stop_seconds,
        threshold=threshold,
        port_held=held,
    )


def _delta(a: dict[str, Any], b: dict[str, Any], *path: str) -> float:
    def get(d: dict[str, Any]) -> float:
        for key in path:
            d = d.get(key, {}) if isinstance(d, dict) else {}
        return float(d or 0)

    return get(b) - get(a)


def analyse(r: Run, **m: Any) -> dict[str, Any]:
    o = r.options
    marks = r.marks
    final = m["final"]
    emitted = int(final.get("emitted", 0))
    counts = final.get("counts", {})
    spooled = int(counts.get("spooled", 0))
    lines_per_span = spooled / emitted if emitted else 0.0
    active = (final.get("stopped") or final["mono"]) - final["started"]
    spans_per_s = emitted / active if active else 0.0
    ingest = spans_per_s * lines_per_span

    outage_rss = [s["rss_mb"] for s in m["outage_samples"]]
    all_rss = [s["rss_mb"] for s in r.samples if s["rss_mb"]]
    outage_seconds = marks["influx_up"] - marks["outage_start"]
    backlog = int(m["backlog_progress"].get("pending_lines") or 0)

    sink = final.get("sink", {})
    recovery = next(
        (x for x in sink.get("recoveries", []) if x["first_ok_start"] >= marks["outage_start"]),
        None,
    )
    drain: dict[str, Any] = {"drained": m["drained"] is not None, "threshold_lines": m["threshold"]}
    if recovery is not None:
        drain["backoff_wait_seconds"] = round(recovery["first_ok_start"] - marks["influx_up"], 2)
        drain["last_failed_attempt_before_up_seconds"] = round(
            marks["influx_up"] - recovery["last_failed_attempt"], 2
        )
        failed_writes = [
            w for w in final.get("writes", []) if not w[3] and w[0] >= marks["outage_start"]
        ]
        starts = [w[0] for w in failed_writes]
        drain["failed_attempts_during_outage"] = len(failed_writes)
        drain["retry_gaps_seconds"] = [round(b - a, 1) for a, b in itertools.pairwise(starts)]
        drain["first_ok_write_seconds"] = round(
            recovery["first_ok_end"] - recovery["first_ok_start"], 3
        )
    writes = [w for w in final.get("writes", []) if w[3]]
    if m["drained"] is not None and recovery is not None:
        d = m["drained"]
        b = m["backlog_progress"]
        # The drain ends with the first write after recovery that left fewer than threshold
        # lines pending (exact, from the child's per-write record); else the parent's mark.
        in_window = [w for w in writes if w[0] >= recovery["first_ok_start"]]
        ending = next((w for w in in_window if 0 <= w[4] < m["threshold"]), None)
        drained_at = ending[0] + ending[1] if ending is not None else marks["drained"]
        drain_writes = [w for w in in_window if w[0] < drained_at]
        from_up = drained_at - marks["influx_up"]
        from_first = drained_at - recovery["first_ok_start"]
        written = sum(w[2] for w in drain_writes)
        # What waited when the first write went out: the backlog plus what the backoff added.
        first = drain_writes[0] if drain_writes else None
        backlog_first = first[4] + first[2] if first is not None else backlog
        drain.update(
            {
                "backlog_lines_at_first_write": backlog_first,
                "end_from": "the child's per-write record" if ending else "the parent's poll",
                "seconds_from_influx_up": round(from_up, 2),
                "seconds_from_first_write": round(from_first, 2),
                "backoff_share_of_drain": round(drain["backoff_wait_seconds"] / from_up, 3)
                if from_up > 0
                else None,
                "rate_lines_per_s_from_up": round(backlog / from_up, 1) if from_up > 0 else None,
                "rate_lines_per_s_from_first_write": round(backlog_first / from_first, 1)
                if from_first > 0
                else None,
                "gross_write_rate_lines_per_s": round(written / from_first, 1)
                if from_first > 0
                else None,
                "lines_written_during_drain": int(written),
                "ratio_to_ingest_from_up": round(backlog / from_up / ingest, 2)
                if from_up > 0 and ingest
                else None,
                "ratio_to_ingest_from_first_write": round(backlog_first / from_first / ingest, 2)
                if from_first > 0 and ingest
                else None,
            }
        )
        # Where the drain's time went (writer thread): HTTP writes (exact window), spool reads
        # and acks (counters sampled when InfluxDB came up and when the parent saw the drain
        # end: a slightly wider window), the rest (the writer's loop, GIL waits).
        write_s = sum(w[1] for w in drain_writes)
        lines = [w[2] for w in drain_writes]
        read_s = _delta(b, d, "spool", "read_seconds")
        ack_s = _delta(b, d, "spool", "ack_seconds")
        reads = _delta(b, d, "spool", "reads")
        file_bytes = _delta(b, d, "spool", "read_file_bytes")
        batch_bytes = _delta(b, d, "spool", "read_batch_bytes")
        batch_lines = _delta(b, d, "spool", "read_batch_lines")
        drain["writer_time"] = {
            "window_seconds": round(from_first, 2),
            "http_write_seconds": round(write_s, 2),
            "spool_read_seconds": round(read_s, 3),
            "spool_ack_seconds": round(ack_s, 3),
            "other_seconds": round(from_first - write_s - read_s - ack_s, 2),
            "writes": len(drain_writes),
            "ms_per_write": round(write_s / len(drain_writes) * 1000, 1) if drain_writes else None,
            "lines_per_write": round(sum(lines) / len(lines), 1) if lines else None,
            "lines_per_write_min_max": [min(lines), max(lines)] if lines else None,
            "bytes_per_write": round(batch_bytes / reads) if reads else None,
            "reads": int(reads),
            "read_lines": int(batch_lines),
            "ms_per_read": round(read_s / reads * 1000, 2) if reads else None,
            "file_bytes_read_per_batch": round(file_bytes / reads) if reads else None,
            "lines_per_s_inside_http": round(sum(lines) / write_s, 1) if write_s else None,
        }
        if drain_writes:
            durations = sorted(w[1] for w in drain_writes)
            drain["write_ms_quantiles"] = {
                "min": round(durations[0] * 1000, 1),
                "median": round(durations[len(durations) // 2] * 1000, 1),
                "p90": round(durations[int(len(durations) * 0.9)] * 1000, 1),
                "max": round(durations[-1] * 1000, 1),
            }
        # The backlog curve, one point per write: seconds since InfluxDB was up, lines pending.
        drain["curve"] = [[round(w[0] + w[1] - marks["influx_up"], 2), w[4]] for w in drain_writes]

    c = m["counts"]
    errors_emitted = int(final.get("errors_emitted", 0))
    checks = {
        "emitted": emitted,
        "requests_in_influxdb": c["requests"],
        "errors_emitted": errors_emitted,
        "errors_in_influxdb": c["errors"],
        "distinct_request_ids": c["distinct"],
        "distinct_query_seconds": round(c["distinct_seconds"], 2)
        if c["distinct_seconds"]
        else None,
        "all_request_ids_present": c["requests"] == emitted
        and (c["distinct"] is None or c["distinct"] == emitted),
        "all_errors_present": c["errors"] == errors_emitted,
        "requests_in_influxdb_when_drained": c["requests_at_drained"],
        "count_query_seconds": round(c["count_query_seconds"], 2)
        if c["count_query_seconds"]
        else None,
        "dead_letters": m["dead_letters"],
        "bsp_dropped_spans": final.get("bsp_dropped", 0),
        "child_exit_status": m["exit_status"],
        "child_stop_seconds": round(m["stop_seconds"], 2),
        "child_shutdown_seconds": round(final.get("shutdown_seconds") or 0, 2),
        "pending_lines_at_end": m["described"]["final"]["pending_lines"],
    }
    peak_outage = max(outage_rss) if outage_rss else None
    report = {
        "benchmark": "outage",
        "targets": {"rss_mb_max": RSS_TARGET_MB, "drain_to_ingest_min": DRAIN_TARGET},
        "settings": {
            "outage_seconds": o.outage,
            "rate": o.rate,
            "warmup": o.warmup,
            "after": o.after,
            "flush_interval": 1.0,
            "batch_size": 5000,
            "spool": final.get("spool_class"),
            "influxdb": r.influx.version,
            "port_held_during_outage": m["port_held"],
        },
        "ingest": {
            "spans_emitted": emitted,
            "spans_per_s": round(spans_per_s, 1),
            "lines_per_span": round(lines_per_span, 4),
            "lines_per_s": round(ingest, 1),
        },
        "rss_mb": {
            "start": m["rss_start"],
            "outage_start": outage_rss[0] if outage_rss else None,
            "peak_outage_sampled": peak_outage,
            "end_of_outage": outage_rss[-1] if outage_rss else None,
            "high_water_mark_at_end_of_outage": round(m["hwm_outage"], 1),
            "peak_sampled_whole_run": max(all_rss) if all_rss else None,
            "at_end": m["final_live"]["rss_mb"],
            "high_water_mark_at_end": round(m["hwm_end"], 1),
            "within_target": (m["hwm_outage"] or 0) <= RSS_TARGET_MB,
        },
        "spool": {
            "bytes_on_disk_end_of_outage": m["spool_end"][0],
            "segment_bytes_end_of_outage": m["spool_end"][1],
            "pending_lines_end_of_outage_child": m["outage_end"].get("pending_lines"),
            "pending_bytes_end_of_outage_child": m["outage_end"].get("pending_bytes"),
            "describe": m["described"],
            "bytes_per_line": round(
                (m["outage_end"].get("pending_bytes") or 0)
                / max(1, m["outage_end"].get("pending_lines") or 1),
                1,
            ),
            "spool_grew_bytes_during_outage": (m["outage_end"].get("pending_bytes") or 0)
            - (m["before"].get("pending_bytes") or 0),
        },
        "drain": {
            "outage_seconds_measured": round(outage_seconds, 1),
            "backlog_lines": backlog,
            **drain,
            "within_target": (drain.get("ratio_to_ingest_from_up") or 0) >= DRAIN_TARGET,
        },
        "checks": checks,
        "child_counts": counts,
        "samples": [{k: v for k, v in s.items() if k != "mono"} for s in r.samples],
        "root": str(r.root),
    }
    return report


def print_report(rep: dict[str, Any]) -> None:
    s, rss, sp, d, c, ing = (
        rep["settings"],
        rep["rss_mb"],
        rep["spool"],
        rep["drain"],
        rep["checks"],
        rep["ingest"],
    )
    print(
        f"outage benchmark: {s['outage_seconds']:g} s InfluxDB {s['influxdb']} outage at "
        f"{s['rate']:g} spans/s (achieved {ing['spans_per_s']:.1f}/s, {ing['lines_per_span']:.3f} "
        f"lines/span = {ing['lines_per_s']:.0f} lines/s), disk spool, flush 1 s, batch 5000"
    )
    print()
    print("memory of the instrumented process (RSS, MB)")
    print(
        f"  at start {rss['start']:.1f}, at outage start {rss['outage_start']:.1f}, "
        f"peak sampled during outage {rss['peak_outage_sampled']:.1f}, "
        f"end of outage {rss['end_of_outage']:.1f}"
    )
    print(
        f"  high-water mark (VmHWM) at end of outage {rss['high_water_mark_at_end_of_outage']:.1f}"
        f", at end {rss['high_water_mark_at_end']:.1f}; at end {rss['at_end']:.1f}"
    )
    print(
        f"  target <= {RSS_TARGET_MB:.0f} MB during the outage: "
        f"{'met' if rss['within_target'] else 'NOT met'}"
    )
    print()
    print("disk spool")
    print(
        f"  end of outage: {sp['bytes_on_disk_end_of_outage'] / MiB:.1f} MiB on disk, "
        f"{sp['pending_lines_end_of_outage_child']} lines pending "
        f"({sp['bytes_per_line']:.0f} B/line); describe(): "
        f"{sp['describe']['outage_end']['pending_lines']} lines "
        f"(read in {sp['describe']['outage_end']['seconds']} s)"
    )
    print()
    print("drain")
    print(f"  backlog {d['backlog_lines']} lines after {d['outage_seconds_measured']:.1f} s down")
    if "backoff_wait_seconds" in d:
        print(
            f"  first successful write {d['backoff_wait_seconds']:.1f} s after InfluxDB was up "
            f"(backoff; last failed attempt {d['last_failed_attempt_before_up_seconds']:.1f} s "
            f"before; {d['failed_attempts_during_outage']} failed attempts, gaps "
            f"{d['retry_gaps_seconds']})"
        )
    if d.get("drained") and "seconds_from_influx_up" in d:
        w = d["writer_time"]
        print(
            f"  drained (< {d['threshold_lines']} lines pending) "
            f"{d['seconds_from_influx_up']:.1f} s after InfluxDB was up, "
            f"{d['seconds_from_first_write']:.1f} s after the first write; "
            f"backoff = {d['backoff_share_of_drain']:.0%} of the drain time"
        )
        print(
            f"  drain rate {d['rate_lines_per_s_from_up']:.0f} lines/s from up "
            f"({d['ratio_to_ingest_from_up']:.1f}x ingest: backlog at up / seconds from up); "
            f"{d['rate_lines_per_s_from_first_write']:.0f} lines/s from the first write "
            f"({d['ratio_to_ingest_from_first_write']:.1f}x: the "
            f"{d['backlog_lines_at_first_write']} lines pending then / seconds from it); "
            f"gross write rate {d['gross_write_rate_lines_per_s']:.0f} lines/s"
        )
        print(
            f"  writer time in the drain ({w['window_seconds']:.1f} s): HTTP writes "
            f"{w['http_write_seconds']:.1f} s ({w['writes']} x {w['ms_per_write']} ms, "
            f"{w['lines_per_write']} lines {w['lines_per_write_min_max']}, "
            f"{w['lines_per_s_inside_http']:.0f} lines/s inside them), spool reads "
            f"{w['spool_read_seconds']:.2f} s ({w['ms_per_read']} ms each, "
            f"{w['file_bytes_read_per_batch']} B read from the segment per batch), acks "
            f"{w['spool_ack_seconds']:.2f} s, other {w['other_seconds']:.2f} s"
        )
        if "write_ms_quantiles" in d:
            print(f"  HTTP write ms: {d['write_ms_quantiles']}")
        print(
            f"  InfluxDB count(request_id) of requests when drained: "
            f"{c['requests_in_influxdb_when_drained']} (query {c['count_query_seconds']} s); "
            f"describe() then: {sp['describe']['drained']['pending_lines']} lines pending"
        )
    else:
        print("  NOT drained")
    print(
        f"  target drain >= {DRAIN_TARGET:g}x ingest (from InfluxDB up): "
        f"{'met' if d['within_target'] else 'NOT met'}"
    )
    print()
    print("end")
    print(
        f"  emitted {c['emitted']} spans, InfluxDB requests {c['requests_in_influxdb']}, "
        f"errors {c['errors_in_influxdb']} of {c['errors_emitted']}, distinct request ids "
        f"{c['distinct_request_ids']}: every request id present: {c['all_request_ids_present']}"
    )
    print(
        f"  dead letters {c['dead_letters']}, spans dropped by BatchSpanProcessor "
        f"{c['bsp_dropped_spans']}, pending at end {c['pending_lines_at_end']}, child exit "
        f"{c['child_exit_status']} after {c['child_stop_seconds']} s"
    )
    print(f"  exporter counters: {rep['child_counts']}")
    print()
    print("timeline (every 10th sample)")
    for row in rep["samples"][::10]:
        print(
            f"  {row['t']:7.1f} s {row['phase']:7s} RSS {row['rss_mb']:6.1f} MB  spool "
            f"{row['spool_bytes'] / MiB:7.1f} MiB  pending {row['pending_lines']}  "
            f"written {row['written']}  emitted {row['emitted']}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--outage", type=float, default=300.0, help="seconds down (default 300)")
    parser.add_argument("--rate", type=float, default=2000.0, help="spans/s (default 2000)")
    parser.add_argument(
        "--warmup",
        type=float,
        default=10.0,
        help="seconds with InfluxDB up before the outage (default 10)",
    )
    parser.add_argument(
        "--after",
        type=float,
        default=10.0,
        help="seconds of steady state after the drain (default 10)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=0.0,
        help="give up the drain after this (default max(120, 2 x outage))",
    )
    parser.add_argument(
        "--no-distinct",
        dest="distinct",
        action="store_false",
        help="skip counting distinct request ids at the end",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.child:
        return child_main(options.child)

    # SIGTERM to this script: unwind like Ctrl-C, so the finally blocks stop what we started.
    def interrupted(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    root = Path(tempfile.mkdtemp(prefix="otel-luna-outage-"))
    try:
        report = run(options, root)
    except KeyboardInterrupt:
        print("interrupted; stopped what was started", file=sys.stderr)
        return 1
    finally:
        if options.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    report["environment"] = _environment()
    if options.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        print_report(report)
    return 0


def _environment() -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import environment

    return environment()


if __name__ == "__main__":
    sys.exit(main())
