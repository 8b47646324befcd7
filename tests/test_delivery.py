"""Delivery: hand-off without waiting, batching, retry of retryable failures, shutdown flush."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from otel_luna.delivery import BatchWriter, DeadLetters
from otel_luna.sinks import SinkError
from otel_luna.spool import DiskSpool, MemorySpool
from otel_luna.testing import InMemorySink


class FlakySink(InMemorySink):
    """Fails the first ``failures`` writes with the given error, then accepts."""

    def __init__(self, failures: int, error: SinkError) -> None:
        super().__init__()
        self.failures = failures
        self.error = error
        self.attempts = 0

    def write(self, body: bytes) -> None:
        self.attempts += 1
        if self.failures > 0:
            self.failures -= 1
            raise self.error
        super().write(body)


class BlockingSink(InMemorySink):
    """Blocks every write until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, body: bytes) -> None:
        self.release.wait(10)
        super().write(body)


def writer(
    sink: InMemorySink,
    spool: DiskSpool | MemorySpool | None = None,
    dead_letters: DeadLetters | None = None,
    **options: float,
) -> BatchWriter:
    settings = {"flush_interval": 3600.0, "batch_size": 1000}
    settings.update(options)
    return BatchWriter(
        sink,
        spool if spool is not None else MemorySpool(10**8),
        dead_letters=dead_letters,
        **settings,  # type: ignore[arg-type]
    )


def test_submit_does_not_wait_for_the_sink() -> None:
    """submit() returns while the sink is blocked; the lines arrive once it unblocks."""
    sink = BlockingSink()
    batch = writer(sink, batch_size=1)
    started = time.monotonic()
    for index in range(100):
        batch.submit([f"m x={index}i"])
    assert time.monotonic() - started < 5  # generous: the sink blocks for 10 s
    sink.release.set()
    assert batch.force_flush(10)
    assert len(sink.lines) == 100
    batch.shutdown(10)


def test_batches_respect_batch_size() -> None:
    """No write carries more than batch_size lines; all lines arrive in order."""
    sizes: list[int] = []

    class Recording(InMemorySink):
        def write(self, body: bytes) -> None:
            sizes.append(body.count(b"\n"))
            super().write(body)

    sink = Recording()
    batch = writer(sink, batch_size=7)
    batch.submit([f"m x={index}i" for index in range(50)])
    assert batch.force_flush(10)
    assert max(sizes) <= 7
    assert sink.lines == [f"m x={index}i" for index in range(50)]
    batch.shutdown(10)


def test_flush_interval_writes_without_force_flush() -> None:
    """Lines are written within the flush interval with no explicit flush."""
    sink = InMemorySink()
    batch = writer(sink, flush_interval=0.05)
    batch.submit(["m x=1i"])
    deadline = time.monotonic() + 10
    while not sink.lines and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sink.lines == ["m x=1i"]
    batch.shutdown(10)


def test_retryable_failures_are_retried_until_written() -> None:
    """A retryable error keeps the batch and retries it; nothing is lost or duplicated."""
    sink = FlakySink(3, SinkError("503", retryable=True, status=503))
    batch = writer(sink)
    batch.submit(["m x=1i", "m x=2i"])
    assert batch.force_flush(30)
    assert sink.lines == ["m x=1i", "m x=2i"]
    assert sink.attempts == 4
    assert batch.counts["retried"] == 6
    assert batch.counts["written"] == 2
    batch.shutdown(10)


def test_permanent_failure_drops_and_counts() -> None:
    """A line rejected for good is dead-lettered and counted; later batches still go through."""
    sink = FlakySink(1, SinkError("400 bad", retryable=False, status=400))
    batch = writer(sink)
    batch.submit(["m x=1i"])
    assert batch.force_flush(10)
    batch.submit(["m x=2i"])
    assert batch.force_flush(10)
    assert sink.lines == ["m x=2i"]
    assert batch.counts["dead_lettered"] == 1
    batch.shutdown(10)


def test_full_spool_drops_oldest_and_counts() -> None:
    """Beyond the spool's bound the oldest lines are dropped and counted."""
    sink = BlockingSink()
    batch = writer(sink, MemorySpool(max_bytes=70), batch_size=1000)
    for index in range(15):
        batch.submit([f"m x={index:02d}i"])  # 8 bytes each with the newline: 8 fit
    assert batch.all_counts()["dropped_spool_full"] == 7
    sink.release.set()
    assert batch.force_flush(10)
    assert sink.lines == [f"m x={index:02d}i" for index in range(7, 15)]
    batch.shutdown(10)


def test_shutdown_flushes_and_closes() -> None:
    """shutdown() writes what is queued, closes the sink, and later submits are counted."""
    sink = InMemorySink()
    batch = writer(sink)
    batch.submit(["m x=1i"])
    assert batch.shutdown(10)
    assert sink.lines == ["m x=1i"] and sink.closed
    batch.submit(["m x=2i"])
    assert batch.counts["dropped_after_shutdown"] == 1


def test_force_flush_times_out_while_sink_is_down() -> None:
    """force_flush() reports False instead of hanging while the destination keeps failing."""
    sink = FlakySink(10**9, SinkError("down", retryable=True))
    batch = writer(sink)
    batch.submit(["m x=1i"])
    assert batch.force_flush(0.3) is False
    batch.shutdown(0.1)
    assert batch.counts["dropped_at_shutdown"] == 1


def test_undelivered_lines_stay_in_the_disk_spool(tmp_path: Path) -> None:
    """At shutdown with the destination down, a disk spool keeps the lines for the next start."""
    sink = FlakySink(10**9, SinkError("down", retryable=True))
    batch = writer(sink, DiskSpool(tmp_path / "spool", 10**8))
    batch.submit(["m x=1i", "m x=2i"])
    assert batch.shutdown(0.3) is False
    assert batch.counts["left_in_spool"] == 2
    later = InMemorySink()
    again = writer(later, DiskSpool(tmp_path / "spool", 10**8))
    assert again.force_flush(10)
    assert later.lines == ["m x=1i", "m x=2i"]
    again.shutdown(10)


class PickySink(InMemorySink):
    """Rejects, like InfluxDB, any body holding a line with ``bad``; takes the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, body: bytes) -> None:
        self.writes += 1
        if b"bad" in body:
            raise SinkError("HTTP 400: field type conflict", retryable=False, status=400)
        super().write(body)


def test_bad_lines_are_isolated_and_dead_lettered(tmp_path: Path) -> None:
    """A permanent error splits the batch: good lines land, each bad one is dead-lettered."""
    sink = PickySink()
    letters = DeadLetters(str(tmp_path / "dead.jsonl"))
    batch = writer(sink, dead_letters=letters)
    lines = [f"m x={index}i" for index in range(30)]
    lines[3], lines[17] = "m bad=1i", "m bad=2i"
    batch.submit(lines)
    assert batch.force_flush(10)
    assert sink.lines == [line for line in lines if "bad" not in line]
    assert batch.counts["dead_lettered"] == 2
    records = [json.loads(row) for row in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert [record["line"] for record in records] == ["m bad=1i", "m bad=2i"]
    assert all(
        record["status"] == 400 and "type conflict" in record["reason"] for record in records
    )
    batch.shutdown(10)


def test_retry_after_is_honoured() -> None:
    """A 429 with Retry-After waits at least that long before the next attempt."""
    times: list[float] = []

    class Throttled(InMemorySink):
        def write(self, body: bytes) -> None:
            times.append(time.monotonic())
            if len(times) == 1:
                raise SinkError("429", retryable=True, status=429, retry_after=0.8)
            super().write(body)

    sink = Throttled()
    batch = writer(sink, flush_interval=0.01)
    batch.submit(["m x=1i"])
    deadline = time.monotonic() + 10
    while not sink.lines and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sink.lines == ["m x=1i"]
    assert times[1] - times[0] >= 0.8
    batch.shutdown(10)
