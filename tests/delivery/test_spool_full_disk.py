"""The spool on a real full filesystem: a small tmpfs mounted as the spool directory.

Points whose export answered SUCCESS are all delivered, each exactly once, in a few writes and
never an empty one; the spool goes back to the disk once the backlog is delivered; the spool of
``otel-luna serve`` (no memory fallback) refuses what does not fit instead of half-storing it.
Mounting needs root, as here and in CI: a mount that fails fails the test, it never skips.
"""

from __future__ import annotations

import errno
import math
import re
import threading
from collections import Counter
from pathlib import Path

import pytest

from otel_luna import LunaSpanExporter, Settings
from otel_luna.delivery._fallback_spool import FallbackSpool, open_spool
from otel_luna.delivery._spool import SpoolUnavailable
from otel_luna.delivery._spool_status import describe
from otel_luna.delivery._writer import BatchWriter
from otel_luna.sinks import Sink
from otel_luna.sinks._influx_v1 import InfluxV1Sink
from otel_luna.testing import InMemorySink
from tests.delivery.test_reliability import request_id_of, server_spans, spooled_ids
from tests.support.limits import FULL_DISK_BYTES
from tests.support.servers import InfluxDB1, free_port

#: Size of the spool's filesystem: a few hundred KiB.
#: Points exported while the destination is down: about four times what the tmpfs holds.
POINTS = 4000
BATCH_SIZE = 500
#: Seconds for delivery once the destination is reachable.
DELIVERY_TIMEOUT = 60.0

_REQUEST_ID = re.compile(rb'request_id="([^"]*)"')


class SwitchableSink:
    """Writes through ``down`` until :meth:`bring_up`, then through ``up``. Counts every write
    (and the empty ones) and the request ids of each write that succeeded."""

    def __init__(self, down: Sink, up: Sink) -> None:
        self.down, self.up = down, up
        self._target = down
        self._lock = threading.Lock()
        self.writes = 0
        self.empty_writes = 0
        self.delivered: Counter[str] = Counter()

    def bring_up(self) -> int:
        """Switch to ``up``; the writes made until now."""
        with self._lock:
            self._target = self.up
            return self.writes

    def write(self, body: bytes) -> None:
        with self._lock:
            self.writes += 1
            self.empty_writes += not body.strip()
            target = self._target
        target.write(body)
        with self._lock:
            self.delivered.update(match.decode() for match in _REQUEST_ID.findall(body))

    def close(self) -> None:
        self.down.close()
        self.up.close()


def closed_port_sink(database: str) -> InfluxV1Sink:
    """An InfluxDB 1.x sink for a port nothing listens on: every write is refused."""
    url = f"http://127.0.0.1:{free_port()}"
    return InfluxV1Sink(Settings.load({}, endpoint=url, database=database, timeout=2.0))


def test_every_point_acknowledged_on_a_full_disk_is_delivered_exactly_once(
    influxdb1: InfluxDB1,
    influxdb1_database: str,
    full_disk: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Exports fill the tmpfs spool while InfluxDB is unreachable; each answers SUCCESS (the
    overflow waits in memory). Once InfluxDB is reachable every one of those points is written
    exactly once, in a few writes, none empty; then new points go to the disk again."""
    settings = Settings.load(
        {},
        endpoint=influxdb1.url,
        database=influxdb1_database,
        api_version="1",
        flush_interval=3600,  # writes happen when a batch is full and on force_flush only
        batch_size=BATCH_SIZE,
        spool_dir=str(full_disk),
        spool_retry_interval=0,  # try the disk again as soon as memory has drained
        dead_letter=str(tmp_path / "dead.jsonl"),
    )
    sink = SwitchableSink(closed_port_sink(influxdb1_database), InfluxV1Sink(settings))
    exporter = LunaSpanExporter(settings, sink=sink)
    assert exporter._ingest.delivery is not None
    spool = exporter._ingest.delivery.spool
    assert isinstance(spool, FallbackSpool)
    spans = server_spans(POINTS + 1)
    try:
        results = [exporter.export([span]).name for span in spans[:POINTS]]
        assert results == ["SUCCESS"] * POINTS
        assert spool.counts["spool_fallback_memory"] == 1  # the disk did fill up
        assert spool.disk.pending_lines > 0 and spool.memory.pending_lines > 0
        assert not spool.durable
        writes_while_down = sink.bring_up()
        assert exporter.force_flush(DELIVERY_TIMEOUT * 1000)
        writes = sink.writes - writes_while_down
        assert spool.durable and spool.pending_lines == 0
        # The backlog is delivered: the next point goes to the disk again (its space is back).
        assert exporter.export(spans[POINTS:]).name == "SUCCESS"
        assert spool.disk.pending_lines == 1 and spool.memory.pending_lines == 0
        assert request_id_of(spans[POINTS]) in spooled_ids(full_disk)
        assert exporter.force_flush(DELIVERY_TIMEOUT * 1000)
    finally:
        exporter.shutdown()
    expected = Counter(map(request_id_of, spans))
    assert sink.delivered == expected  # every acknowledged point, each exactly once
    assert sink.empty_writes == 0
    assert writes <= math.ceil(POINTS / BATCH_SIZE) + 2  # disk and memory each end a batch
    rows = influxdb1.select("SELECT * FROM requests", influxdb1_database)
    assert Counter(row["request_id"] for row in rows) == expected


def test_serve_spool_on_a_full_disk_refuses_and_keeps_what_it_took(full_disk: Path) -> None:
    """Without memory fallback, the chunk that does not fit raises SpoolUnavailable (ENOSPC),
    nothing of it counted or stored; every chunk taken is delivered once; with the backlog
    delivered, the disk takes chunks again."""
    up = InMemorySink()
    sink = SwitchableSink(closed_port_sink("luna"), up)
    spool = open_spool("disk", str(full_disk / "dest"), 10**8, memory_fallback=False)
    writer = BatchWriter(sink, spool, flush_interval=3600.0, batch_size=BATCH_SIZE)
    taken: list[str] = []
    try:
        with pytest.raises(SpoolUnavailable) as refused:
            for chunk in range(FULL_DISK_BYTES):  # far more than fits
                lines = [f"m,chunk={chunk} x={index}i" for index in range(50)]
                writer.submit(lines)
                taken += lines
        assert refused.value.errno == errno.ENOSPC
        assert taken and writer.counts["spooled"] == spool.pending_lines == len(taken)
        [entry] = describe(full_disk)
        assert entry["pending_lines"] == len(taken) and entry["corrupt_records"] == 0
        sink.bring_up()
        assert writer.force_flush(DELIVERY_TIMEOUT)
        assert up.lines == taken
        writer.submit(["m,chunk=after x=1i"])  # delivered records gave their space back
        assert writer.force_flush(DELIVERY_TIMEOUT)
    finally:
        writer.shutdown(10)
    assert up.lines == [*taken, "m,chunk=after x=1i"]
    assert sink.empty_writes == 0
