"""Delivery: hand-off without waiting, batching, retry of retryable failures, shutdown flush."""

from __future__ import annotations

import threading
import time

from otel_luna.delivery import BatchWriter
from otel_luna.sinks import SinkError
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


def writer(sink: InMemorySink, **options: float) -> BatchWriter:
    settings = {"flush_interval": 3600.0, "batch_size": 1000, "max_queue_size": 100_000}
    settings.update(options)
    return BatchWriter(sink, **settings)  # type: ignore[arg-type]


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
    batch.shutdown()


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
    batch.shutdown()


def test_flush_interval_writes_without_force_flush() -> None:
    """Lines are written within the flush interval with no explicit flush."""
    sink = InMemorySink()
    batch = writer(sink, flush_interval=0.05)
    batch.submit(["m x=1i"])
    deadline = time.monotonic() + 10
    while not sink.lines and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sink.lines == ["m x=1i"]
    batch.shutdown()


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
    batch.shutdown()


def test_permanent_failure_drops_and_counts() -> None:
    """A permanent error drops that batch, counts it, and later batches still go through."""
    sink = FlakySink(1, SinkError("400 bad", retryable=False, status=400))
    batch = writer(sink)
    batch.submit(["m x=1i"])
    assert batch.force_flush(10)
    batch.submit(["m x=2i"])
    assert batch.force_flush(10)
    assert sink.lines == ["m x=2i"]
    assert batch.counts["dropped_rejected"] == 1
    batch.shutdown()


def test_full_queue_drops_oldest_and_counts() -> None:
    """Beyond max_queue_size the oldest lines are dropped and counted."""
    sink = BlockingSink()
    batch = writer(sink, max_queue_size=10, batch_size=1000)
    batch.submit([f"m x={index}i" for index in range(15)])
    assert batch.counts["dropped_queue_full"] == 5
    sink.release.set()
    assert batch.force_flush(10)
    assert sink.lines == [f"m x={index}i" for index in range(5, 15)]
    batch.shutdown()


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
