"""One ingest and one delivery per destination per process, shared by traces and metrics.

Exporters of both signals with equal settings share one lock, one writer thread, one spool and
its one bound; eight threads exporting both signals while the self-metrics callback and
``status`` read the counters leave counts that add up exactly.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Metric,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from otel_luna import selfmetrics
from otel_luna._cli import status_entries
from otel_luna._exporter import LunaMetricExporter, LunaSpanExporter
from otel_luna.ingest import Ingest
from otel_luna.mapping._records import SpanRecord
from otel_luna.outcomes import Reason
from otel_luna.settings import Settings, SettingsError
from otel_luna.sinks import Failure, SinkError
from otel_luna.testing import InMemorySink

T0 = 1_700_000_000_000_000_000
RESOURCE = Resource.create({"service.name": "stress"})


def server_spans(count: int, status: int = 200) -> list[ReadableSpan]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("t")
    for _ in range(count):
        attributes = {
            "http.method": "GET",
            "http.route": "/r",
            "http.status_code": status,
            "luna.request_id": uuid.uuid4().hex,
        }
        with tracer.start_as_current_span("r", kind=trace.SpanKind.SERVER, attributes=attributes):
            pass
    provider.shutdown()
    return list(memory.get_finished_spans())


def usages(time_ns: int, **counts: int) -> MetricsData:
    """One delta export of the luna.usages counter at ``time_ns``."""
    points = [
        NumberDataPoint({"luna.estimator": name}, time_ns - 10**9, time_ns, value)
        for name, value in counts.items()
    ]
    metric = Metric("luna.usages", None, "1", Sum(points, AggregationTemporality.DELTA, True))
    scope = ScopeMetrics(InstrumentationScope("t"), [metric], "")
    return MetricsData([ResourceMetrics(RESOURCE, [scope], "")])


class DownSink:
    """A destination that is down: every write is retried later."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, body: bytes) -> None:
        self.writes += 1
        raise SinkError("down", failure=Failure.RETRY)

    def close(self) -> None:
        pass


def writer_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "otel-luna-writer" and t.is_alive())


def test_both_exporters_share_one_ingest_one_writer_and_one_spool(tmp_path: Path) -> None:
    settings = Settings.load(
        {}, spool_dir=str(tmp_path / "spool"), dead_letter=str(tmp_path / "dl.jsonl")
    )
    sink = InMemorySink()
    before = writer_threads()
    spans = LunaSpanExporter(settings, sink=sink)
    metrics = LunaMetricExporter(settings, sink=sink)
    try:
        assert spans._ingest is metrics._ingest
        assert writer_threads() - before == 1
        (destination,) = (tmp_path / "spool").iterdir()
        assert len([p for p in destination.iterdir() if p.is_dir()]) == 1  # one process directory
        spans.export(server_spans(3))
        metrics.export(usages(T0, face_detector=2))
        spans.shutdown()  # not the last user: the metric exporter still writes
        assert metrics.export(usages(T0 + 10**9, face_detector=1)).name == "SUCCESS"
    finally:
        metrics.shutdown()  # the last user: delivers and closes
    assert Counter(line.split(",", 1)[0] for line in sink.lines) == {
        "requests": 3,
        "usages_statistic": 2,
    }
    assert sink.closed


def test_the_spool_bound_holds_across_both_signals() -> None:
    """SPOOL_MAX_BYTES bounds what both signals hold together, as docs/delivery.md says, not
    each signal on its own."""
    bound = 20_000
    settings = Settings.load(
        {}, spool="memory", spool_max_bytes=bound, flush_interval=3600, shutdown_timeout=0.1
    )
    sink = DownSink()
    spans = LunaSpanExporter(settings, sink=sink)
    metrics = LunaMetricExporter(settings, sink=sink)
    try:
        for index in range(40):
            spans.export(server_spans(10))
            metrics.export(usages(T0 + index * 10**9, face_detector=1, eye_estimator=2))
        ingest = spans._ingest
        assert ingest.pending_bytes() <= bound
        counts = ingest.counts()
        assert counts[Reason.DROPPED_SPOOL_FULL] > 0
        assert counts[Reason.SPOOLED] == 400 + 40  # both signals went into the one spool
    finally:
        spans.shutdown()
        metrics.shutdown()


def test_a_profile_and_a_destination_that_do_not_fit_fail_at_start(tmp_path: Path) -> None:
    """The LUNA series cannot be written as Ping Centre JSON: a .jsonl file endpoint with the
    default profile is a start-up error naming the setting, not a stream of rejected points."""
    settings = Settings.load({}, endpoint=f"file://{tmp_path}/pings.jsonl", spool="memory")
    with pytest.raises(SettingsError, match="OTEL_EXPORTER_LUNA_SCHEMA") as raised:
        LunaSpanExporter(settings)
    assert "luna" in str(raised.value) and "watchdog" in str(raised.value)
    assert not (tmp_path / "pings.jsonl").exists()
    watchdog = LunaSpanExporter(settings.replace(schema="watchdog"))  # the profile that fits
    watchdog.shutdown()


def test_counts_add_up_under_eight_threads_and_concurrent_readers(tmp_path: Path) -> None:
    """8 threads export spans and metrics while the self-metrics callbacks and status read
    the counters: nothing raises, and mapped = spooled = written = the lines the sink got."""
    settings = Settings.load(
        {},
        spool_dir=str(tmp_path / "spool"),
        dead_letter=str(tmp_path / "dl.jsonl"),
        flush_interval=0.01,
        batch_size=50,
    )
    sink = InMemorySink()
    spans = LunaSpanExporter(settings, sink=sink)
    metrics = LunaMetricExporter(settings, sink=sink)
    rounds = 25
    batches = [
        [server_spans(20, status=200 if worker % 2 else 500) for _ in range(rounds)]
        for worker in range(8)
    ]
    stop = threading.Event()
    errors: list[BaseException] = []

    def export(worker: int) -> None:
        try:
            for round_ in range(rounds):
                assert spans.export(batches[worker][round_]).name == "SUCCESS"
                time_ns = T0 + (worker * rounds + round_) * 10**9
                assert metrics.export(usages(time_ns, face_detector=1)).name == "SUCCESS"
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    def read() -> None:
        registry: Any = selfmetrics._registry
        try:
            while not stop.is_set():
                list(registry._points(None))
                list(registry._events(None))
                list(registry._pending(None))
                status_entries(str(tmp_path / "spool"))
                spans.counts  # noqa: B018 - reading is the test
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    readers = [threading.Thread(target=read) for _ in range(2)]
    workers = [threading.Thread(target=export, args=(worker,)) for worker in range(8)]
    for thread in (*readers, *workers):
        thread.start()
    for thread in workers:
        thread.join(120)
    stop.set()
    for thread in readers:
        thread.join(30)
    assert spans.force_flush(60_000)
    counts = spans.counts
    spans.shutdown()
    metrics.shutdown()
    assert not errors
    # 8 workers x 25 rounds x 20 spans, half of them failed (requests + errors points)
    span_lines = 8 * rounds * 20 + 4 * rounds * 20
    usage_lines = 8 * rounds  # one usages_statistic point per export
    expected = span_lines + usage_lines
    assert counts[Reason.SERVER_SPANS] == 8 * rounds * 20
    assert counts[Reason.MAPPED] == expected
    assert counts[Reason.SPOOLED] == expected
    assert counts[Reason.WRITTEN] == expected
    assert len(sink.lines) == expected
    assert len(set(sink.lines)) == expected  # no point written twice, none overwrote another


def test_shutdown_delivers_even_while_another_user_keeps_the_delivery(tmp_path: Path) -> None:
    """An exporter made and dropped without shutdown (a stray copy, or one inherited by a
    forked child) shares the destination: the real exporter's shutdown still delivers what it
    exported, and the stray one keeps a working delivery."""
    settings = Settings.load({}, spool="memory", flush_interval=3600)
    sink = InMemorySink()
    stray = LunaSpanExporter(settings, sink=sink)
    real = LunaSpanExporter(settings, sink=sink)
    real.export(server_spans(5))
    real.shutdown()
    assert len(sink.lines) == 5
    assert stray.export(server_spans(2)).name == "SUCCESS"
    assert stray.force_flush(10_000) and len(sink.lines) == 7
    stray.shutdown()
    assert sink.closed and stray._ingest.queued() == 0


def test_export_after_shutdown_is_counted_and_flush_takes_any_timeout() -> None:
    settings = Settings.load({}, spool="memory")
    sink = InMemorySink()
    exporter = LunaSpanExporter(settings, sink=sink)
    for timeout in (None, "5", -1, float("nan")):
        assert exporter.force_flush(timeout) is True  # type: ignore[arg-type]
    exporter.shutdown()
    assert exporter.export(server_spans(3)).name == "FAILURE"
    assert exporter.counts[Reason.DROPPED_AFTER_SHUTDOWN] == 3


def test_the_spool_directory_tells_influxdb2_organizations_apart() -> None:
    """Points spooled for one organization are never replayed into another."""
    from otel_luna.delivery import destination_slug

    one = Settings.load({}, token="t", org="one")
    assert destination_slug(one) != destination_slug(one.replace(org="two"))
    assert destination_slug(one) == destination_slug(Settings.load({}, token="t", org="one"))


def test_a_mismatch_names_no_secret_and_creates_nothing(tmp_path: Path) -> None:
    settings = Settings.load(
        {}, endpoint=f"file://{tmp_path}/new/dir/pings.jsonl", token="tok-XYZ", org="o"
    )
    with pytest.raises(SettingsError) as raised:
        LunaSpanExporter(settings.replace(endpoint="http://127.0.0.1:9/tok-XYZ", sink="pingcentre"))
    assert "tok-XYZ" not in str(raised.value)
    with pytest.raises(SettingsError):
        LunaSpanExporter(settings)
    assert not (tmp_path / "new").exists()  # checked before the sink opened anything


def test_a_repeating_mapping_error_is_logged_once_then_once_a_minute(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A span the mapping cannot map (a bug a sender can trigger span after span) is counted
    every time; the log gets its traceback once, then at most one line a minute with how many
    there were since — not 15 lines per span (review item 4: 2000 spans, 2 MB of log)."""
    ingest = Ingest(Settings.load({}, spool="memory"), InMemorySink())
    now = [1000.0]
    ingest._span_errors.clock = lambda: now[0]

    def broken(record: Any) -> list[Any]:
        raise TypeError("'int' object is not iterable")

    monkeypatch.setattr(ingest._span_mapper, "add", broken)
    record = SpanRecord({}, True, 1, 7, None, T0, T0 + 1, False, "s")
    try:
        with caplog.at_level("ERROR", logger="otel_luna.ingest"):
            assert ingest.write_spans([record] * 500).rejected == 500
            now[0] += 59
            ingest.write_spans([record] * 100)
            assert len(caplog.records) == 1
            assert caplog.records[0].exc_info is not None
            now[0] += 2
            ingest.write_spans([record])
            ingest.write_spans([record] * 10)
    finally:
        ingest.shutdown()
    assert len(caplog.records) == 2
    assert caplog.records[1].exc_info is None
    assert "could not map a span: 600 times in the last 61 s" in caplog.records[1].getMessage()
    assert "TypeError" in caplog.records[1].getMessage()
    assert ingest.mapping_counts()[Reason.MAPPING_ERROR] == 611


def test_each_batch_takes_what_the_mapper_and_the_encoder_counted() -> None:
    """After each batch the ingest takes what the mapper and the encoder counted (they hand it
    over; nobody points them at a counter): the batch's result has it once, the next batch
    does not see it again, and the ingest's counters hold both batches'."""
    ingest = Ingest(Settings.load({}, spool="memory"), InMemorySink())
    now = time.time_ns()
    attributes = {
        "http.request.method": "GET",
        "http.route": "/r",
        "http.response.status_code": 200,
        "luna.tag.client": "a\nb",  # the mapper drops it
        "luna.field.score_seconds": float("nan"),  # the encoder drops it
    }
    record = SpanRecord(attributes, True, 1, 7, None, now - 10**6, now, False, "s")
    newline = Reason.of("attribute_newline_in_tag_value")
    try:
        first = ingest.write_spans([record])
        assert first.rejected == 0
        assert first.problems == {newline: 1, Reason.NONFINITE_FIELD: 1}
        assert ingest.write_spans([record._replace(span_id=8)]).problems == first.problems
    finally:
        ingest.shutdown()
    counts = ingest.mapping_counts()
    assert counts[newline] == counts[Reason.NONFINITE_FIELD] == 2
    assert counts[Reason.SERVER_SPANS] == counts[Reason.MAPPED] == 2
