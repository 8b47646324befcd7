"""Delivery: spool, batching by size and interval, retries, isolation of bad lines, shutdown.

The exporter hands encoded lines to :meth:`BatchWriter.submit`, which appends them to the spool
(:mod:`otel_luna.delivery._spool`) and returns. One worker thread reads batches of at most
``batch_size`` lines every ``flush_interval`` seconds (at once when a batch is full), writes them to
the sink and acknowledges what the sink took. The sink says what a failure means
(:class:`~otel_luna.sinks.Failure`):

* RETRY (connection error, timeout, 408, 429, 5xx) leaves the batch in the spool; it is retried
  after an exponential backoff with jitter, or after the server's ``Retry-After`` if that is
  longer. Sleeps are interrupted by flush and shutdown;
* BLOCKED (401, 403, database or bucket not found, TLS) holds the spool the same way, never
  splitting, acknowledging or dead-lettering anything; the blocked state goes to the stats
  ``otel-luna status`` shows;
* TOO_LARGE (413) splits the batch in halves until it fits; a single line that alone is too
  large is dead-lettered;
* PER_LINE (400 unparsable line, field type conflict) is narrowed down by splitting the batch in
  halves until the offending lines stand alone: every good line is delivered, each bad one goes
  to the dead-letter file with the server's reason. One bad point never drops its batch. If a
  write during the splitting comes back RETRY or BLOCKED, the whole batch stays in the spool
  (re-sending a line InfluxDB already took writes the same point again). The first line
  rejected for good is logged with its reason, then at most one a minute: the once-a-minute
  summary counts the others (``dead_lettered``).

Delivery trouble (RETRY or BLOCKED) is logged by class (:attr:`~otel_luna.sinks.SinkError.trouble`:
connection refused, DNS failure, TLS error, timeout, ``HTTP 404``, ``HTTP 5xx``, ...): one
warning naming the destination and the class when it starts, then at most one a minute per class
while it lasts, and one line when a write succeeds again (``delivering again after N s, M points
waited``). The trouble (since when, which class, why) goes to the stats too.

Counters go to the disk spool's ``stats.json`` (``otel-luna status``) after every round:
the writer's, the spool's and the dead-letter file's, plus whatever ``host_counts`` returns
(the ingest's mapping and encoder counters), and the blocked and memory-fallback states.

The worker runs with OpenTelemetry instrumentation suppressed, so an instrumented HTTP library
never traces our own writes. A worker that dies is restarted (``writer_restarts``). After
``fork()`` the child gets a spool, a worker, locks and sink connections of its own.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from otel_luna import _fork
from otel_luna._compiled import NATIVE
from otel_luna.delivery._deadletters import DeadLetters
from otel_luna.delivery._spool import Spool
from otel_luna.delivery._throttle import SUMMARY_INTERVAL, Throttle
from otel_luna.outcomes import Counts, Reason
from otel_luna.redact import redact
from otel_luna.sinks._base import (
    Failure,
    Sink,
    SinkError,
    SinkLike,
    as_sink,
    suppress_instrumentation,
)

_logger = logging.getLogger(__name__)

BACKOFF_INITIAL = 0.5
#: Short enough that delivery resumes within seconds of the database coming back (measured:
#: with 30 s, a 60 s outage drained at only 2.7x ingest counted from recovery).
BACKOFF_MAX = 5.0
#: Seconds between looks for spool directories of processes that are gone (forked children).
ADOPT_INTERVAL = 5.0
_SUMMARY_KEYS = (
    Reason.RETRIED,
    Reason.DROPPED_SPOOL_FULL,
    Reason.DEAD_LETTERED,
    Reason.DEAD_LETTERS_ROTATED_OUT,
    Reason.DEAD_LETTER_WRITE_ERRORS,
    Reason.CORRUPT_RECORDS,
    Reason.WRITER_RESTARTS,
)
_HELD = (Failure.RETRY, Failure.BLOCKED)


@dataclass
class _Outcome:
    """What one batch came to, applied only once the batch is settled (acknowledged)."""

    written: int = 0
    rejected: list[tuple[bytes, str, int | None]] = field(default_factory=list)
    retry_body: bytes = b""
    retry_error: SinkError | None = None


@dataclass
class _Blocked:
    since: float  # time.time()
    reason: str
    status: int | None


@dataclass
class _Trouble:
    """Writes failing (RETRY or BLOCKED) since ``started``; a warning throttle per class."""

    started: float  # the writer's clock
    since: float  # time.time(), for the stats
    kind: str
    reason: str
    warnings: dict[str, Throttle] = field(default_factory=dict)


class BatchWriter:
    """Spools lines and writes them to ``sink`` from a background thread."""

    def __init__(
        self,
        sink: SinkLike,
        spool: Spool,
        *,
        flush_interval: float,
        batch_size: int,
        dead_letters: DeadLetters | None = None,
        secrets: Iterable[str] = (),
        host_counts: Callable[[], Mapping[Reason, int]] | None = None,
        summary_interval: float = SUMMARY_INTERVAL,
        destination: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``host_counts``, if given, returns counters kept elsewhere (the ingest's mapping
        and encoder counts, copied under its lock) to add to the stats ``otel-luna status``
        shows; they are not part of :meth:`all_counts`. ``summary_interval``: seconds between
        the summaries and repeated warnings. ``destination``: where the sink writes, as the
        trouble warnings name it (no secrets). ``clock``: monotonic seconds, for the trouble
        warnings and their intervals (tests pass one they move)."""
        #: A sink not made from :class:`Sink` is adapted once, here.
        self.sink: Sink = as_sink(sink)
        self.spool = spool
        self.counts = Counts()
        self.dead_letters = dead_letters
        self._host_counts = host_counts
        self._flush_interval = flush_interval
        self._batch_size = batch_size
        self._secrets = tuple(secrets)
        self._summary_interval = summary_interval
        self.destination = destination or repr(sink)
        self._clock = clock
        self._init_state()
        _fork.track(self)

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._flush_requested = 0
        self._flushed = 0
        self._closed = False
        self._worker_closes = False  # shutdown left closing the sink and spool to the worker
        self._worker_done = False  # the worker has stopped for good
        self._blocked: _Blocked | None = None
        self._trouble: _Trouble | None = None
        self._rejections = Throttle(self._summary_interval)
        self._extra_failed = False
        self._last_summary = self._last_adoption = time.monotonic()
        self._summarised: Counter[Reason] = Counter()
        self._worker = self._start_worker()

    def _start_worker(self) -> threading.Thread:
        worker = threading.Thread(target=self._run, name="otel-luna-writer", daemon=True)
        worker.start()
        return worker

    def after_fork_in_child(self) -> None:
        """The parent keeps what it spooled; the child starts empty with its own thread, locks
        and connections (the parent's may be mid-use in a thread the child does not have):
        counters, spool, dead-letter file, sink, then the writer's own state and worker."""
        if self._closed:  # shut down, not yet collected: nothing to renew (its fds are closed)
            return
        self.counts.after_fork_in_child()
        self.spool.after_fork_in_child()
        if self.dead_letters is not None:
            self.dead_letters.after_fork_in_child()
        try:
            self.sink.after_fork_in_child()
        except Exception as error:  # noqa: BLE001 - logged (redacted); the child goes on
            _logger.error("otel-luna: cannot renew the sink after fork: %s", self._clean(error))
        self._init_state()

    def _clean(self, error: BaseException | str) -> str:
        return redact(str(error), self._secrets)

    def submit(self, lines: list[str]) -> None:
        """Spool ``lines``; never waits for the network."""
        if not lines:
            return
        if self._closed:
            self.counts.add(Reason.DROPPED_AFTER_SHUTDOWN, len(lines))
            return
        size = self._batch_size
        for start in range(0, len(lines), size):  # no record larger than a batch
            chunk = lines[start : start + size]
            self.spool.append(("\n".join(chunk) + "\n").encode(), len(chunk))
        self.counts.add(Reason.SPOOLED, len(lines))
        if not self._worker.is_alive():
            with self._lock:
                self._restart_worker_locked()
        if self.spool.pending_lines >= self._batch_size:
            self._wake.set()

    def _restart_worker_locked(self) -> None:
        """Start a new worker if the last one died (hold ``_lock``)."""
        if self._worker.is_alive() or self._closed:
            return
        self.counts.add(Reason.WRITER_RESTARTS, 1)
        _logger.warning("otel-luna: the writer thread had stopped; restarted it")
        self._wake.set()
        self._worker = self._start_worker()

    @property
    def queued(self) -> int:
        """Lines waiting in the spool."""
        return self.spool.pending_lines

    @property
    def blocked(self) -> dict[str, object] | None:
        """Since when (epoch seconds) and why the destination refuses every write, if it does."""
        blocked = self._blocked
        if blocked is None:
            return None
        return {"since": blocked.since, "reason": blocked.reason, "status": blocked.status}

    @property
    def trouble(self) -> dict[str, object] | None:
        """Since when (epoch seconds) writes fail, the class of the last failure
        (:attr:`~otel_luna.sinks.SinkError.trouble`) and why; None while they succeed."""
        trouble = self._trouble
        if trouble is None:
            return None
        return {"since": trouble.since, "kind": trouble.kind, "reason": trouble.reason}

    def all_counts(self) -> Counter[Reason]:
        """Delivery, dead-letter and spool counters together."""
        total = self.counts.snapshot()
        total.update(self.spool.counts.snapshot())
        if self.dead_letters is not None:
            total.update(self.dead_letters.counts.snapshot())
        return total

    @property
    def pending_bytes(self) -> int:
        """Bytes waiting in the spool."""
        return self.spool.pending_bytes

    def force_flush(self, timeout: float | None = None) -> bool:
        """Deliver everything spooled now; ``False`` if not done within ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._flush_requested += 1
            ticket = self._flush_requested
            self._wake.set()
            while self._flushed < ticket:
                if self._closed and not self._worker.is_alive():
                    return False
                self._restart_worker_locked()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._idle.wait(0.5 if remaining is None else min(remaining, 0.5))
        return True

    def shutdown(self, timeout: float) -> bool:
        """Deliver within ``timeout``, stop the worker, close the sink and the spool.

        What is not delivered in time and is on disk stays there for the next start (counted
        as ``left_in_spool``); what is held in memory only — a memory spool, or a disk spool's
        memory fallback while its disk refused writes — is lost (``dropped_at_shutdown``).
        Each is logged with its own count.
        """
        if self._closed:
            return True
        deadline = time.monotonic() + timeout
        done = self.force_flush(timeout)
        self._closed = True
        self._stop.set()
        self._wake.set()
        # Within the timeout: a worker still inside a write closes the sink and spool itself.
        self._worker.join(timeout=max(0.1, deadline - time.monotonic()))
        left = self.spool.pending_lines
        volatile = min(left, self.spool.pending_volatile_lines)
        if left - volatile:
            self.counts.add(Reason.LEFT_IN_SPOOL, left - volatile)
            _logger.warning(
                "otel-luna: %d lines not delivered at shutdown stay in the spool%s for the next "
                "start (left_in_spool)",
                left - volatile,
                _where(self.spool),
            )
        if volatile:
            self.counts.add(Reason.DROPPED_AT_SHUTDOWN, volatile)
            fallback = self.spool.fallback
            _logger.warning(
                "otel-luna: %d lines not delivered at shutdown were held in memory only (%s) and "
                "are lost (dropped_at_shutdown)",
                volatile,
                (
                    f"the spool's disk refused them: {fallback.get('reason')}"
                    if isinstance(fallback, dict)
                    else "memory spool"
                ),
            )
        self._log_summary(force=True)
        self._write_stats()
        with self._lock:
            # A worker still inside a write closes them when that returns, not under it.
            self._worker_closes = self._worker.is_alive() and not self._worker_done
        if self._worker_closes:
            _logger.warning(
                "otel-luna: a write still runs at shutdown; the sink and the spool are closed "
                "when it returns"
            )
        else:
            self._close_sink_and_spool()
        return done

    def _close_sink_and_spool(self) -> None:
        for closing in (self.sink.close, self.spool.close):
            try:
                closing()
            except Exception as error:  # noqa: BLE001 - logged (redacted); shutdown goes on
                _logger.error("otel-luna: closing %r failed: %s", closing, self._clean(error))

    # -- worker -----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:  # restarted by the next submit() or force_flush()
            self.counts.add(Reason.WRITER_ERRORS, 1)
            _logger.exception("otel-luna: the writer thread failed")
        with self._lock:
            closes = self._worker_closes and threading.current_thread() is self._worker
            self._worker_done = self._closed
        if closes:  # shutdown stopped waiting for this thread
            self._close_sink_and_spool()

    def _loop(self) -> None:
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
                self.counts.add(Reason.WRITER_ERRORS, 1)
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
        counts = self.all_counts()
        counts.update(self._extra())
        stats: dict[str, object] = {str(reason): value for reason, value in counts.items()}
        if self._blocked is not None:
            stats["blocked"] = self.blocked
        if self._trouble is not None:
            stats["trouble"] = self.trouble
        # What waits, for serve's supervisor (its /metrics and /readyz read no segments).
        stats["pending"] = {"lines": self.spool.pending_lines, "bytes": self.spool.pending_bytes}
        # Whether the process runs the compiled common cases (otel-luna status says when not).
        stats["compiled"] = NATIVE is not None
        if self.dead_letters is not None:
            stats["dead_letter"] = self.dead_letters.stats()
        fallback = self.spool.fallback
        if fallback is not None:
            stats["memory_fallback"] = fallback
        with contextlib.suppress(OSError):  # the spool's own writes report disk trouble
            self.spool.write_stats(stats)

    def _extra(self) -> Mapping[Reason, int]:
        """What ``host_counts`` returns; empty if it fails."""
        if self._host_counts is None:
            return {}
        try:
            return self._host_counts()
        except Exception as error:  # noqa: BLE001 - stats are a report; delivery goes on
            if not self._extra_failed:
                self._extra_failed = True
                _logger.warning("otel-luna: cannot read counters for the stats: %r", error)
            return {}

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
        """Deliver batches until the spool is empty; (False, Retry-After) when held back."""
        while not self._stop.is_set():
            batch = self.spool.read(self._batch_size)
            if batch is None:
                return True, None
            waiting = 0 if self._trouble is None else self.spool.pending_lines  # for the log
            outcome = _Outcome()
            try:
                self._deliver(batch.body, batch.lines, outcome)
            except SinkError as error:  # RETRY or BLOCKED: the whole batch stays
                self.counts.add(Reason.RETRIED, batch.lines)
                self._held(error)
                return False, error.retry_after
            self._settle(outcome)
            if outcome.retry_body:  # a line-by-line sink took part: keep only the rest
                self.spool.append(outcome.retry_body, outcome.retry_body.count(b"\n"))
            self.spool.ack(batch.token)
            held = outcome.retry_error
            if held is None:
                self._recovered(waiting)
            else:
                if held.failure is not Failure.BLOCKED:
                    self._blocked = None  # the destination answered line by line
                self._held(held)
                return False, held.retry_after
        return False, None

    def _deliver(self, body: bytes, lines: int, outcome: _Outcome) -> None:
        """Write ``body``, isolating lines the sink rejects for good into ``outcome``.

        Raises :class:`SinkError` (RETRY or BLOCKED) when the body should be written later.
        """
        try:
            self.sink.write(body)
        except SinkError as error:
            if error.rejected is not None or error.retry_body is not None:
                self._partial(lines, error, outcome)  # a line-by-line sink said which failed
            elif error.failure in _HELD:
                raise
            elif lines == 1:
                outcome.rejected.append((body, str(error), error.status))
            else:
                self._split(body, outcome)
        except Exception as error:  # noqa: BLE001 - logged (redacted) and retried
            # A broken sink must not kill the worker: treat it as a failure to retry.
            self.counts.add(Reason.SINK_ERRORS, 1)
            message = f"sink {self.sink!r} failed: {error!r}"
            _logger.error("otel-luna: %s", self._clean(message))
            raise SinkError(message, failure=Failure.RETRY, secrets=self._secrets) from None
        else:
            outcome.written += lines

    def _split(self, body: bytes, outcome: _Outcome) -> None:
        lines = self.sink.split_body(body)
        middle = len(lines) // 2
        for half in (lines[:middle], lines[middle:]):
            self.counts.add(Reason.SPLIT_WRITES, 1)
            self._deliver(b"".join(half), len(half), outcome)

    @staticmethod
    def _partial(lines: int, error: SinkError, outcome: _Outcome) -> None:
        rejected = error.rejected or []
        retry = error.retry_body or b""
        outcome.rejected.extend(rejected)
        outcome.written += lines - len(rejected) - retry.count(b"\n")
        if retry:
            outcome.retry_body += retry
            outcome.retry_error = error

    def _settle(self, outcome: _Outcome) -> None:
        self.counts.add(Reason.WRITTEN, outcome.written)
        self.counts.add(Reason.RETRIED, outcome.retry_body.count(b"\n"))
        for line, reason, status in outcome.rejected:
            self.counts.add(Reason.DEAD_LETTERED, 1)
            clean = self._clean(reason)
            self._log_rejection(clean)
            if self.dead_letters is not None:
                self.dead_letters.write(line, clean, status)

    def _log_rejection(self, reason: str) -> None:
        """One warning for the first line rejected for good, then at most one a minute; the
        summary counts the rest (``dead_lettered``)."""
        if not self._rejections.due():
            _logger.debug("otel-luna: line rejected for good: %s", reason)
            return
        where = f" (kept in {self.dead_letters.path})" if self.dead_letters is not None else ""
        _logger.warning(
            "otel-luna: line rejected for good%s: %s; further ones within %.0f s are counted "
            "in the summary (dead_lettered)",
            where,
            reason,
            self._summary_interval,
        )

    def _held(self, error: SinkError) -> None:
        """Note a write held back (RETRY or BLOCKED): the trouble and blocked states, and the
        warning of its class — when it starts, then at most once a minute while it lasts."""
        reason = self._clean(error)
        kind = error.trouble
        now = self._clock()
        trouble = self._trouble
        if trouble is None:
            trouble = self._trouble = _Trouble(now, time.time(), kind, reason)
        trouble.kind, trouble.reason = kind, reason
        if error.failure is Failure.BLOCKED:
            if self._blocked is None:
                self._blocked = _Blocked(time.time(), reason, error.status)
            self._blocked.reason, self._blocked.status = reason, error.status
        warnings = trouble.warnings.get(kind)
        if warnings is None:
            warnings = trouble.warnings[kind] = Throttle(self._summary_interval, self._clock)
        if not warnings.due():
            _logger.debug("otel-luna: write failed, will retry: %s", reason)
            return
        lasted = now - trouble.started
        _logger.warning(
            "otel-luna: %s %s: %s; %d points wait in the spool, %s: %s",
            f"still cannot deliver after {lasted:.0f} s to" if lasted >= 1 else "cannot deliver to",
            self.destination,
            kind,
            self.spool.pending_lines,
            (
                "held until it takes writes again (blocked)"
                if error.failure is Failure.BLOCKED
                else "retrying"
            ),
            reason,
        )

    def _recovered(self, waited: int) -> None:
        """A write succeeded: one line if writes had been failing, and no trouble any more."""
        trouble, self._trouble, self._blocked = self._trouble, None, None
        if trouble is None:
            return
        _logger.warning(
            "otel-luna: delivering again to %s after %.0f s (%s), %d points waited",
            self.destination,
            self._clock() - trouble.started,
            ", ".join(trouble.warnings),
            waited,
        )

    def _log_summary(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_summary < self._summary_interval:
            return
        self._last_summary = now
        current = self.all_counts()
        changed = {key: current[key] - self._summarised[key] for key in _SUMMARY_KEYS}
        if any(changed.values()):
            _logger.warning(
                "otel-luna: last %.0f s: %s; spooled now: %d lines",
                self._summary_interval,
                ", ".join(f"{key}={value}" for key, value in changed.items() if value),
                self.spool.pending_lines,
            )
            self._summarised = Counter({key: current[key] for key in _SUMMARY_KEYS})


def _where(spool: Spool) -> str:
    directory = spool.directory
    return f" {directory}" if directory is not None else ""
