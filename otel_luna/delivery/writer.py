"""Delivery: spool, batching by size and interval, retries, isolation of bad lines, shutdown.

The exporter hands encoded lines to :meth:`BatchWriter.submit`, which appends them to the spool
(:mod:`otel_luna.delivery.spool`) and returns. One worker thread reads batches of at most
``batch_size`` lines every ``flush_interval`` seconds (at once when a batch is full), writes them to
the sink and acknowledges what the sink took. The sink says what a failure means
(:class:`~otel_luna.sinks.Failure`):

* RETRY (connection error, timeout, 408, 429, 5xx) leaves the batch in the spool; it is retried
  after an exponential backoff with jitter, or after the server's ``Retry-After`` if that is
  longer. Sleeps are interrupted by flush and shutdown;
* BLOCKED (401, 403, database or bucket not found, TLS) holds the spool the same way, never
  splitting, acknowledging or dead-lettering anything; a warning names the cause once a minute
  and the blocked state goes to the stats ``otel-luna status`` shows;
* TOO_LARGE (413) splits the batch in halves until it fits; a single line that alone is too
  large is dead-lettered;
* PER_LINE (400 unparsable line, field type conflict) is narrowed down by splitting the batch in
  halves until the offending lines stand alone: every good line is delivered, each bad one goes
  to the dead-letter file with the server's reason. One bad point never drops its batch. If a
  write during the splitting comes back RETRY or BLOCKED, the whole batch stays in the spool
  (re-sending a line InfluxDB already took writes the same point again). The first line
  rejected for good is logged with its reason, then at most one a minute: the once-a-minute
  summary counts the others (``dead_lettered``).

Counters go to the disk spool's ``stats.json`` (``otel-luna status``) after every round:
the writer's, the spool's and the dead-letter file's, plus whatever ``extra_counts`` returns
(the pipeline's mapping and encoder rejections), and the blocked and memory-fallback states.

The worker runs with OpenTelemetry instrumentation suppressed, so an instrumented HTTP library
never traces our own writes. A worker that dies is restarted (``writer_restarts``). After
``fork()`` the child gets a spool, a worker, locks and sink connections of its own.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import random
import stat
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from otel_luna.delivery.spool import Spool, write_all
from otel_luna.encoding.lineprotocol import split_lines
from otel_luna.redact import redact
from otel_luna.settings import SettingsError, env_name
from otel_luna.sinks import Failure, Sink, SinkError, suppress_instrumentation

_logger = logging.getLogger(__name__)

BACKOFF_INITIAL = 0.5
#: Short enough that delivery resumes within seconds of the database coming back (measured:
#: with 30 s, a 60 s outage drained at only 2.7x ingest counted from recovery).
BACKOFF_MAX = 5.0
#: Seconds between the one-line summaries logged when something was retried or dropped, and
#: between the warnings that the destination is still blocked.
SUMMARY_INTERVAL = 60.0
#: Seconds between looks for spool directories of processes that are gone (forked children).
ADOPT_INTERVAL = 5.0
#: Default bound of the dead-letter file (``dead_letter_max_bytes``).
DEAD_LETTER_MAX_BYTES = 64 * 1024 * 1024
_SUMMARY_KEYS = (
    "retried",
    "dropped_spool_full",
    "dead_lettered",
    "dead_letters_rotated_out",
    "dead_letter_write_errors",
    "corrupt_records",
    "writer_restarts",
)
#: How the dead-letter file is opened: never through a symbolic link (``O_NOFOLLOW``), never
#: blocking on a FIFO (``O_NONBLOCK``); what is opened must then be a regular file.
_DEAD_LETTER_FLAGS = (
    os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
)
_HELD = (Failure.RETRY, Failure.BLOCKED)


class _Throttle:
    """Says when a recurring message is due: the first time, then at most once per
    :data:`SUMMARY_INTERVAL` (the rest are counted, and the summary reports them)."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: float | None = None  # time.monotonic() of the last message

    def due(self) -> bool:
        now = time.monotonic()
        if self._last is not None and now - self._last < SUMMARY_INTERVAL:
            return False
        self._last = now
        return True


class DeadLetters:
    """Appends rejected lines with the server's (redacted) reason, one JSON object per line.

    The file is created with mode 0600 (an existing one is made 0600). When appending would
    take it past ``max_bytes`` it is renamed to ``<path>.1`` (replacing the previous one, whose
    records are counted as ``dead_letters_rotated_out``) and a new file is started. Raises
    :class:`SettingsError` naming ``OTEL_EXPORTER_LUNA_DEAD_LETTER`` when the path cannot be
    written or is a symbolic link; creates nothing until the first dead letter.

    A symbolic link is never followed (nor a file other than a regular one written): one that
    appears at the path later makes each write fail, counted as ``dead_letter_write_errors``
    and logged (the first, then at most once a minute); the line is lost, never appended to
    whatever the link points at.
    """

    def __init__(
        self, path: str, max_bytes: int = DEAD_LETTER_MAX_BYTES, secrets: Iterable[str] = ()
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.counts: Counter[str] = Counter()
        self._secrets = tuple(secrets)
        self._lock = threading.Lock()
        self._errors = _Throttle()
        problem = _unwritable(path)
        if problem:
            raise SettingsError(
                env_name("dead_letter"),
                redact(f"cannot write dead letters to {path}: {problem}", self._secrets),
            )

    def write(self, line: bytes, reason: str, status: int | None) -> None:
        record = {
            "time": time.time(),
            "status": status,
            "reason": redact(reason, self._secrets),
            "line": line.decode(errors="replace").rstrip("\n"),
        }
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        try:
            with self._lock:
                directory = os.path.dirname(self.path)
                if directory:
                    os.makedirs(directory, exist_ok=True)
                size = _size(self.path)
                if size and size + len(data) > self.max_bytes:
                    self._rotate()
                fd = _open_regular(self.path, _DEAD_LETTER_FLAGS)
                try:
                    if os.fstat(fd).st_mode & 0o077:  # a file an older version left readable
                        with contextlib.suppress(OSError):
                            os.fchmod(fd, 0o600)  # the file itself: fd was opened without links
                    write_all(fd, data)
                finally:
                    os.close(fd)
        except OSError as error:
            self.counts["dead_letter_write_errors"] += 1
            if self._errors.due():
                _logger.error(
                    "otel-luna: cannot write dead letter to %s: %s (the line is lost; further "
                    "failures within %.0f s are only counted: dead_letter_write_errors)",
                    self.path,
                    _why(error),
                    SUMMARY_INTERVAL,
                )

    def _rotate(self) -> None:
        older = f"{self.path}.1"
        try:
            fd = _open_regular(older, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:  # none, or not ours to read (a link): replaced all the same, uncounted
            lost = 0
        else:
            with open(fd, "rb") as file:
                lost = sum(chunk.count(b"\n") for chunk in iter(lambda: file.read(1 << 20), b""))
        os.replace(self.path, older)  # renames links themselves, never what they point at
        if lost:
            self.counts["dead_letters_rotated_out"] += lost
            _logger.warning(
                "otel-luna: dead-letter file %s rotated; %d older dead letters discarded",
                self.path,
                lost,
            )

    def stats(self) -> dict[str, object]:
        """Path and bytes on disk (the file and its rotated predecessor), for ``status``."""
        return {"path": self.path, "bytes": _size(self.path) + _size(f"{self.path}.1")}

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self.counts = Counter()
        self._errors = _Throttle()


def _open_regular(path: str, flags: int) -> int:
    """``os.open(path, flags, 0o600)``, refusing anything but a regular file."""
    fd = os.open(path, flags, 0o600)
    found = os.fstat(fd)
    # A hard link would be followed like a symbolic one: another file's contents and mode.
    if not stat.S_ISREG(found.st_mode) or found.st_nlink > 1:
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file of its own", path)
    return fd


def _why(error: OSError) -> str:
    if error.errno == errno.ELOOP:
        return "it is a symbolic link, which is not followed"
    return str(error)


def _size(path: str) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0


def _unwritable(path: str) -> str | None:
    """Why ``path`` could not be appended to (a directory, a symbolic link, no permission ...),
    else None."""
    if os.path.islink(path):
        return "it is a symbolic link (not followed: give the path of the file itself)"
    if os.path.isdir(path):
        return "it is a directory"
    if os.path.exists(path) and not os.path.isfile(path):
        return "it is not a regular file (a device, a pipe)"
    if os.path.isfile(path) and os.stat(path).st_nlink > 1:
        return "it is a hard link to another file"
    if os.path.exists(path):
        return None if os.access(path, os.W_OK) else "no permission to write the file"
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"{parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"no permission to create files in {parent}"
    return None


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
    warnings: _Throttle


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
        secrets: Iterable[str] = (),
        extra_counts: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        """``extra_counts``, if given, returns counters kept elsewhere (the pipeline's mapping
        and encoder rejections) to add to the stats ``otel-luna status`` shows; it is called on
        the writer thread, while other threads may be updating them: a call that raises (a
        dict changed size while copied) is tried again, then skipped for that round. Its
        counts are not part of :meth:`all_counts`."""
        self.sink = sink
        self.spool = spool
        self.counts: Counter[str] = Counter()
        self.dead_letters = dead_letters
        self._extra_counts = extra_counts
        self._flush_interval = flush_interval
        self._batch_size = batch_size
        self._write_timeout = write_timeout
        self._secrets = tuple(secrets)
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
        self._blocked: _Blocked | None = None
        self._rejections = _Throttle()
        self._extra_failed = False
        self._last_summary = self._last_adoption = time.monotonic()
        self._summarised: Counter[str] = Counter()
        self._worker = self._start_worker()

    def _start_worker(self) -> threading.Thread:
        worker = threading.Thread(target=self._run, name="otel-luna-writer", daemon=True)
        worker.start()
        return worker

    def _after_fork_in_child(self) -> None:
        # The parent keeps what it spooled; the child starts empty with its own thread, locks
        # and connections (the parent's may be mid-use in a thread the child does not have).
        if self._closed:  # shut down, not yet collected: nothing to renew (its fds are closed)
            return
        self.counts = Counter()
        self.spool.after_fork_in_child()
        if self.dead_letters is not None:
            self.dead_letters.after_fork_in_child()
        reinit = getattr(self.sink, "after_fork_in_child", None)
        if callable(reinit):
            try:
                reinit()
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
            self.counts["dropped_after_shutdown"] += len(lines)
            return
        size = self._batch_size
        for start in range(0, len(lines), size):  # no record larger than a batch
            chunk = lines[start : start + size]
            self.spool.append(("\n".join(chunk) + "\n").encode(), len(chunk))
        self.counts["spooled"] += len(lines)
        if not self._worker.is_alive():
            with self._lock:
                self._restart_worker_locked()
        if self.spool.pending_lines >= self._batch_size:
            self._wake.set()

    def _restart_worker_locked(self) -> None:
        """Start a new worker if the last one died (hold ``_lock``)."""
        if self._worker.is_alive() or self._closed:
            return
        self.counts["writer_restarts"] += 1
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

    def all_counts(self) -> Counter[str]:
        """Delivery, dead-letter and spool counters together."""
        total = self.counts + self.spool.counts
        if self.dead_letters is not None:
            total.update(self.dead_letters.counts)
        return total

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
        done = self.force_flush(timeout)
        self._closed = True
        self._stop.set()
        self._wake.set()
        self._worker.join(timeout=self._write_timeout + 1.0)
        left = self.spool.pending_lines
        volatile = min(left, self.spool.pending_volatile_lines)
        if left - volatile:
            self.counts["left_in_spool"] += left - volatile
            _logger.warning(
                "otel-luna: %d lines not delivered at shutdown stay in the spool%s for the next "
                "start (left_in_spool)",
                left - volatile,
                _where(self.spool),
            )
        if volatile:
            self.counts["dropped_at_shutdown"] += volatile
            fallback = getattr(self.spool, "fallback", None)
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
        for closing in (self.sink.close, self.spool.close):
            try:
                closing()
            except Exception as error:  # noqa: BLE001 - logged (redacted); shutdown goes on
                _logger.error("otel-luna: closing %r failed: %s", closing, self._clean(error))
        return done

    # -- worker -----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:  # restarted by the next submit() or force_flush()
            self.counts["writer_errors"] += 1
            _logger.exception("otel-luna: the writer thread failed")

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
        counts = self.all_counts()
        counts.update(self._extra())
        stats: dict[str, object] = dict(counts)
        if self._blocked is not None:
            stats["blocked"] = self.blocked
        if self.dead_letters is not None:
            stats["dead_letter"] = self.dead_letters.stats()
        fallback = getattr(self.spool, "fallback", None)
        if fallback is not None:
            stats["memory_fallback"] = fallback
        with contextlib.suppress(OSError):  # the spool's own writes report disk trouble
            self.spool.write_stats(stats)

    def _extra(self) -> Counter[str]:
        """What ``extra_counts`` returns, copied; empty if it keeps failing."""
        if self._extra_counts is None:
            return Counter()
        for _ in range(3):
            try:
                extra = dict(self._extra_counts())
                return Counter({str(key): int(value) for key, value in extra.items()})
            except RuntimeError:  # a counter grew while it was copied: copy again
                continue
            except Exception as error:  # noqa: BLE001 - stats are a report; delivery goes on
                if not self._extra_failed:
                    self._extra_failed = True
                    _logger.warning("otel-luna: cannot read counters for the stats: %r", error)
                return Counter()
        return Counter()

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
            outcome = _Outcome()
            try:
                self._deliver(batch.body, batch.lines, outcome)
            except SinkError as error:  # RETRY or BLOCKED: the whole batch stays
                self.counts["retried"] += batch.lines
                self._held(error)
                return False, error.retry_after
            self._settle(outcome)
            if outcome.retry_body:  # a line-by-line sink took part: keep only the rest
                self.spool.append(outcome.retry_body, outcome.retry_body.count(b"\n"))
            self.spool.ack(batch.token)
            held = outcome.retry_error
            if held is None or held.failure is not Failure.BLOCKED:
                self._unblocked()  # the destination answered line by line
            if held is not None:
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
            self.counts["sink_errors"] += 1
            message = f"sink {self.sink!r} failed: {error!r}"
            _logger.error("otel-luna: %s", self._clean(message))
            raise SinkError(message, failure=Failure.RETRY, secrets=self._secrets) from None
        else:
            outcome.written += lines

    def _split(self, body: bytes, outcome: _Outcome) -> None:
        if getattr(self.sink, "format", "line-protocol") == "json":
            lines = [line + b"\n" for line in body.split(b"\n") if line]  # JSON has no raw \n
        else:
            lines = split_lines(body)  # a string field may hold \n or \r
        middle = len(lines) // 2
        for half in (lines[:middle], lines[middle:]):
            self.counts["split_writes"] += 1
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
        self.counts["written"] += outcome.written
        self.counts["retried"] += outcome.retry_body.count(b"\n")
        for line, reason, status in outcome.rejected:
            self.counts["dead_lettered"] += 1
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
            SUMMARY_INTERVAL,
        )

    def _held(self, error: SinkError) -> None:
        """Note a write held back: the blocked state and its warning, once a minute."""
        if error.failure is not Failure.BLOCKED:  # says nothing about a blocked destination
            _logger.debug("otel-luna: write failed, will retry: %s", self._clean(error))
            return
        reason = self._clean(error)
        blocked = self._blocked
        if blocked is None:
            blocked = self._blocked = _Blocked(time.time(), reason, error.status, _Throttle())
        blocked.reason, blocked.status = reason, error.status
        if not blocked.warnings.due():
            return
        _logger.warning(
            "otel-luna: destination blocked for %.0f s, holding %d lines in the spool and "
            "retrying: %s",
            time.time() - blocked.since,
            self.spool.pending_lines,
            reason,
        )

    def _unblocked(self) -> None:
        if self._blocked is not None:
            _logger.warning(
                "otel-luna: destination accepts writes again after %.0f s blocked",
                time.time() - self._blocked.since,
            )
            self._blocked = None

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


def _where(spool: Spool) -> str:
    directory = getattr(spool, "directory", None)
    return f" {directory}" if directory is not None else ""
