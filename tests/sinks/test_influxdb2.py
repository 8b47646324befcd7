"""The InfluxDB 2.x sink against a real InfluxDB OSS 2.7 (``influxd`` built from its Go module by
``scripts/build-influxdb2``): organization, bucket, token; a bucket that does not exist yet and
tokens that may not write hold the spool (never a dead letter); a partial write (422: a field
type conflict, a point outside the bucket's retention) dead-letters only the lines refused.
What was written is read back with ``influxdb-client``, InfluxData's own client, over Flux.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from influxdb_client import InfluxDBClient

from otel_luna._cli import main
from otel_luna.delivery._memory_spool import MemorySpool
from otel_luna.delivery._writer import BatchWriter, DeadLetters
from otel_luna.settings import Settings
from otel_luna.sinks._influx_v2 import InfluxV2Sink
from tests.support.exporterapp import DELIVERY_TIMEOUT, App
from tests.support.servers import InfluxDB2, unique_name
from tests.support.waiting import wait_until

POINTS = 300


def rows(influx: InfluxDB2, bucket: str, measurement: str) -> list[dict[str, Any]]:
    """Every point of ``measurement`` in ``bucket``, fields pivoted into one row per point,
    read with influxdb-client's Flux query API."""
    query = (
        f'from(bucket: "{bucket}") |> range(start: 0)'
        f' |> filter(fn: (r) => r._measurement == "{measurement}")'
        ' |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")'
    )
    with InfluxDBClient(url=influx.url, token=influx.token, org=influx.org) as client:
        tables = client.query_api().query(query)
    return [record.values for table in tables for record in table.records]


def v2_settings(influx: InfluxDB2, bucket: str, **settings: Any) -> dict[str, Any]:
    return {
        "endpoint": influx.url,
        "api_version": "2",
        "org": influx.org,
        "bucket": bucket,
        "token": influx.token,
        **settings,
    }


def test_every_request_is_written_to_the_bucket(
    influxdb2: InfluxDB2, influxdb2_bucket: str, app_factory: Callable[..., App]
) -> None:
    """Spans exported in process become `requests` points in the bucket, read back over Flux
    with the documented tags and fields."""
    app = app_factory(**v2_settings(influxdb2, influxdb2_bucket))
    app.requests(POINTS)
    assert app.flush(DELIVERY_TIMEOUT)
    stored = rows(influxdb2, influxdb2_bucket, "requests")
    assert sorted(row["request_id"] for row in stored) == sorted(app.ids)
    row = stored[0]
    assert (row["service"], row["route"], row["status_code"]) == ("dest", "POST:/work", "200")
    assert isinstance(row["execution_time"], float)
    assert not app.dead_letter.exists()


def test_a_bucket_created_late_gets_every_point(
    influxdb2: InfluxDB2, app_factory: Callable[..., App], capsys: pytest.CaptureFixture[str]
) -> None:
    """A bucket that does not exist yet (404) blocks the destination: `otel-luna status` says
    why; once the bucket is created every point lands and nothing was dead-lettered."""
    bucket = unique_name("late")
    app = app_factory(**v2_settings(influxdb2, bucket))
    app.requests(POINTS)
    entry = wait_until(app.blocked)
    assert entry["blocked"]["status"] == 404
    assert f'bucket "{bucket}" not found' in entry["blocked"]["reason"]
    assert influxdb2.token not in json.dumps(entry)
    assert main(["status", str(app.spool_dir)]) == 0
    assert "destination BLOCKED since" in capsys.readouterr().out
    assert app.exporter.counts["written"] == 0

    influxdb2.create_bucket(bucket)
    try:
        assert app.flush(DELIVERY_TIMEOUT)
        stored = rows(influxdb2, bucket, "requests")
        assert sorted(row["request_id"] for row in stored) == sorted(app.ids)
        assert not app.dead_letter.exists()
        assert app.exporter.counts["dead_lettered"] == 0
    finally:
        influxdb2.delete_bucket(bucket)


@pytest.mark.parametrize("token", ["unknown", "read-only"])
def test_a_token_that_may_not_write_holds_every_point(
    influxdb2: InfluxDB2, influxdb2_bucket: str, app_factory: Callable[..., App], token: str
) -> None:
    """An unknown token (401) or one that may only read (403) blocks the destination, with
    InfluxDB's reason and the token nowhere in what status shows; nothing is dead-lettered."""
    secret = (
        f"unknown-{uuid.uuid4().hex}" if token == "unknown" else influxdb2.create_token("read only")
    )
    app = app_factory(**v2_settings(influxdb2, influxdb2_bucket, token=secret))
    app.requests(20)
    entry = wait_until(app.blocked)
    expected = {"unknown": (401, "unauthorized access"), "read-only": (403, "insufficient")}
    status, reason = expected[token]
    assert entry["blocked"]["status"] == status
    assert reason in entry["blocked"]["reason"]
    assert secret not in json.dumps(entry)
    assert app.exporter.counts["written"] == 0
    assert not app.dead_letter.exists()
    assert rows(influxdb2, influxdb2_bucket, "requests") == []


@pytest.fixture
def writer_to(tmp_path: Path) -> Iterator[Callable[..., tuple[BatchWriter, Path]]]:
    """A writer of the v2 sink to a bucket, its dead letters in a file of the test."""
    writers: list[BatchWriter] = []

    def make(influx: InfluxDB2, bucket: str) -> tuple[BatchWriter, Path]:
        letters = tmp_path / f"dead-{len(writers)}.jsonl"
        sink = InfluxV2Sink(Settings.load({}, **v2_settings(influx, bucket)))
        writer = BatchWriter(
            sink,
            MemorySpool(10**8),
            flush_interval=3600,
            batch_size=1000,
            dead_letters=DeadLetters(str(letters)),
        )
        writers.append(writer)
        return writer, letters

    yield make
    for writer in writers:
        writer.shutdown(10)


def test_a_field_type_conflict_dead_letters_only_its_line(
    influxdb2: InfluxDB2,
    influxdb2_bucket: str,
    writer_to: Callable[..., tuple[BatchWriter, Path]],
) -> None:
    """422 partial write: the one line whose field has another type than the shard holds is
    dead-lettered with InfluxDB's reason; every other line of its batch is stored."""
    now = time.time_ns()
    influxdb2.write(
        f'requests,route=GET:/x,service=s download_images_time="x" {now}', influxdb2_bucket
    )
    good = [f'requests,route=GET:/x,service=s request_id="{i}" {now + 1 + i}' for i in range(100)]
    bad = f"requests,route=GET:/x,service=s download_images_time=0.004 {now + 500}"
    writer, letters = writer_to(influxdb2, influxdb2_bucket)
    writer.submit([*good[:40], bad, *good[40:]])
    assert writer.force_flush(DELIVERY_TIMEOUT)
    counts = writer.all_counts()
    stored = rows(influxdb2, influxdb2_bucket, "requests")
    assert sorted(row["request_id"] for row in stored if row.get("request_id")) == sorted(
        str(i) for i in range(100)
    )
    (letter,) = [json.loads(line) for line in letters.read_text().splitlines()]
    assert letter["line"] == bad and letter["status"] == 422
    assert "field type conflict" in letter["reason"]
    assert counts["dead_lettered"] == 1 and counts["written"] == 100


def test_points_outside_the_retention_are_dead_lettered_alone(
    influxdb2: InfluxDB2, writer_to: Callable[..., tuple[BatchWriter, Path]]
) -> None:
    """A bucket keeping 1 h refuses (422) a point dated 2 h ago; the others are stored."""
    bucket = unique_name("hour")
    influxdb2.create_bucket(bucket, retention_seconds=3600)
    try:
        now = time.time_ns()
        old = f'requests,service=s request_id="old" {now - 2 * 3600 * 10**9}'
        recent = [f'requests,service=s request_id="{i}" {now + i}' for i in range(50)]
        writer, letters = writer_to(influxdb2, bucket)
        writer.submit([*recent[:10], old, *recent[10:]])
        assert writer.force_flush(DELIVERY_TIMEOUT)
        stored = rows(influxdb2, bucket, "requests")
        assert sorted(row["request_id"] for row in stored) == sorted(str(i) for i in range(50))
        (letter,) = [json.loads(line) for line in letters.read_text().splitlines()]
        assert letter["line"] == old and letter["status"] == 422
        assert "outside retention policy" in letter["reason"]
    finally:
        influxdb2.delete_bucket(bucket)


def test_the_1x_write_api_of_2x_takes_the_token_as_password(
    influxdb2: InfluxDB2, influxdb2_bucket: str, app_factory: Callable[..., App]
) -> None:
    """API 1 against a 2.x: ``/write?db=<bucket>&rp=autogen`` (the bucket's virtual DBRP
    mapping) with the token as the basic-auth password writes the same points."""
    app = app_factory(
        endpoint=influxdb2.url,
        api_version="1",
        database=influxdb2_bucket,
        retention_policy="autogen",
        username="any",
        password=influxdb2.token,
    )
    app.requests(50)
    assert app.flush(DELIVERY_TIMEOUT)
    stored = rows(influxdb2, influxdb2_bucket, "requests")
    assert sorted(row["request_id"] for row in stored) == sorted(app.ids)
    assert not app.dead_letter.exists()
