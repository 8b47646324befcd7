"""The one way in: records → points → lines → delivery, for the exporters and the receiver.

The adapters (:mod:`otel_luna.ingest._sdk` for SDK spans and metrics, :mod:`otel_luna.serve._otlp`
for OTLP requests) turn what arrives into :class:`~otel_luna.mapping._records.SpanRecord` and
:class:`~otel_luna.mapping._records.UsageSample`; everything after that is :class:`Ingest`: the
profile's mappers, the encoder of the destination's wire format, the lock around both, the
counters, and the delivery the lines go to.

One ingest per destination per process: :meth:`Ingest.shared` gives the trace and the metric
exporter of a process the same one — one lock, one writer thread, one spool and one bound,
one set of fork handlers — and :meth:`Ingest.release` shuts it down when the last user is done.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from otel_luna import _fork, selfmetrics
from otel_luna import _lifecycle as lifecycle
from otel_luna.delivery._delivery import open_delivery
from otel_luna.delivery._throttle import RateLog
from otel_luna.delivery._writer import BatchWriter
from otel_luna.encoding._lineprotocol import InvalidPointError
from otel_luna.ingest._native import NativeSpans
from otel_luna.mapping._records import SpanRecord, UsageSample
from otel_luna.mapping._timestamps import time_window
from otel_luna.mapping._usages import OVERLAP_WINDOW_NS
from otel_luna.outcomes import Reason, describe, problems, rejected
from otel_luna.profiles import LINE_PROTOCOL, profile_of
from otel_luna.settings._settings import Settings
from otel_luna.sinks._base import SinkLike, as_sink, sink_factory, sink_not_built, wire_format

_logger = logging.getLogger(__name__)
_MAPPED = Reason.MAPPED
_MAPPING_ERROR = Reason.MAPPING_ERROR
_TOO_FAR_AHEAD = Reason.TIME_TOO_FAR_AHEAD
_TOO_OLD = Reason.TIME_TOO_OLD
#: Characters of a service or estimator name a warning shows (the sender chooses its length).
_NAME_SHOWN = 100
#: The ``signal`` each way in counts under (the self-metrics' attribute).
TRACES = "traces"
METRICS = "metrics"
#: After its first time (logged with the traceback), a mapping error is logged at most once in
#: this many seconds, in one line saying how many there were since.
ERROR_LOG_INTERVAL = 60.0


class _ErrorLog(RateLog):
    """The log of one repeating error (a mapping bug a sender can trigger span after span):
    the first with its traceback, then at most one line every :data:`ERROR_LOG_INTERVAL`
    seconds with the count since the last line. Each is counted (``mapping_error``) anyway.
    Call :meth:`error` inside the ``except``, or give it the error; the caller holds the
    ingest's lock."""

    def __init__(self, message: str, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(ERROR_LOG_INTERVAL, clock)
        self.message = message

    def error(self, error: BaseException | None = None) -> None:
        """Log ``error``, or without one the exception being handled."""
        due = self.due()
        if due is None:
            return
        if due.seconds is None:
            _logger.error("otel-luna: %s", self.message, exc_info=error or True)
            return
        _logger.error(
            "otel-luna: %s: %d times in the last %.0f s, the last %s (traceback logged once)",
            self.message,
            due.skipped + 1,
            due.seconds,
            repr(error or sys.exc_info()[1])[:200],
        )


class DeliveryState(NamedTuple):
    """How a destination's delivery stands (:meth:`Ingest.delivery_state`)."""

    #: The destination, as shown (secrets masked).
    destination: str
    #: The delivery trouble now (``kind``, ``reason``, ``since``: the ``trouble`` of
    #: ``otel-luna status --json``), None while writes succeed.
    trouble: Mapping[str, object] | None
    #: The process's spool directory; None for a memory spool.
    spool_directory: str | None


class Result(NamedTuple):
    """What one call took — the OTLP partial success of a request: spans, samples or points
    rejected, and every problem by reason in a line (values dropped from points that were
    written are reported there too, with 0 rejected: the OTLP way to warn)."""

    rejected: int
    message: str
    problems: Mapping[Reason, int]


_NOTHING = Result(0, "", {})


class SpanFilter(NamedTuple):
    """Which spans the profile's span mapper can make anything of (:attr:`Ingest.span_filter`):
    an adapter builds no record for a span ``wants(is_server, marked, span_id,
    local_parent_id)`` says no to, ``marked`` saying whether one of the span's attribute keys
    starts with ``prefix``, ``local_parent_id`` the parent's span id unless the parent is remote
    or there is none. It asks
    while :meth:`Ingest.write_spans` takes the records (under the ingest's lock, between the
    mapper's calls), span by span: a parent's answer depends on the children before it.

    ``take``, where the compiled code was built (:mod:`otel_luna._compiled`) and the profile
    is LUNA's with line protocol: ``take(spans, start, services)`` maps and encodes the SDK's
    ``spans[start:]`` itself while they are the common case, and returns the index of the first
    it left for the records (the SDK adapter's; called the same way, between the records)."""

    prefix: str
    wants: Callable[[bool, bool, int, int | None], bool]
    take: Callable[[Sequence[Any], int, Any], int] | None = None


class Ingest:
    """Maps, encodes and hands lines to the delivery; counts every outcome. Thread-safe.

    A disabled ingest (``enabled = false``) has no delivery and takes everything doing nothing.
    """

    def __init__(
        self,
        settings: Settings,
        sink: SinkLike | None = None,
        *,
        memory_fallback: bool = True,
        host_counts: Callable[[], Mapping[Reason, int]] | None = None,
    ) -> None:
        """``host_counts``: counters its host keeps (serve's requests), for the stats
        ``otel-luna status`` shows."""
        self.settings = settings
        self._host_counts = host_counts
        self._lock = threading.Lock()
        self._counts: dict[str, Counter[Reason]] = {TRACES: Counter(), METRICS: Counter()}
        profile = profile_of(settings)
        self._span_mapper, self._usage_mapper = profile.mappers(settings)
        #: What the adapters ask before they build a record (a span that cannot matter costs
        #: almost nothing); only while :meth:`write_spans` takes their records.
        self.span_filter = SpanFilter(self._span_mapper.prefix, self._span_mapper.wants)
        self._native: NativeSpans | None = None
        self.delivery: BatchWriter | None = None
        self._exit_deadline: float | None = None  # monotonic; see _time_left()
        self._closed = False
        self._max_ahead_ns = round(settings.max_time_ahead * 1e9)
        self._max_age_ns = round(settings.max_time_age * 1e9)
        self._span_errors = _ErrorLog("could not map a span")
        self._read_errors = _ErrorLog("could not read spans")
        self._usage_errors = _ErrorLog("could not map usage samples")
        if not settings.enabled:
            self._encoder = profile.encoder(LINE_PROTOCOL, settings)
            return
        if sink is None:  # the profile is checked before the sink opens files or sockets
            with sink_not_built(settings):
                factory = sink_factory(settings)
                wire = wire_format(factory, settings)
            self._encoder = profile.encoder(wire, settings)
            with sink_not_built(settings, factory):
                sink = factory(settings)
        else:  # given in code: one without write() and close() is the caller's TypeError
            sink = as_sink(sink, settings)
        try:
            self._encoder = profile.encoder(wire_format(sink, settings), settings)
            self._native = NativeSpans.of(
                self._span_mapper, self._encoder, _ErrorLog("the compiled span path failed").error
            )
            if self._native is not None:
                self.span_filter = self.span_filter._replace(take=self._native)
            self.delivery = open_delivery(
                settings,
                sink,
                memory_fallback=memory_fallback,
                host_counts=self._counts_for_delivery,
            )
        except BaseException:
            sink.close()
            raise
        _fork.track(self)
        selfmetrics.register(self)

    # -- the two ways in ---------------------------------------------------------------------

    def write_spans(
        self, records: Iterable[SpanRecord | Reason], span_ids: Iterable[int] = ()
    ) -> Result:
        """Map, encode and spool ended spans. ``records`` may hold a :class:`Reason` for a span
        its adapter could not read (counted); it is taken under the ingest's lock, one record at
        a time, so that an adapter may ask :attr:`span_filter` while it makes them (and leave
        out what the mapper does not want). A span that cannot be mapped costs only itself.
        ``span_ids``: the ids of the batch's spans, from a way in that may send a batch again (a
        sender's retry, as OTLP allows): a request sent again is not taken for ended while its
        children come first (the in-process exporter never sends a span twice).
        Raises only what the delivery raises (``SpoolUnavailable`` without memory fallback)."""
        if self.delivery is None:
            return _NOTHING
        counts: Counter[Reason] = Counter()
        lines: list[str] = []
        append = lines.append
        earliest, latest = time_window(time.time_ns(), self._max_ahead_ns, self._max_age_ns)
        with self._lock:
            mapper, encoder = self._span_mapper, self._encoder
            mapper.arrived_ns = time.monotonic_ns()  # what waits between spans expires by it
            mapper.batch_span_ids = set(span_ids)
            if self._native is not None:
                self._native.begin(lines, earliest, latest)
            add, encode = mapper.add, encoder.encode_point
            try:
                for record in records:
                    if type(record) is Reason:
                        counts[record] += 1
                        continue
                    try:
                        for point in add(record):  # type: ignore[arg-type]  # a SpanRecord here
                            if not earliest <= point[3] <= latest:
                                counts[_TOO_OLD if point[3] < earliest else _TOO_FAR_AHEAD] += 1
                                continue
                            try:
                                append(encode(point))
                            except InvalidPointError as error:
                                counts[error.reason] += 1
                    except Exception:  # noqa: BLE001 - logged (_ErrorLog); costs one span, not the batch
                        self._span_errors.error()
                        counts[_MAPPING_ERROR] += 1
            except Exception:  # noqa: BLE001 - logged; the adapter failed: the rest is unread
                self._read_errors.error()
                counts[_MAPPING_ERROR] += 1
            counts.update(mapper.take_counts())
            counts.update(encoder.take_counts())
            counts[_MAPPED] += len(lines)
            self._counts[TRACES].update(counts)
        self.delivery.submit(lines)
        return _result(counts)

    def write_usages(self, samples: Iterable[UsageSample]) -> Result:
        """Map, encode and spool ``luna.usages`` data points (nothing for a profile without
        usages). Raises only what the delivery raises."""
        if self.delivery is None or self._usage_mapper is None:
            return _NOTHING
        counts: Counter[Reason] = Counter()
        lines: list[str] = []
        earliest, latest = time_window(time.time_ns(), self._max_ahead_ns, self._max_age_ns)
        with self._lock:
            mapper, encoder = self._usage_mapper, self._encoder
            taken: list[UsageSample] = []
            try:
                taken.extend(samples)
                points = mapper.points(taken)
            except Exception:  # noqa: BLE001 - logged; an answer, never a dropped connection
                self._usage_errors.error()
                counts[_MAPPING_ERROR] += max(1, len(taken))
                points = []
            counts.update(mapper.take_counts())
            for service, estimator in mapper.take_new_overlaps():
                _logger.warning(
                    "otel-luna: luna.usages of service %s, estimator %s: a stream without start "
                    "time went down twice within %d minutes - restarts, or senders alike whose "
                    "values add up (usage_stream_overlap: usages may be inflated); set start "
                    "times (every OpenTelemetry SDK does) or a distinct service.instance.id per "
                    "sender",
                    ascii(service[:_NAME_SHOWN]),  # a name's first characters: one short line
                    ascii(estimator[:_NAME_SHOWN]),
                    OVERLAP_WINDOW_NS // (60 * 10**9),
                )
            for point in points:
                if not earliest <= point.time_ns <= latest:
                    counts[_TOO_OLD if point.time_ns < earliest else _TOO_FAR_AHEAD] += 1
                    continue
                try:
                    lines.append(encoder.encode_point(point))
                except InvalidPointError as error:
                    counts[error.reason] += 1
            counts.update(encoder.take_counts())
            counts[_MAPPED] += len(lines)
            self._counts[METRICS].update(counts)
        self.delivery.submit(lines)
        return _result(counts)

    def count(self, signal: str, reason: Reason, value: int = 1) -> None:
        """Count what an adapter saw outside :meth:`write_spans`/:meth:`write_usages` (a
        failed export)."""
        with self._lock:
            self._counts[signal][reason] += value

    # -- what it holds and did ---------------------------------------------------------------

    def _counts_for_delivery(self) -> Counter[Reason]:
        """What the ingest, as the delivery's host, adds to the delivery's counters in the
        stats: its own and its host's."""
        counts = self.mapping_counts()
        if self._host_counts is not None:
            counts.update(self._host_counts())
        return counts

    def mapping_counts(self) -> Counter[Reason]:
        """Mapping and encoding counters of both signals, summed."""
        with self._lock:
            return self._counts[TRACES] + self._counts[METRICS]

    def mapping_counts_by_signal(self) -> dict[str, Counter[Reason]]:
        """Mapping and encoding counters by signal (for the self-metrics)."""
        with self._lock:
            return {signal: Counter(counts) for signal, counts in self._counts.items()}

    def delivery_counts(self) -> Counter[Reason]:
        """Spool, writer and dead-letter counters."""
        return Counter() if self.delivery is None else self.delivery.all_counts()

    def counts(self) -> Counter[Reason]:
        """Every counter, by reason."""
        return self.mapping_counts() + self.delivery_counts()

    def delivery_state(self) -> DeliveryState | None:
        """How delivery stands, for a health check (None when nothing is delivered: disabled
        or shut down)."""
        delivery = self.delivery
        if delivery is None or self._closed:
            return None
        directory = delivery.spool.directory
        return DeliveryState(
            delivery.destination, delivery.trouble, None if directory is None else str(directory)
        )

    def queued(self) -> int:
        """Lines waiting in the spool (none once shut down: what a disk spool keeps then is
        the next start's)."""
        return 0 if self.delivery is None or self._closed else self.delivery.queued

    def pending_bytes(self) -> int:
        """Bytes waiting in the spool."""
        return 0 if self.delivery is None else self.delivery.spool.pending_bytes

    # -- lifetime ----------------------------------------------------------------------------

    def force_flush(self, timeout: float | None) -> bool:
        return True if self.delivery is None else self.delivery.force_flush(timeout)

    def shutdown(self) -> None:
        if self.delivery is not None:
            self.delivery.shutdown(self._time_left())
        self._closed = True

    def _time_left(self) -> float:
        """What is left of ``shutdown_timeout`` for this exit. Releases close together (the span
        and the metric exporter at exit) share one budget, so a destination that is down costs
        it once, not once per signal; a release long after the last starts a new one."""
        now = time.monotonic()
        timeout = self.settings.shutdown_timeout
        if self._exit_deadline is None or now > self._exit_deadline + timeout:
            self._exit_deadline = now + timeout
        return max(0.0, self._exit_deadline - now)

    def after_fork_in_child(self) -> None:
        """A lock the parent's exporting thread held stays held in the child: replace it. The
        child's counters are its own. (Its delivery renews itself: :mod:`otel_luna._fork`.)"""
        self._lock = threading.Lock()
        self._counts = {TRACES: Counter(), METRICS: Counter()}

    @classmethod
    def shared(
        cls, settings: Settings, sink: SinkLike | None = None, *, memory_fallback: bool = True
    ) -> Ingest:
        """The ingest of this destination in this process, made on first use; every call
        needs a :meth:`release`. Equal settings (and the same ``sink`` object, if one is
        given) are the same destination."""
        key = (settings, None if sink is None else id(sink), memory_fallback)
        with _registry.lock:
            entry = _registry.entries.get(key)
            if entry is None:
                ingest = cls(settings, sink, memory_fallback=memory_fallback)
                entry = _registry.entries[key] = _Entry(ingest)
                _registry.keys[id(ingest)] = key
                if ingest.delivery is not None:  # inside an application: SIGTERM delivers it
                    lifecycle.watch(ingest, settings)
            entry.users += 1
            return entry.ingest

    def release(self) -> None:
        """One user is done: what is spooled is delivered (within ``shutdown_timeout``, one
        budget for releases close together); the last user also shuts the ingest down."""
        with _registry.lock:
            key = _registry.keys.get(id(self))
            last = True
            if key is not None:  # else not shared: made directly, shut down directly
                entry = _registry.entries[key]
                entry.users -= 1
                last = entry.users <= 0
                if last:
                    del _registry.entries[key]
                    del _registry.keys[id(self)]
        if last:
            self.shutdown()
        else:  # what this user exported is delivered now, as its shutdown promises; others
            self.force_flush(self._time_left())  # (or a copy that was never shut down) go on


_Key = tuple[Settings, "int | None", bool]


@dataclass
class _Entry:
    ingest: Ingest
    users: int = 0


class _Registry:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: dict[_Key, _Entry] = {}
        self.keys: dict[int, _Key] = {}  # id(ingest) → its key

    def after_fork_in_child(self) -> None:
        self.lock = threading.Lock()


_registry = _Registry()
_fork.at_fork(_registry.after_fork_in_child)


def _result(counts: Counter[Reason]) -> Result:
    found = problems(counts.items())
    if not found:
        return _NOTHING
    return Result(rejected(found), describe(found), found)
