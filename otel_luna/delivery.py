"""Delivery: spool, batching by size and interval, retries, isolation of bad lines, shutdown.

The exporter hands encoded lines to :meth:`BatchWriter.submit`, which appends them to the spool
(:mod:`otel_luna.spool`) and returns. One worker thread reads batches of at most ``batch_size``
lines every ``flush_interval`` seconds (at once when a batch is full), writes them to the sink
and acknowledges what the sink took:

* a retryable failure (connection error, timeout, 408, 429, 5xx) leaves the batch in the spool;
  it is retried after an exponential backoff with jitter, or after the server's ``Retry-After``
  if that is longer. Sleeps are interrupted by flush and shutdown;
* a permanent failure (other 4xx) is narrowed down by splitting the batch in halves until the
  offending lines stand alone: every good line is delivered (re-sending a line InfluxDB already
  took overwrites the same point), each bad one goes to the dead-letter file with the server's
  reason. One bad point never drops its batch.

The worker runs with OpenTelemetry instrumentation suppressed, so an instrumented HTTP library
never traces our own writes. After ``fork()`` the child gets a spool and a worker of its own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import threading
import time
import weakref
from collections import Counter

from otel_luna.sinks import Sink, SinkError, suppress_instrumentation
from otel_luna.spool import Spool

_logger = logging.getLogger(__name__)

BACKOFF_INITIAL = 0.5
#: Short enough that delivery resumes within seconds of the database coming back (measured:
#: with 30 s, a 60 s outage drained at only 2.7x ingest counted from recovery).
BACKOFF_MAX = 5.0
#: Seconds between the one-line summaries logged when something was retried or dropped.
SUMMARY_INTERVAL = 60.0
#: Seconds between looks for spool directories of processes that are gone (forked children).
ADOPT_INTERVAL = 5.0
_SUMMARY_KEYS = ("retried", "dropped_spool_full", "dead_lettered", "corrupt_records")


class DeadLetters:
    """Appends rejected lines with the server's reason, one JSON object per line."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()

    def write(self, line: bytes, reason: str, status: int | None) -> None:
        record = {
            "time": time.time(),
            "status": status,
            "reason": reason,
            "line": line.decode(errors="replace").rstrip("\n"),
        }
        try:
            with self._lock:
                directory = os.path.dirname(self.path)
                if directory:
                    os.makedirs(directory, exist_ok=True)
                with open(self.path, "a", encoding="utf-8") as file:
                    file.write(json.dumps(record, ensure_ascii=False) + "\n")
        except OSError as error:
            _logger.error("otel-luna: cannot write dead letter to %s: %s", self.path, error)


class BatchWriter:
    """Spools lines and writes them to ``sink`` from a background thread."""

    def __init__(
        self,
        sink: Sink,
        spool: Spool,
        *,
        flush_interval: float,
        batch_size: int,
        write_timeout: float = 10.0,
        dead_letters: DeadLetters | None = None,
    ) -> None:
        self.sink = sink
        self.spool = spool
        self.counts: Counter[str] = Counter()
        self.dead_letters = dead_letters
        self._flush_interval = flush_interval
        self._batch_size = batch_size
        self._write_timeout = write_timeout
        self._init_state()
        if hasattr(os, "register_at_fork"):
            ref = weakref.WeakMethod(self._after_fork_in_child)
            os.register_at_fork(after_in_child=lambda: (method := ref()) and method())

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._flush_requested = 0
        self._flushed = 0
        self._closed = False
        self._last_summary = self._last_adoption = time.monotonic()
        self._summarised: Counter[str] = Counter()
        self._worker = threading.Thread(target=self._run, name="otel-luna-writer", daemon=True)
        self._worker.start()

    def _after_fork_in_child(self) -> None:
        # The parent keeps what it spooled; the child starts empty with its own thread.
        self.counts = Counter()
        self.spool.after_fork_in_child()
        self._init_state()

    def submit(self, lines: list[str]) -> None:
        """Spool ``lines``; never waits for the network."""
        if not lines:
            return
        if self._closed:
            self.counts["dropped_after_shutdown"] += len(lines)
            return
        size = self._batch_size
        for start in range(0, len(lines), size):  # no record larger than a batch
            chunk = lines[start : start + size]
            self.spool.append(("\n".join(chunk) + "\n").encode(), len(chunk))
        self.counts["spooled"] += len(lines)
        if self.spool.pending_lines >= self._batch_size:
            self._wake.set()

    @property
    def queued(self) -> int:
        """Lines waiting in the spool."""
        return self.spool.pending_lines

    def all_counts(self) -> Counter[str]:
        """Delivery and spool counters together."""
        return self.counts + self.spool.counts

    def force_flush(self, timeout: float | None = None) -> bool:
        """Deliver everything spooled now; ``False`` if not done within ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._flush_requested += 1
            ticket = self._flush_requested
            self._wake.set()
            while self._flushed < ticket:
                remaining = None if deadline is None else deadline - time.monotonic()
                if (remaining is not None and remaining <= 0) or not self._worker.is_alive():
                    return False
                self._idle.wait(0.5 if remaining is None else min(remaining, 0.5))
        return True

    def shutdown(self, timeout: float) -> bool:
        """Deliver within ``timeout``, stop the worker, close the sink and the spool.

        What is not delivered in time stays in a disk spool for the next start (counted as
        ``left_in_spool``); a memory spool loses it (``dropped_at_shutdown``).
        """
        if self._closed:
            return True
        done = self.force_flush(timeout)
        self._closed = True
        self._stop.set()
        self._wake.set()
        self._worker.join(timeout=self._write_timeout + 1.0)
        left = self.spool.pending_lines
        if left:
            key = "left_in_spool" if self.spool.durable else "dropped_at_shutdown"
            self.counts[key] += left
            _logger.warning("otel-luna: %d lines not delivered at shutdown (%s)", left, key)
        self._log_summary(force=True)
        for closing in (self.sink.close, self.spool.close):
            try:
                closing()
            except Exception:
                _logger.exception("otel-luna: closing %r failed", closing)
        return done

    # -- worker -----------------------------------------------------------------------------

    def _run(self) -> None:
        suppress_instrumentation()
        backoff = 0.0
        delay = self._flush_interval
        retry_at = 0.0  # while backing off, a full batch does not cut the wait short
        failed_ticket = -1
        while True:
            self._wake.wait(delay)
            self._wake.clear()
            if self._stop.is_set():
                self._release_flushers(self._flush_requested)
                return
            with self._lock:
                ticket = self._flush_requested
            wait = retry_at - time.monotonic()
            if wait > 0 and ticket == failed_ticket:
                delay = wait  # woken by submit(): only flush and shutdown end a backoff early
                continue
            self._adopt_orphans()
            try:
                ok, retry_after = self._drain()
            except Exception:  # the worker must outlive anything: retry later
                _logger.exception("otel-luna: delivery failed unexpectedly; will retry")
                self.counts["writer_errors"] += 1
                ok, retry_after = False, None
            if ok:
                backoff = 0.0
                delay = self._flush_interval
                retry_at = 0.0
                self._release_flushers(ticket)
            else:
                backoff = min(max(backoff * 2, BACKOFF_INITIAL), BACKOFF_MAX)
                delay = max(backoff * random.uniform(0.5, 1.0), retry_after or 0.0)
                retry_at = time.monotonic() + delay
                failed_ticket = ticket
                with self._lock:
                    self._idle.notify_all()
            self._log_summary()
            self._write_stats()

    def _write_stats(self) -> None:
        with contextlib.suppress(OSError):  # the spool's own writes report disk trouble
            self.spool.write_stats(dict(self.all_counts()))

    def _adopt_orphans(self) -> None:
        now = time.monotonic()
        if now - self._last_adoption < ADOPT_INTERVAL:
            return
        self._last_adoption = now
        try:
            self.spool.adopt_orphans()
        except OSError as error:
            _logger.warning("otel-luna: cannot look for orphaned spool directories: %s", error)

    def _release_flushers(self, ticket: int) -> None:
        with self._lock:
            self._flushed = max(self._flushed, ticket)
            self._idle.notify_all()

    def _drain(self) -> tuple[bool, float | None]:
        """Deliver batches until the spool is empty; (False, Retry-After) on a retryable error."""
        while not self._stop.is_set():
            batch = self.spool.read(self._batch_size)
            if batch is None:
                return True, None
            try:
                self._deliver(batch.body, batch.lines)
            except SinkError as error:
                if error.retry_body is None:
                    self.counts["retried"] += batch.lines
                    _logger.debug("otel-luna: write failed, will retry: %s", error)
                    return False, error.retry_after
                # Part of the batch went through: keep only the rest, at the spool's end.
                retry = error.retry_body.count(b"\n")
                if retry:
                    self.spool.append(error.retry_body, retry)
                    self.counts["retried"] += retry
                self.spool.ack(batch.token)
                if retry:
                    return False, error.retry_after
                continue
            self.spool.ack(batch.token)
        return False, None

    def _deliver(self, body: bytes, lines: int) -> None:
        """Write ``body``; isolate lines the sink rejects for good. Raises retryable errors."""
        try:
            self.sink.write(body)
        except SinkError as error:
            if error.rejected is not None or error.retry_body is not None:
                self._settle_partial(lines, error)  # a line-by-line sink said which failed
                return
            if error.retryable:
                raise
            self._isolate(body.splitlines(keepends=True), error)
        except Exception as error:
            # A broken sink must not kill the worker: treat it as a failure to retry.
            _logger.exception("otel-luna: sink %r failed", self.sink)
            raise SinkError(f"sink failed: {error!r}", retryable=True) from None
        else:
            self.counts["written"] += lines

    def _settle_partial(self, lines: int, error: SinkError) -> None:
        rejected = error.rejected or []
        for line, reason, status in rejected:
            self.counts["dead_lettered"] += 1
            if self.dead_letters is not None:
                self.dead_letters.write(line, reason, status)
        retry = (error.retry_body or b"").count(b"\n")
        self.counts["written"] += lines - len(rejected) - retry
        if retry:
            raise error  # _drain re-spools the rest

    def _isolate(self, lines: list[bytes], error: SinkError) -> None:
        if len(lines) == 1:
            self.counts["dead_lettered"] += 1
            _logger.warning("otel-luna: line rejected for good: %s", error)
            if self.dead_letters is not None:
                self.dead_letters.write(lines[0], str(error), error.status)
            return
        middle = len(lines) // 2
        for half in (lines[:middle], lines[middle:]):
            self.counts["split_writes"] += 1
            self._deliver(b"".join(half), len(half))

    def _log_summary(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_summary < SUMMARY_INTERVAL:
            return
        self._last_summary = now
        current = self.all_counts()
        changed = {key: current[key] - self._summarised[key] for key in _SUMMARY_KEYS}
        if any(changed.values()):
            _logger.warning(
                "otel-luna: last %.0f s: %s; spooled now: %d lines",
                SUMMARY_INTERVAL,
                ", ".join(f"{key}={value}" for key, value in changed.items() if value),
                self.spool.pending_lines,
            )
            self._summarised = Counter({key: current[key] for key in _SUMMARY_KEYS})
