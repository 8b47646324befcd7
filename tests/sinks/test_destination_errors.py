"""Whole-destination failures hold the spool; nothing is dead-lettered that a fixed destination
would take. Against real InfluxDB 1.x: a database created only after the exporter started
(404 first), a user created only after it started (401 first), a user without the right to
write (403), bodies over ``max-body-size`` (413). Ping Centre's classes against its stub (a
fake: Ping Centre cannot be had here).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from otel_luna._cli import main
from otel_luna.delivery._memory_spool import MemorySpool
from otel_luna.delivery._writer import BatchWriter, DeadLetters
from otel_luna.settings import Settings
from otel_luna.sinks._influx_v1 import InfluxV1Sink
from otel_luna.sinks._pingcentre import PingCentreSink
from tests.support.exporterapp import DELIVERY_TIMEOUT, App
from tests.support.limits import SMALL_BODY_BYTES
from tests.support.pingcentre_stub import PingCentre
from tests.support.servers import InfluxDB1, unique_name
from tests.support.waiting import wait_until

#: The database appears this long after the exporter started (the issue's scenario).
DATABASE_LATE = 8.0
POINTS = 300


def stored_ids(influx: InfluxDB1, database: str) -> list[str]:
    return [row["request_id"] for row in influx.select("SELECT * FROM requests", database)]


def test_database_created_late_every_point_lands(
    influxdb1: InfluxDB1, app_factory: Callable[..., App], capsys: pytest.CaptureFixture[str]
) -> None:
    """The exporter starts before its database exists (404); the database is created 8 s
    later: every point lands, nothing is dead-lettered, and meanwhile `otel-luna status` shows
    the destination blocked with the server's reason."""
    started = time.monotonic()
    database = unique_name("late")
    app = app_factory(endpoint=influxdb1.url, database=database)
    app.requests(POINTS)
    entry = wait_until(app.blocked)
    assert entry["blocked"]["status"] == 404
    assert "database not found" in entry["blocked"]["reason"]
    assert main(["status", str(app.spool_dir)]) == 0
    shown = capsys.readouterr().out
    assert "destination BLOCKED since" in shown and "database not found" in shown
    time.sleep(max(0.0, DATABASE_LATE - (time.monotonic() - started)))  # the scenario's delay
    assert not app.dead_letter.exists()
    assert app.exporter.counts["written"] == 0 and app.exporter.counts["split_writes"] == 0

    influxdb1.create_database(database)
    try:
        assert app.exporter.force_flush(DELIVERY_TIMEOUT * 1000)
        assert sorted(stored_ids(influxdb1, database)) == sorted(app.ids)
        assert not app.dead_letter.exists()
        assert app.exporter.counts["dead_lettered"] == 0
        assert app.blocked() is None or wait_until(lambda: app.blocked() is None)
    finally:
        influxdb1.drop_database(database)


def test_user_created_late_every_point_lands(
    influxdb1_auth: InfluxDB1, app_factory: Callable[..., App]
) -> None:
    """Authentication on and the app's admin user created only after it started: 401 first,
    then every point lands and nothing is dead-lettered."""
    database = influxdb1_auth.fresh_database("auth")
    user, password = unique_name("luna"), uuid.uuid4().hex
    app = app_factory(
        endpoint=influxdb1_auth.url, database=database, username=user, password=password
    )
    app.requests(POINTS)
    entry = wait_until(app.blocked)
    assert entry["blocked"]["status"] == 401
    assert "authorization failed" in entry["blocked"]["reason"]
    assert password not in json.dumps(entry)

    influxdb1_auth.create_user(user, password)
    assert app.exporter.force_flush(DELIVERY_TIMEOUT * 1000)
    assert sorted(stored_ids(influxdb1_auth, database)) == sorted(app.ids)
    assert not app.dead_letter.exists()
    assert app.exporter.counts["dead_lettered"] == 0


def test_user_without_write_privilege_is_held_until_granted(
    influxdb1_auth: InfluxDB1, app_factory: Callable[..., App]
) -> None:
    """A user that may not write the database (403) holds the points until it is granted."""
    database = influxdb1_auth.fresh_database("grant")
    user, password = unique_name("reader"), uuid.uuid4().hex
    influxdb1_auth.query(f"CREATE USER \"{user}\" WITH PASSWORD '{password}'")
    app = app_factory(
        endpoint=influxdb1_auth.url, database=database, username=user, password=password
    )
    app.requests(20)
    entry = wait_until(app.blocked)
    assert entry["blocked"]["status"] == 403
    assert "not authorized to write" in entry["blocked"]["reason"]

    influxdb1_auth.query(f'GRANT WRITE ON "{database}" TO "{user}"')
    assert app.exporter.force_flush(DELIVERY_TIMEOUT * 1000)
    rows = influxdb1_auth.select("SELECT * FROM requests", database)
    assert sorted(row["request_id"] for row in rows) == sorted(app.ids)
    assert not app.dead_letter.exists()


def test_too_large_bodies_are_split_and_only_an_oversized_line_dead_lettered(
    influxdb1_small_body: InfluxDB1, tmp_path: Path
) -> None:
    """InfluxDB answers 413 to bodies over max-body-size: the writer splits batches until they
    fit; every line lands but one that alone is over the limit, which is dead-lettered."""
    database = influxdb1_small_body.fresh_database("small")
    now = time.time_ns()
    lines = [f"big,case=split x={index}i {now + index}" for index in range(400)]
    oversized = f'big,case=alone s="{"x" * SMALL_BODY_BYTES}" {now}'
    assert len("\n".join(lines)) > 4 * SMALL_BODY_BYTES
    letters = tmp_path / "dead.jsonl"
    writer = BatchWriter(
        InfluxV1Sink(Settings.load({}, endpoint=influxdb1_small_body.url, database=database)),
        MemorySpool(10**8),
        flush_interval=3600,
        batch_size=1000,
        dead_letters=DeadLetters(str(letters)),
    )
    try:
        writer.submit([*lines[:123], oversized, *lines[123:]])
        assert writer.force_flush(DELIVERY_TIMEOUT)
        counts = writer.all_counts()
    finally:
        writer.shutdown(10)
    rows = influxdb1_small_body.select("SELECT x FROM big", database)
    assert sorted(row["x"] for row in rows) == list(range(400))
    (letter,) = [json.loads(row) for row in letters.read_text().splitlines()]
    assert letter["line"] == oversized and letter["status"] == 413
    assert counts["dead_lettered"] == 1 and counts["written"] == 400
    assert counts["split_writes"] > 0


@pytest.fixture
def ping_centre() -> Iterator[PingCentre]:
    stub = PingCentre()
    yield stub
    stub.stop()


def ping_writer(ping_centre: PingCentre, letters: Path) -> BatchWriter:
    settings = Settings.load({}, endpoint=ping_centre.url, schema="watchdog", max_in_flight=4)
    return BatchWriter(
        PingCentreSink(settings),
        MemorySpool(10**6),
        flush_interval=0.05,
        batch_size=100,
        dead_letters=DeadLetters(str(letters)),
    )


@pytest.mark.parametrize("status", [401, 403, 404])
def test_ping_centre_refusing_everything_holds_every_ping(
    ping_centre: PingCentre, tmp_path: Path, status: int
) -> None:
    """401/403/404 from Ping Centre: no ping is dead-lettered, the rest of the batch is not
    sent, and once it answers again each ping is delivered exactly once."""
    letters = tmp_path / "dead.jsonl"
    writer = ping_writer(ping_centre, letters)
    ping_centre.answer = status
    try:
        writer.submit([f'{{"topic":"watchdog-proxy","n":{n}}}' for n in range(40)])
        state = wait_until(lambda: writer.blocked)
        assert state["status"] == status
        assert ping_centre.requests < 40  # sending stopped at the first refusal
        assert writer.queued == 40 and not letters.exists()
        ping_centre.answer = None
        assert writer.force_flush(DELIVERY_TIMEOUT)
    finally:
        writer.shutdown(10)
    assert sorted(ping["n"] for ping in ping_centre.pings) == list(range(40))
    assert not letters.exists() and writer.counts["dead_lettered"] == 0


def test_ping_centre_refusing_one_ping_dead_letters_only_it(
    ping_centre: PingCentre, tmp_path: Path
) -> None:
    """A ping Ping Centre finds too large (413) or malformed (400) is dead-lettered alone; the
    others are delivered."""
    letters = tmp_path / "dead.jsonl"
    ping_centre.max_body = 200
    writer = ping_writer(ping_centre, letters)
    big = json.dumps({"topic": "watchdog-proxy", "n": 100, "pad": "x" * 300})
    try:
        writer.submit(
            [
                *(f'{{"topic":"watchdog-proxy","n":{n}}}' for n in range(10)),
                big,
                '{"no_topic":true}',
            ]
        )
        assert writer.force_flush(DELIVERY_TIMEOUT)
    finally:
        writer.shutdown(10)
    assert sorted(ping["n"] for ping in ping_centre.pings) == list(range(10))
    records = [json.loads(row) for row in letters.read_text().splitlines()]
    assert sorted((r["status"], r["line"]) for r in records) == [
        (400, '{"no_topic":true}'),
        (413, big),
    ]
