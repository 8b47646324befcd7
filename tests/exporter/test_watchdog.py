"""watchdog profile: pings with exactly the documented keys and JSON types, through a local
receiver with Ping Centre's contract (a fake), and the same events as InfluxDB points."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from otel_luna import watchdog
from otel_luna._exporter import LunaSpanExporter
from otel_luna.settings import Settings
from tests.support.pingcentre_stub import PingCentre

#: The documented examples' keys and JSON types (shared/seeds/002_*.txt).
DOCUMENTED = {
    "new_item": {
        "topic": str,
        "timestamp": int,
        "consumer_name": str,
        "event": str,
        "watchdog_id": str,
        "type": str,
    },
    "poller_heartbeat": {
        "topic": str,
        "timestamp": int,
        "event": str,
        "poller_id": str,
        "items_in_queue": int,
        "items_in_progress": int,
        "items_in_waiting": int,
    },
    "worker_works": {
        "topic": str,
        "timestamp": int,
        "event": str,
        "worker_id": str,
        "consumer_name": str,
        "watchdog_id": str,
        "photodna_tracking_id": str,
        "is_match": bool,
        "is_error": bool,
        "timing_sent": int,
        "timing_received": int,
        "timing_submitted": int,
    },
}


@pytest.fixture
def ping_centre() -> Iterator[PingCentre]:
    stub = PingCentre()
    yield stub
    stub.stop()


def provider_for(settings: Settings) -> tuple[TracerProvider, LunaSpanExporter]:
    exporter = LunaSpanExporter(settings)
    provider = TracerProvider(resource=Resource.create({"service.name": "watchdog-proxy"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def emit_all(provider: TracerProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    """The three events as the seed describes them, and a worker that raises."""
    monkeypatch.setattr(watchdog, "_tracer", lambda: provider.get_tracer("otel_luna.watchdog"))
    watchdog.new_item("screenshots", "9ad08ec4", "image/png")
    watchdog.poller_heartbeat("31417de1", 1504, 22, 38)
    with watchdog.worker_works("8cdb1e6b", "screenshots", "9ad08ec4") as work:
        with work.sent():
            time.sleep(0.002)
        with work.received():
            pass
        work.set_photodna_tracking_id("1_photodna_a0e3d02b")
        work.set_match(False)
        with work.submitted():
            pass
    with pytest.raises(RuntimeError), watchdog.worker_works("w2", "screenshots", "id2") as work:
        with work.sent():
            pass
        raise RuntimeError("PhotoDNA is down")


def test_pings_have_the_documented_keys_and_types(
    ping_centre: PingCentre, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every ping's keys and JSON types equal the documented example; a raising worker still
    sends worker_works with is_error true and null for the timings it did not reach."""
    settings = Settings.load(
        {},
        schema="watchdog",
        sink="pingcentre",
        endpoint=ping_centre.url,
        flush_interval=0.05,
        spool_dir=str(tmp_path / "spool"),
    )
    provider, exporter = provider_for(settings)
    emit_all(provider, monkeypatch)
    assert exporter.force_flush(10_000)
    provider.shutdown()
    by_event: dict[str, list[dict[str, object]]] = {}
    for ping in ping_centre.pings:
        by_event.setdefault(str(ping["event"]), []).append(ping)
    assert sorted(by_event) == sorted(DOCUMENTED)
    for event, pings in by_event.items():
        for ping in pings:
            assert set(ping) == set(DOCUMENTED[event])
            assert ping["topic"] == "watchdog-proxy"
            for key, kind in DOCUMENTED[event].items():
                if ping[key] is not None:
                    assert type(ping[key]) is kind, (event, key, ping[key])
    works = {ping["watchdog_id"]: ping for ping in by_event["worker_works"]}
    good, failed = works["9ad08ec4"], works["id2"]  # pings are POSTed concurrently: any order
    assert good["is_error"] is False and good["is_match"] is False
    assert isinstance(good["timing_sent"], int) and good["timing_sent"] >= 2
    assert failed["is_error"] is True
    assert failed["timing_sent"] is not None
    assert failed["timing_received"] is None and failed["timing_submitted"] is None
    assert failed["is_match"] is None and failed["photodna_tracking_id"] is None
    heartbeat = by_event["poller_heartbeat"][0]
    assert (heartbeat["items_in_queue"], heartbeat["items_in_progress"]) == (1504, 22)
    assert abs(int(str(heartbeat["timestamp"])) - time.time() * 1000) < 60_000


def test_ping_centre_400_is_dead_lettered_others_delivered(
    ping_centre: PingCentre, tmp_path: Path
) -> None:
    """A ping Ping Centre refuses (400) goes to the dead-letter file; the rest are delivered."""
    from otel_luna.delivery._memory_spool import MemorySpool
    from otel_luna.delivery._writer import BatchWriter, DeadLetters
    from otel_luna.sinks._pingcentre import PingCentreSink

    settings = Settings.load({}, endpoint=ping_centre.url, schema="watchdog")
    letters = tmp_path / "dead.jsonl"
    writer = BatchWriter(
        PingCentreSink(settings),
        MemorySpool(10**6),
        flush_interval=0.05,
        batch_size=100,
        dead_letters=DeadLetters(str(letters)),
    )
    writer.submit(
        [
            '{"topic":"watchdog-proxy","n":1}',
            '{"no_topic":true}',
            '{"topic":"watchdog-proxy","n":2}',
        ]
    )
    assert writer.force_flush(10)
    writer.shutdown(10)
    assert sorted(ping["n"] for ping in ping_centre.pings) == [1, 2]
    assert writer.counts["dead_lettered"] == 1 and writer.counts["written"] == 2
    (letter,) = [json.loads(row) for row in letters.read_text().splitlines()]
    assert (letter["line"], letter["status"]) == ('{"no_topic":true}', 400)


def test_only_failed_pings_are_retried(ping_centre: PingCentre) -> None:
    """While Ping Centre is down pings wait; afterwards each is delivered exactly once."""
    from otel_luna.delivery._memory_spool import MemorySpool
    from otel_luna.delivery._writer import BatchWriter
    from otel_luna.sinks._pingcentre import PingCentreSink

    settings = Settings.load({}, endpoint=ping_centre.url, schema="watchdog")
    writer = BatchWriter(
        PingCentreSink(settings), MemorySpool(10**6), flush_interval=0.05, batch_size=100
    )
    ping_centre.down = True
    writer.submit([f'{{"topic":"watchdog-proxy","n":{n}}}' for n in range(20)])
    deadline = time.monotonic() + 10
    while ping_centre.requests < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    ping_centre.down = False
    assert writer.force_flush(30)
    writer.shutdown(10)
    assert sorted(ping["n"] for ping in ping_centre.pings) == list(range(20))
