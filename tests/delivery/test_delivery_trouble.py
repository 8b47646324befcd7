"""Delivery trouble in the log: one warning per class of trouble (connection refused, DNS, TLS,
timeout, 4xx by status, 5xx) naming the destination without its secrets, once a minute per
class while it lasts, and one line when writes succeed again. Against real InfluxDB 1.x (a
missing database, a refused password), a closed port (``closedport.py``) and the fault proxy
answering 503 in InfluxDB's place (``faultproxy.py``); the minute is a clock the test moves.
"""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Iterator

import pytest
import urllib3

from otel_luna._cli import status_entries
from otel_luna.delivery import destination_name, open_delivery
from otel_luna.delivery._memory_spool import MemorySpool
from otel_luna.delivery._writer import BatchWriter
from otel_luna.settings import Settings
from otel_luna.sinks import connection_trouble
from otel_luna.sinks._influx_v1 import InfluxV1Sink
from otel_luna.sinks._pingcentre import PingCentreSink
from tests.support.closedport import ClosedPort
from tests.support.faultproxy import PASS, FaultProxy, status
from tests.support.servers import InfluxDB1, unique_name
from tests.support.waiting import wait_until

LINES = [f"trouble,k=v x={index}i {1_700_000_000_000_000_000 + index}" for index in range(7)]
FLUSH_TIMEOUT = 30.0


class Clock:
    """Monotonic seconds that move only when the test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno >= logging.WARNING and text in record.getMessage()
    ]


def wait_for_warnings(caplog: pytest.LogCaptureFixture, text: str, count: int) -> list[str]:
    return wait_until(lambda: len(warnings(caplog, text)) >= count and warnings(caplog, text))


def held_once(batch: BatchWriter) -> None:
    """One more write attempt (a flush ends the backoff); it fails."""
    assert batch.force_flush(0.2) is False


def first_trouble(
    batch: BatchWriter,
    caplog: pytest.LogCaptureFixture,
    trouble: str,
    lines: list[str] = LINES,
    level: int = logging.WARNING,
) -> str:
    """The one warning naming ``trouble`` after ``lines`` were submitted and their first write
    failed; the writer is shut down then."""
    with caplog.at_level(level, logger="otel_luna.delivery._writer"):
        batch.submit(lines)
        held_once(batch)
        (line,) = wait_for_warnings(caplog, trouble, 1)
    batch.shutdown(0.1)
    return line


@pytest.fixture
def closed_port(influxdb1: InfluxDB1) -> Iterator[ClosedPort]:
    port = ClosedPort(influxdb1.host, influxdb1.port)
    yield port
    port.close()


def test_refused_connection_is_logged_with_the_destination_and_its_recovery(
    influxdb1: InfluxDB1,
    influxdb1_database: str,
    closed_port: ClosedPort,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """InfluxDB down at start: a warning says the destination (endpoint and database), the
    class ``connection refused`` and how many points wait; once it listens, one line says
    delivery works again, after how long, and how many points waited."""
    settings = Settings.load({}, endpoint=closed_port.url, database=influxdb1_database)
    batch = open_delivery(settings, InfluxV1Sink(settings))
    with caplog.at_level(logging.WARNING, logger="otel_luna.delivery._writer"):
        batch.submit(LINES)
        held_once(batch)
        (refused,) = wait_for_warnings(caplog, "connection refused", 1)
        assert f"cannot deliver to {closed_port.url} (database {influxdb1_database})" in refused
        assert f"{len(LINES)} points wait in the spool, retrying" in refused
        assert batch.trouble is not None and batch.trouble["kind"] == "connection refused"
        entry = wait_until(
            lambda: next((e for e in status_entries(settings.spool_dir) if "trouble" in e), None)
        )
        assert entry["trouble"]["kind"] == "connection refused" and "trouble" not in entry["counts"]
        closed_port.open()
        assert batch.force_flush(FLUSH_TIMEOUT)
        (recovered,) = warnings(caplog, "delivering again")
    batch.shutdown(10)
    assert f"delivering again to {closed_port.url} (database {influxdb1_database})" in recovered
    assert f"(connection refused), {len(LINES)} points waited" in recovered
    assert batch.trouble is None
    assert len(influxdb1.select("SELECT * FROM trouble", influxdb1_database)) == len(LINES)


def test_missing_database_is_logged_as_http_404(
    influxdb1: InfluxDB1, caplog: pytest.LogCaptureFixture
) -> None:
    database = unique_name("missing")
    settings = Settings.load({}, endpoint=influxdb1.url, database=database)
    batch = BatchWriter(
        InfluxV1Sink(settings),
        MemorySpool(10**8),
        flush_interval=3600,
        batch_size=1000,
        destination=destination_name(settings),
    )
    line = first_trouble(batch, caplog, "HTTP 404")
    assert f"cannot deliver to {influxdb1.url} (database {database}): HTTP 404;" in line
    assert "(blocked)" in line and "database not found" in line


def test_refused_password_is_logged_as_http_401_without_the_password(
    influxdb1_auth: InfluxDB1, caplog: pytest.LogCaptureFixture
) -> None:
    password = f"Pw-{uuid.uuid4().hex}"
    settings = Settings.load(
        {},
        endpoint=influxdb1_auth.url,
        database=influxdb1_auth.fresh_database("auth"),
        username=unique_name("nobody"),
        password=password,
    )
    batch = open_delivery(settings, InfluxV1Sink(settings))
    line = first_trouble(batch, caplog, "HTTP 401", level=logging.DEBUG)
    assert f"cannot deliver to {influxdb1_auth.url} (database {settings.database})" in line
    assert "(blocked)" in line
    assert all(password not in record.getMessage() for record in caplog.records)


def test_server_errors_are_logged_as_http_5xx(
    influxdb1: InfluxDB1, influxdb1_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The fault proxy answers 503 where InfluxDB would (InfluxDB 1.x gives no 5xx on
    demand)."""
    with FaultProxy(influxdb1.url, default=status(503)) as proxy:
        settings = Settings.load({}, endpoint=proxy.url, database=influxdb1_database)
        batch = open_delivery(settings, InfluxV1Sink(settings))
        line = first_trouble(batch, caplog, "HTTP 5xx")
    assert f"cannot deliver to {proxy.url} (database {influxdb1_database}): HTTP 5xx;" in line
    assert "retrying: " in line and "HTTP 503" in line


def test_tls_to_a_plain_http_server_is_logged_as_a_tls_error(
    influxdb1: InfluxDB1, influxdb1_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint = influxdb1.url.replace("http://", "https://")
    settings = Settings.load({}, endpoint=endpoint, database=influxdb1_database)
    batch = open_delivery(settings, InfluxV1Sink(settings))
    line = first_trouble(batch, caplog, "TLS error")
    assert f"cannot deliver to {endpoint} (database {influxdb1_database}): TLS error;" in line


def test_connection_trouble_classes() -> None:
    """What urllib3 raises before any reply, by class (DNS without a lookup leaving the host)."""
    exceptions = urllib3.exceptions
    cause = socket.gaierror(-2, "Name or service not known")
    dns = exceptions.NameResolutionError("nowhere.invalid", None, cause)  # type: ignore[arg-type]
    assert connection_trouble(dns) == "DNS failure"
    refused = exceptions.NewConnectionError(None, "refused")  # type: ignore[arg-type]
    refused.__cause__ = ConnectionRefusedError(111, "Connection refused")
    assert connection_trouble(refused) == "connection refused"
    assert connection_trouble(exceptions.ReadTimeoutError(None, "/", "x")) == "timeout"  # type: ignore[arg-type]
    assert connection_trouble(exceptions.ProtocolError("reset")) == "connection reset"
    assert connection_trouble(exceptions.SSLError("bad")) == "TLS error"


def test_each_class_is_logged_once_a_minute_while_it_lasts(
    influxdb1: InfluxDB1, influxdb1_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A 503 is logged at once, not again 30 s later; a 404 meanwhile is its own class and
    logged at once; the 503 again 61 s after the first; the recovery line names both."""
    clock = Clock()
    with FaultProxy(influxdb1.url, default=status(503)) as proxy:
        settings = Settings.load({}, endpoint=proxy.url, database=influxdb1_database)
        batch = BatchWriter(
            InfluxV1Sink(settings),
            MemorySpool(10**8),
            flush_interval=3600,
            batch_size=1000,
            destination=destination_name(settings),
            clock=clock,
        )
        with caplog.at_level(logging.WARNING, logger="otel_luna.delivery._writer"):
            batch.submit(LINES)
            held_once(batch)
            wait_for_warnings(caplog, "HTTP 5xx", 1)
            clock.now += 30
            held_once(batch)
            proxy.default = status(404)
            held_once(batch)
            # The worker is one thread: the 404's warning comes after the 30 s 503 was handled.
            wait_for_warnings(caplog, "HTTP 404", 1)
            assert len(warnings(caplog, "HTTP 5xx")) == 1
            clock.now += 31
            proxy.default = status(503)
            held_once(batch)
            again = wait_for_warnings(caplog, "HTTP 5xx", 2)[1]
            clock.now += 9
            proxy.default = PASS
            assert batch.force_flush(FLUSH_TIMEOUT)
            (recovered,) = warnings(caplog, "delivering again")
        batch.shutdown(10)
    assert proxy.faults == {"503": 3, "404": 1}
    assert len(warnings(caplog, "HTTP 404;")) == 1
    assert again.startswith(f"otel-luna: still cannot deliver after 61 s to {proxy.url}")
    assert f"after 70 s (HTTP 5xx, HTTP 404), {len(LINES)} points waited" in recovered


def test_ping_centre_refused_connection_is_logged_by_class(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Ping Centre's sink posts each ping itself: its connection trouble has a class too."""
    port = ClosedPort("127.0.0.1", 9)
    try:
        settings = Settings.load({}, endpoint=port.url, schema="watchdog", sink="pingcentre")
        batch = open_delivery(settings, PingCentreSink(settings))
        line = first_trouble(batch, caplog, "connection refused", ['{"topic": "t", "value": 1}'])
    finally:
        port.close()
    assert line.startswith(f"otel-luna: cannot deliver to {port.url}: connection refused;")
