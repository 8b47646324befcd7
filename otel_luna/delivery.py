"""Delivery: batching by size and interval, retry with backoff, flush at shutdown.

The exporter hands encoded lines to :meth:`BatchWriter.submit`, which only appends to a bounded
in-memory queue and returns. One worker thread writes batches of at most ``batch_size`` lines
every ``flush_interval`` seconds (at once when a batch is full). A write that fails with a
retryable error keeps its batch at the head of the queue and is retried with exponential backoff
and jitter; a permanent error drops the batch (counted, logged). When the queue is full the oldest
lines are dropped and counted. The worker runs with OpenTelemetry instrumentation suppressed, so
an instrumented HTTP library never traces our own writes.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import weakref
from collections import Counter, deque

from opentelemetry import context as otel_context

from otel_luna.sinks import Sink, SinkError

_logger = logging.getLogger(__name__)

_BACKOFF_INITIAL = 0.5
_BACKOFF_MAX = 30.0


class BatchWriter:
    """Queues lines and writes them to ``sink`` from a background thread."""

    def __init__(
        self,
        sink: Sink,
        *,
        flush_interval: float,
        batch_size: int,
        max_queue_size: int,
    ) -> None:
        self.sink = sink
        self.counts: Counter[str] = Counter()
        self._flush_interval = flush_interval
        self._batch_size = batch_size
        self._max_queue_size = max_queue_size
        self._init_state()
        if hasattr(os, "register_at_fork"):
            ref = weakref.WeakMethod(self._after_fork_in_child)
            os.register_at_fork(after_in_child=lambda: (method := ref()) and method())

    def _init_state(self) -> None:
        self._queue: deque[str] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._flush_requested = 0
        self._flushed = 0
        self._closing = False
        self._closed = False
        self._in_flight = 0
        self._worker = threading.Thread(target=self._run, name="otel-luna-writer", daemon=True)
        self._worker.start()

    def _after_fork_in_child(self) -> None:
        # The parent still owns what it queued; the child starts empty with its own thread.
        self.counts = Counter()
        self._init_state()

    def submit(self, lines: list[str]) -> None:
        """Queue ``lines``; never blocks on the network."""
        if not lines:
            return
        with self._lock:
            if self._closed:
                self.counts["dropped_after_shutdown"] += len(lines)
                return
            self._queue.extend(lines)
            self.counts["queued"] += len(lines)
            overflow = len(self._queue) - self._max_queue_size
            if overflow > 0:
                for _ in range(overflow):
                    self._queue.popleft()
                self.counts["dropped_queue_full"] += overflow
                _logger.warning("otel-luna queue full: dropped the %d oldest lines", overflow)
            full = len(self._queue) >= self._batch_size
        if full:
            self._wake.set()

    @property
    def queued(self) -> int:
        """Lines waiting to be written."""
        return len(self._queue) + self._in_flight

    def force_flush(self, timeout: float | None = None) -> bool:
        """Write everything queued now; ``False`` if it could not be done within ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._flush_requested += 1
            ticket = self._flush_requested
            self._wake.set()
            while self._flushed < ticket:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                if not self._worker.is_alive():
                    return False
                self._idle.wait(remaining if remaining is not None else 0.5)
        return True

    def shutdown(self, timeout: float | None = 30.0) -> bool:
        """Flush within ``timeout``, stop the worker and close the sink."""
        with self._lock:
            if self._closed:
                return True
        done = self.force_flush(timeout)
        with self._lock:
            self._closing = True
            self._closed = True
            self._wake.set()
        self._worker.join(timeout=1.0)
        if not done:
            self.counts["dropped_at_shutdown"] += self.queued
            _logger.warning("otel-luna: %d lines not written before shutdown", self.queued)
        try:
            self.sink.close()
        except Exception:
            _logger.exception("otel-luna: closing the sink failed")
        return done

    # -- worker -----------------------------------------------------------------------------

    def _run(self) -> None:
        otel_context.attach(
            otel_context.set_value(otel_context._SUPPRESS_INSTRUMENTATION_KEY, True)
        )
        backoff = 0.0
        while True:
            self._wake.wait(backoff or self._flush_interval)
            self._wake.clear()
            with self._lock:
                if self._closing:
                    return
                ticket = self._flush_requested
            ok = self._drain()
            backoff = 0.0 if ok else min(max(backoff * 2, _BACKOFF_INITIAL), _BACKOFF_MAX)
            if not ok:
                backoff *= random.uniform(0.5, 1.0)
            with self._lock:
                if ok or not self._queue:
                    self._flushed = max(self._flushed, ticket)
                self._idle.notify_all()

    def _drain(self) -> bool:
        """Write batches until the queue is empty; ``False`` after a retryable failure."""
        while True:
            with self._lock:
                if not self._queue:
                    return True
                count = min(len(self._queue), self._batch_size)
                batch = [self._queue.popleft() for _ in range(count)]
                self._in_flight = count
            body = "".join(f"{line}\n" for line in batch).encode()
            try:
                self.sink.write(body)
            except SinkError as error:
                if error.retryable:
                    with self._lock:
                        self._queue.extendleft(reversed(batch))
                        self._in_flight = 0
                        self.counts["retried"] += count
                    _logger.warning("otel-luna: write failed, will retry: %s", error)
                    return False
                self.counts["dropped_rejected"] += count
                _logger.error("otel-luna: %d lines rejected: %s", count, error)
            except Exception:
                self.counts["dropped_sink_error"] += count
                _logger.exception("otel-luna: sink %r failed", self.sink)
            else:
                self.counts["written"] += count
            with self._lock:
                self._in_flight = 0
