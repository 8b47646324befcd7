"""Exit with the spool's disk full and the database down: what is on disk stays for the next
start, what only memory held is counted and reported as lost — never claimed to be spooled —
and `otel-luna status` says points are held in memory while it lasts.

A small tmpfs is the spool directory (mounting needs root, as here and in CI: a mount that
fails fails the test); the database is a real InfluxDB 1.x behind a port that refuses
connections until the next start opens it (same endpoint, so the spool is replayed there).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from otel_luna import LunaSpanExporter, Settings
from otel_luna._cli import main
from otel_luna.delivery._fallback_spool import FallbackSpool
from tests.delivery.test_reliability import request_id_of, server_spans
from tests.support.closedport import ClosedPort
from tests.support.servers import InfluxDB1

#: About three times what the tmpfs holds.
POINTS = 3000
DELIVERY_TIMEOUT = 60.0


def status(spool_dir: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    assert main(["status", str(spool_dir), *args]) == 0
    return capsys.readouterr().out


def test_exit_in_memory_fallback_counts_what_is_lost_and_keeps_what_is_on_disk(
    influxdb1: InfluxDB1,
    influxdb1_database: str,
    full_disk: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """3,000 points into a 256 KiB spool with the database unreachable: the disk takes the
    first ones, memory the rest. Meanwhile status reports the memory fallback (stats rewritten
    in place on the full disk). At shutdown the disk's lines are counted left_in_spool and the
    memory's dropped_at_shutdown, each logged as what it is; the next start delivers exactly
    the points that were on disk."""
    port = ClosedPort(influxdb1.host, influxdb1.port)
    settings = Settings.load(
        {},
        endpoint=port.url,
        database=influxdb1_database,
        api_version="1",
        flush_interval=3600,  # the writer runs on full batches and flushes only
        batch_size=500,
        shutdown_timeout=0.5,
        spool_dir=str(full_disk),
        dead_letter=str(tmp_path / "dead.jsonl"),
    )
    spans = server_spans(POINTS)
    try:
        exporter = LunaSpanExporter(settings)
        writer = exporter._ingest.delivery
        assert writer is not None and isinstance(writer.spool, FallbackSpool)
        spool = writer.spool
        assert [exporter.export([span]).name for span in spans] == ["SUCCESS"] * POINTS
        on_disk, in_memory = spool.disk.pending_lines, spool.memory.pending_lines
        assert on_disk > 0 and in_memory > 0 and on_disk + in_memory == POINTS

        assert writer.force_flush(0.2) is False  # an attempt, then the stats

        def fallback_reported() -> dict[str, Any] | None:
            (entry,) = json.loads(status(full_disk, capsys, "--json"))["processes"]
            fallback = entry.get("memory_fallback") or {}
            return entry if fallback.get("pending_lines") == in_memory else None

        deadline = time.monotonic() + DELIVERY_TIMEOUT
        while (entry := fallback_reported()) is None:
            assert time.monotonic() < deadline, "status never showed the memory fallback"
            time.sleep(0.05)
        assert entry["pending_lines"] == on_disk
        assert "No space left on device" in entry["memory_fallback"]["reason"]
        text = status(full_disk, capsys)
        assert f"{in_memory} points held in memory only, lost if the process ends" in text

        with caplog.at_level(logging.WARNING, logger="otel_luna.delivery._writer"):
            exporter.shutdown()
        assert writer.counts["left_in_spool"] == on_disk
        assert writer.counts["dropped_at_shutdown"] == in_memory
        messages = [record.getMessage() for record in caplog.records]
        assert any(
            message.startswith(f"otel-luna: {on_disk} lines not delivered at shutdown stay in")
            for message in messages
        ), messages
        assert any(
            message.startswith(f"otel-luna: {in_memory} lines not delivered at shutdown were ")
            and "held in memory only" in message
            and message.endswith("are lost (dropped_at_shutdown)")
            for message in messages
        ), messages

        port.open()  # the next start: same endpoint, the database reachable
        again = LunaSpanExporter(settings)
        assert again.force_flush(DELIVERY_TIMEOUT * 1000)
        again.shutdown()
    finally:
        port.close()
    rows = influxdb1.select("SELECT * FROM requests", influxdb1_database)
    assert Counter(row["request_id"] for row in rows) == Counter(
        request_id_of(span) for span in spans[:on_disk]
    )
