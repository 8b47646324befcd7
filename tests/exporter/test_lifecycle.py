"""The SIGTERM handler (otel_luna._lifecycle): its steps as plain functions, then real signals.

The unit tests drive a :class:`Watcher` of their own with recording steps and never install a
handler in the test process except in the tests that check installation (which restore the
previous one). The process tests send real signals to a child that builds the exporters in
code, with the SDK's batch and metric schedules set far beyond the test.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from otel_luna import _lifecycle as lifecycle
from otel_luna._lifecycle import CHAIN, DELIVER_AND_RAISE, IGNORE, Watcher, action_for
from otel_luna.delivery._spool_status import describe
from otel_luna.settings import Settings
from tests.support.closedport import ClosedPort
from tests.support.servers import InfluxDB1


def app_handler(signum: int, frame: FrameType | None) -> None:
    """Stands for an application's or a server's own SIGTERM handler."""


class Recorder:
    """Fake steps for a Watcher, recording what was called, in order."""

    def __init__(self, sdk_done: bool = True) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.sdk_done = sdk_done
        self.deadlines: list[float] = []

    def flush_sdk(self, deadline: float) -> bool:
        self.events.append(("flush_sdk",))
        self.deadlines.append(deadline)
        return self.sdk_done

    def flush_pipelines(self, pipelines: Any, deadline: float) -> bool:
        self.events.append(("flush_pipelines", sorted(p.name for p in pipelines)))
        return True

    def raise_default(self, signum: int) -> None:
        self.events.append(("raise_default", signum))

    def previous(self, signum: int, frame: FrameType | None) -> None:
        self.events.append(("previous", signum))

    def watcher(self, previous: Any, grace: float = 5.0) -> Watcher:
        return Watcher(
            flush_sdk=self.flush_sdk,
            flush_pipelines=self.flush_pipelines,
            raise_default=self.raise_default,
            grace=grace,
            previous=previous,
            installed=True,
        )


class FakePipeline:
    def __init__(self, name: str) -> None:
        self.name = name
        self.timeouts: list[float | None] = []

    def force_flush(self, timeout: float | None) -> bool:
        self.timeouts.append(timeout)
        return True


@pytest.fixture
def sigterm_restored() -> Iterator[None]:
    """Whatever a test installs for SIGTERM in this process is undone after it."""
    before = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def settings(**overrides: Any) -> Settings:
    return Settings.load({}, endpoint="file:///dev/null", **overrides)


# --------------------------------------------------------------------------- decisions


def test_action_by_kind_of_previous_handler() -> None:
    """A Python callable is chained to, SIG_IGN ignored, SIG_DFL and None (a handler installed
    outside Python) mean: deliver and die of the signal."""
    assert action_for(app_handler) == CHAIN
    assert action_for(signal.default_int_handler) == CHAIN
    assert action_for(signal.SIG_IGN) == IGNORE
    assert action_for(signal.SIG_DFL) == DELIVER_AND_RAISE
    assert action_for(None) == DELIVER_AND_RAISE


def test_callable_previous_is_called_after_the_flush_and_nothing_is_raised() -> None:
    """With a Python handler before ours: flush what the SDK holds, call that handler, return;
    no delivery wait and no re-raise (the app's graceful shutdown goes on)."""
    recorder = Recorder()
    watcher = recorder.watcher(recorder.previous)
    watcher.pipelines.add(FakePipeline("p"))
    assert watcher.handle(signal.SIGTERM, None) == CHAIN
    assert recorder.events == [("flush_sdk",), ("previous", signal.SIGTERM)]


def test_previous_handler_exception_reaches_the_app() -> None:
    """A previous handler that exits (SystemExit) does so from our handler too."""

    def exits(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(3)

    recorder = Recorder()
    with pytest.raises(SystemExit) as raised:
        recorder.watcher(exits).handle(signal.SIGTERM, None)
    assert raised.value.code == 3
    assert recorder.events == [("flush_sdk",)]


def test_ignored_signal_is_flushed_and_ignored() -> None:
    """SIG_IGN before ours: flush what the SDK holds, then nothing more."""
    recorder = Recorder()
    assert recorder.watcher(signal.SIG_IGN).handle(signal.SIGTERM, None) == IGNORE
    assert recorder.events == [("flush_sdk",)]


@pytest.mark.parametrize("previous", [signal.SIG_DFL, None])
def test_default_action_delivers_every_live_pipeline_then_reraises(previous: Any) -> None:
    """SIG_DFL (or None) before ours: flush, deliver every pipeline still alive, then restore
    the default action and raise the signal again, so the process dies of it."""
    recorder = Recorder()
    watcher = recorder.watcher(previous)
    kept = [FakePipeline("traces"), FakePipeline("metrics")]
    for pipeline in kept:
        watcher.pipelines.add(pipeline)
    watcher.pipelines.add(FakePipeline("gone"))  # no reference left: not flushed
    gc.collect()
    assert watcher.handle(signal.SIGTERM, None) == DELIVER_AND_RAISE
    assert recorder.events == [
        ("flush_sdk",),
        ("flush_pipelines", ["metrics", "traces"]),
        ("raise_default", signal.SIGTERM),
    ]


def test_signal_is_reraised_even_when_the_flush_runs_out_of_time() -> None:
    """A flush that did not finish within the grace time never swallows the signal."""
    recorder = Recorder(sdk_done=False)
    recorder.watcher(signal.SIG_DFL).handle(signal.SIGTERM, None)
    assert recorder.events[-1] == ("raise_default", signal.SIGTERM)


def test_one_grace_time_bounds_the_whole_handler() -> None:
    """The deadline handed to the steps is the signal's arrival plus SHUTDOWN_TIMEOUT."""
    recorder = Recorder()
    before = time.monotonic()
    recorder.watcher(signal.SIG_IGN, grace=7.5).handle(signal.SIGTERM, None)
    after = time.monotonic()
    (deadline,) = recorder.deadlines
    assert before + 7.5 <= deadline <= after + 7.5


def test_pipelines_get_the_time_left_of_the_grace() -> None:
    """The real pipeline step hands each pipeline the time left until the deadline."""
    pipelines = [FakePipeline("a"), FakePipeline("b")]
    deadline = time.monotonic() + 30
    assert lifecycle.flush_pipelines(pipelines, deadline)
    for pipeline in pipelines:
        (timeout,) = pipeline.timeouts
        assert timeout is not None and 0 < timeout <= 30


# --------------------------------------------------------------------------- second signal


def test_second_signal_during_the_flush_neither_flushes_again_nor_reraises_twice() -> None:
    """SIGTERM again while the handler flushes (default action): the running handler finishes
    and re-raises once; the second does not recurse into another flush."""
    recorder = Recorder()
    watcher = recorder.watcher(signal.SIG_DFL)

    def flush_sdk(deadline: float) -> bool:
        recorder.events.append(("flush_sdk",))
        watcher.on_signal(signal.SIGTERM, None)  # arrives now, in the main thread
        return True

    watcher.flush_sdk = flush_sdk
    watcher.on_signal(signal.SIGTERM, None)
    assert recorder.events == [
        ("flush_sdk",),
        ("flush_pipelines", []),
        ("raise_default", signal.SIGTERM),
    ]
    assert not watcher.handling


def test_second_signal_during_the_flush_still_reaches_the_app_handler() -> None:
    """With the app's handler before ours, every SIGTERM reaches it; only one flush runs."""
    recorder = Recorder()
    watcher = recorder.watcher(recorder.previous)

    def flush_sdk(deadline: float) -> bool:
        recorder.events.append(("flush_sdk",))
        watcher.on_signal(signal.SIGTERM, None)
        return True

    watcher.flush_sdk = flush_sdk
    watcher.on_signal(signal.SIGTERM, None)
    assert recorder.events == [
        ("flush_sdk",),
        ("previous", signal.SIGTERM),
        ("previous", signal.SIGTERM),
    ]


# --------------------------------------------------------------------------- bounded waits


def test_bounded_run_returns_although_a_task_waits_for_a_lock_the_caller_holds() -> None:
    """The main thread interrupted while holding a lock the flush needs: no deadlock, the
    wait ends at the deadline and reports the flush as unfinished."""
    lock = threading.Lock()
    with lock:
        finished = lifecycle.run_bounded([lock.acquire], time.monotonic() + 0.2, "test")
    assert finished is False


def test_bounded_run_survives_a_failing_task(caplog: pytest.LogCaptureFixture) -> None:
    """A step that raises is logged; the others still run and the handler goes on."""
    ran: list[str] = []

    def fails() -> None:
        raise RuntimeError("boom")

    assert lifecycle.run_bounded(
        [fails, lambda: ran.append("other")], time.monotonic() + 30, "test"
    )
    assert ran == ["other"]
    assert "otel-luna: test failed" in caplog.text


# --------------------------------------------------------------------------- installation


def test_watch_installs_once_in_the_main_thread_and_remembers_the_previous_handler(
    sigterm_restored: None,
) -> None:
    """The first exporter of the main thread installs the handler over the app's; later ones
    do not install again, not even over a handler set since."""
    signal.signal(signal.SIGTERM, app_handler)
    watcher = Watcher()
    assert watcher.watch(FakePipeline("a"), settings(shutdown_timeout=3.0))
    assert signal.getsignal(signal.SIGTERM) == watcher.on_signal
    assert watcher.previous is app_handler
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    assert watcher.watch(FakePipeline("b"), settings(shutdown_timeout=8.0))
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert watcher.grace == 8.0


def test_watch_does_not_install_when_handle_sigterm_is_false(sigterm_restored: None) -> None:
    """OTEL_EXPORTER_LUNA_HANDLE_SIGTERM=false leaves SIGTERM alone."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    watcher = Watcher()
    pipeline = FakePipeline("a")
    assert not watcher.watch(pipeline, settings(handle_sigterm=False))
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert list(watcher.pipelines) == [pipeline]


def test_watch_outside_the_main_thread_tracks_but_does_not_install(
    sigterm_restored: None,
) -> None:
    """An exporter built in another thread cannot install a handler (Python forbids it)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    watcher = Watcher()
    results: list[bool] = []
    pipeline = FakePipeline("a")
    thread = threading.Thread(target=lambda: results.append(watcher.watch(pipeline, settings())))
    thread.start()
    thread.join()
    assert results == [False]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert len(watcher.pipelines) == 1


# --------------------------------------------------------------------------- real signals

SCRIPT = textwrap.dedent(
    """
    import signal, sys
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    import otel_luna
    from otel_luna import LunaMetricExporter, LunaSpanExporter, Settings

    mode, endpoint, database, spool, count = sys.argv[1:6]

    def app_handler(signum, frame):
        print("app handler ran", flush=True)
        sys.exit(3)

    if mode == "app-handler-first":
        signal.signal(signal.SIGTERM, app_handler)
    elif mode == "ignored":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    settings = Settings.load(
        {}, endpoint=endpoint, database=database, spool_dir=spool, shutdown_timeout=300.0
    )
    provider = TracerProvider()
    provider.add_span_processor(
        BatchSpanProcessor(LunaSpanExporter(settings), schedule_delay_millis=600000)
    )
    trace.set_tracer_provider(provider)
    reader = PeriodicExportingMetricReader(
        LunaMetricExporter(settings), export_interval_millis=600000
    )
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    tracer = trace.get_tracer("lifecycle-test")
    attributes = {"http.method": "GET", "http.route": "/v", "http.status_code": 200}
    for index in range(int(count)):
        with tracer.start_as_current_span("r", kind=trace.SpanKind.SERVER, attributes=attributes):
            otel_luna.set_request_id(f"{mode}-{index}")
    otel_luna.record_usages(face_detector=int(count))
    print("ready", flush=True)
    while True:  # until a signal ends the process (SIGTERM may come before the first pause)
        signal.pause()
    """
)
COUNT = 25


def run_script(mode: str, endpoint: str, database: str, spool: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, mode, endpoint, database, str(spool), str(COUNT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if line != "ready\n":
        process.kill()
        raise AssertionError(line + process.stdout.read())
    return process


def finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        output, _ = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        raise AssertionError(f"did not end:\n{output}") from None
    return process.returncode, output


def ids_in(influxdb1: InfluxDB1, database: str) -> list[str]:
    rows = influxdb1.select("SELECT request_id FROM requests", database)
    return sorted(row["request_id"] for row in rows)


def usages_in(influxdb1: InfluxDB1, database: str) -> int:
    rows = influxdb1.select("SELECT face_detector_usages FROM usages_statistic", database)
    return sum(row["face_detector_usages"] for row in rows)


@pytest.mark.parametrize(
    ("mode", "status", "said"),
    [
        ("default", -signal.SIGTERM, ""),
        ("app-handler-first", 3, "app handler ran\n"),
    ],
)
def test_real_sigterm_by_previous_handler(
    influxdb1: InfluxDB1,
    influxdb1_database: str,
    tmp_path: Path,
    mode: str,
    status: int,
    said: str,
) -> None:
    """Exporters built in code, spans in a BatchSpanProcessor and usages in a metric reader,
    then SIGTERM: with no handler before ours the process dies of the signal; with the app's
    it runs and decides the exit. Every point lands."""
    process = run_script(mode, influxdb1.url, influxdb1_database, tmp_path / "spool")
    process.send_signal(signal.SIGTERM)
    code, output = finish(process)
    assert (code, output) == (status, said)
    assert ids_in(influxdb1, influxdb1_database) == sorted(f"{mode}-{i}" for i in range(COUNT))
    assert usages_in(influxdb1, influxdb1_database) == COUNT


def test_real_sigterm_ignored_by_the_app_is_flushed_and_still_ignored(
    influxdb1: InfluxDB1, influxdb1_database: str, tmp_path: Path
) -> None:
    """SIG_IGN before ours: SIGTERM moves what the SDK held into the spool, which delivers
    while the process goes on running."""
    process = run_script("ignored", influxdb1.url, influxdb1_database, tmp_path / "spool")
    try:
        process.send_signal(signal.SIGTERM)
        expected = sorted(f"ignored-{i}" for i in range(COUNT))
        deadline = time.monotonic() + 60
        while ids_in(influxdb1, influxdb1_database) != expected:
            assert time.monotonic() < deadline, "the points recorded before SIGTERM did not land"
            time.sleep(0.1)
        assert process.poll() is None
    finally:
        process.kill()
        code, output = finish(process)
    assert (code, output) == (-signal.SIGKILL, "")
    assert usages_in(influxdb1, influxdb1_database) == COUNT


def test_second_sigterm_while_delivering_does_not_hang_or_recurse(
    influxdb1: InfluxDB1, influxdb1_database: str, tmp_path: Path
) -> None:
    """SIGTERM, the database unreachable, SIGTERM again while the handler waits for delivery:
    once the database is back the handler delivers everything and the process dies of
    SIGTERM, without a second flush or a traceback."""
    port = ClosedPort(influxdb1.host, influxdb1.port)
    spool = tmp_path / "spool"
    try:
        process = run_script("default", port.url, influxdb1_database, spool)
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 60
        while sum(int(str(e["pending_lines"])) for e in describe(spool)) < COUNT + 1:
            assert time.monotonic() < deadline, "the handler did not spool what the SDK held"
            time.sleep(0.05)
        assert process.poll() is None  # waiting for the database (SHUTDOWN_TIMEOUT is 300 s)
        process.send_signal(signal.SIGTERM)
        port.open()
        code, output = finish(process)
    finally:
        port.close()
    # Only the delivery-trouble warning and the recovery line
    # (tests/delivery/test_delivery_trouble.py).
    assert code == -signal.SIGTERM
    said = [line.split(" to ")[0] for line in output.splitlines()]
    assert said == ["otel-luna: cannot deliver", "otel-luna: delivering again"], output
    assert ids_in(influxdb1, influxdb1_database) == sorted(f"default-{i}" for i in range(COUNT))
    assert usages_in(influxdb1, influxdb1_database) == COUNT


def test_forked_child_has_a_usable_watcher_lock() -> None:
    """A fork while the watcher's lock is held leaves the child a lock it can take."""
    watcher = lifecycle.WATCHER
    with watcher.lock:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            acquired = watcher.lock.acquire(timeout=10)
            os._exit(0 if acquired else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


OWN_HANDLER_SCRIPT = """
import os, signal, sys
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
import otel_luna
from otel_luna import LunaSpanExporter, Settings

exporter = LunaSpanExporter(Settings.load({}, endpoint="file://" + sys.argv[1]))
provider = TracerProvider(resource=Resource.create({"service.name": "own-handler"}))
provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=600_000))
trace.set_tracer_provider(provider)

def on_sigterm(signum, frame):  # the re-raise idiom: no atexit after it
    otel_luna.flush(10)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)

signal.signal(signal.SIGTERM, on_sigterm)  # installed after the exporter: replaces its handler
tracer = trace.get_tracer("own-handler")
for index in range(50):
    attributes = {"http.method": "GET", "http.route": "/x", "http.status_code": 200,
                  "luna.request_id": f"own-{index}"}
    with tracer.start_as_current_span("GET /x", kind=trace.SpanKind.SERVER, attributes=attributes):
        pass
os.kill(os.getpid(), signal.SIGTERM)
signal.pause()
"""


@pytest.mark.slow  # a child process
def test_flush_for_an_app_handler_that_dies_without_atexit(tmp_path: Path) -> None:
    """An app handler that restores SIG_DFL and re-raises (no atexit, otel-luna's handler
    replaced) keeps every point when it calls otel_luna.flush() first."""
    target = tmp_path / "points.lp"
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    result = subprocess.run(
        [sys.executable, "-c", OWN_HANDLER_SCRIPT, str(target)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == -signal.SIGTERM, result.stderr
    ids = {line.split('request_id="')[1].split('"')[0] for line in target.read_text().splitlines()}
    assert ids == {f"own-{index}" for index in range(50)}


def test_flush_says_false_when_a_pipeline_could_not_deliver() -> None:
    """otel_luna.flush() reports what the deliveries said, not only that they returned."""

    class Undelivered(FakePipeline):
        def force_flush(self, timeout: float | None) -> bool:
            super().force_flush(timeout)
            return False

    deadline = time.monotonic() + 5
    assert lifecycle.flush_pipelines([FakePipeline("a")], deadline)
    assert not lifecycle.flush_pipelines([FakePipeline("a"), Undelivered("b")], deadline)
