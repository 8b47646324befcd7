"""Every counter otel-luna keeps, as one enumeration, and a thread-safe counter for them.

A :class:`Reason` is a counter's key (its value is the name ``counts``, ``stats.json`` and
``otel-luna status`` show) and says what it reports, an :class:`Outcome`: what became of the
points it counts (mapped, rejected, spooled, written, …) or ``EVENT`` for what is not about
points (SERVER spans seen, split writes, writer restarts). The self-metrics
(:mod:`otel_luna.selfmetrics`), the OTLP partial success of ``otel-luna serve`` and ``status``
read the outcome from here; nothing guesses it from a name.
"""

from __future__ import annotations

import enum
import threading
from collections import Counter
from collections.abc import Iterable, Mapping

__all__ = ["Counting", "Counts", "Outcome", "Reason", "describe", "problems", "rejected"]


class Outcome(enum.Enum):
    """What became of the points a counter counts."""

    MAPPED = "mapped"  # points made from spans and samples
    REJECTED = "rejected"  # a span, sample or point not written (mapping or encoding)
    VALUE_DROPPED = "value_dropped"  # a point written without one attribute, tag or field
    SPOOLED = "spooled"
    WRITTEN = "written"
    RETRIED = "retried"
    REPLAYED = "replayed"  # read back from a spool left by an earlier process
    DEAD_LETTERED = "dead_lettered"
    LEFT_IN_SPOOL = "left_in_spool"  # not delivered at shutdown, on disk for the next start
    DROPPED = "dropped"  # points lost in delivery (spool full, memory only at shutdown)
    EVENT = "event"  # not about points


_O = Outcome


class Reason(str, enum.Enum):
    """A counter: its name (the value) and its :class:`Outcome`."""

    outcome: Outcome

    def __new__(cls, name: str, outcome: Outcome) -> Reason:
        member = str.__new__(cls, name)
        member._value_ = name
        member.outcome = outcome
        return member

    # Shown and formatted as the name, the way Counter keys and JSON have it.
    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        return str.__format__(self, spec)

    @classmethod
    def of(cls, name: str) -> Reason:
        """The reason called ``name``; ``ValueError`` if there is none."""
        return cls(name)  # type: ignore[call-arg]  # lookup by value, not a new member

    @property
    def label(self) -> str:
        """The ``reason`` attribute of the self-metric: empty where the outcome says it all."""
        name = str(self)
        if self.outcome is Outcome.DROPPED:
            return name.removeprefix("dropped_")
        if name == self.outcome.value or self.outcome is Outcome.REPLAYED:
            return ""
        return name

    # -- ingest: mapping ------------------------------------------------------------------
    MAPPED = "mapped", _O.MAPPED
    SERVER_SPANS = "server_spans", _O.EVENT
    # spans the SDK's BatchSpanProcessor in front of a luna exporter dropped, its queue full
    # ("Queue full, dropping Span."): they never reached the exporter, their points are lost
    SDK_QUEUE_FULL = "sdk_queue_full", _O.EVENT
    ROUTE_OVERFLOW = "route_overflow", _O.EVENT  # written with route {overflow}
    UNFINISHED_SPAN = "unfinished_span", _O.REJECTED
    MAPPING_ERROR = "mapping_error", _O.REJECTED
    EXPORT_ERROR = "export_error", _O.REJECTED
    INVALID_LICENSE_STATUS = "invalid_license_status", _O.REJECTED
    INVALID_LIVENESS_BALANCE = "invalid_liveness_balance", _O.VALUE_DROPPED
    INCOMPLETE_LICENSE_CHECK = "incomplete_license_check", _O.VALUE_DROPPED
    # a luna.* attribute but the licence's (luna.usages.*, luna.tag.*, ...) on a licence-check
    # span: its licensing point does not take it
    LUNA_ATTRIBUTE_ON_LICENSE_CHECK = "luna_attribute_on_license_check", _O.VALUE_DROPPED
    UNKNOWN_LUNA_ATTRIBUTE = "unknown_luna_attribute", _O.VALUE_DROPPED
    UNSUPPORTED_ATTRIBUTE_TYPE = "unsupported_attribute_type", _O.VALUE_DROPPED
    # an HTTP method that is no RFC 9110 token of at most 32 characters: written as _OTHER
    INVALID_HTTP_METHOD = "invalid_http_method", _O.VALUE_DROPPED
    # an HTTP status that is no integer 0-999 (or string of up to 3 digits): no status_code tag
    INVALID_HTTP_STATUS = "invalid_http_status", _O.VALUE_DROPPED
    # a SERVER span that ends before it starts: written with execution_time 0
    NEGATIVE_EXECUTION_TIME = "negative_execution_time", _O.VALUE_DROPPED
    ORPHAN_LUNA_ATTRIBUTES = "orphan_luna_attributes", _O.VALUE_DROPPED
    EXPIRED_LUNA_ATTRIBUTES = "expired_luna_attributes", _O.VALUE_DROPPED
    # tags, fields, timings of a span that ended after its request was written (its usages are
    # written all the same, as a point of their own)
    LATE_LUNA_ATTRIBUTES = "late_luna_attributes", _O.VALUE_DROPPED
    # child data dropped before its SERVER span came, to keep waiting data within their bounds
    EVICTED_LUNA_ATTRIBUTES = "evicted_luna_attributes", _O.VALUE_DROPPED
    # user tags, fields or timings past the most one point takes
    TOO_MANY_LUNA_ATTRIBUTES = "too_many_luna_attributes", _O.VALUE_DROPPED
    # routes of per-service route budgets forgotten to keep them within their bound
    ROUTES_FORGOTTEN = "routes_forgotten", _O.EVENT
    ATTRIBUTE_FIELD_AND_TIME = "attribute_field_and_time", _O.VALUE_DROPPED
    ATTRIBUTE_TAG_AND_FIELD = "attribute_tag_and_field", _O.VALUE_DROPPED
    ATTRIBUTE_SHADOWS_SCHEMA = "attribute_shadows_schema", _O.VALUE_DROPPED
    ATTRIBUTE_RESERVED_KEY = "attribute_reserved_key", _O.VALUE_DROPPED
    ATTRIBUTE_INVALID_UTF8_KEY = "attribute_invalid_utf8_key", _O.VALUE_DROPPED
    ATTRIBUTE_EMPTY_KEY = "attribute_empty_key", _O.VALUE_DROPPED
    ATTRIBUTE_NEWLINE_IN_KEY = "attribute_newline_in_key", _O.VALUE_DROPPED
    ATTRIBUTE_BACKSLASH_IN_KEY = "attribute_backslash_in_key", _O.VALUE_DROPPED
    ATTRIBUTE_WHITESPACE_START_KEY = "attribute_whitespace_start_key", _O.VALUE_DROPPED
    ATTRIBUTE_EMPTY_TAG_VALUE = "attribute_empty_tag_value", _O.VALUE_DROPPED
    ATTRIBUTE_NEWLINE_IN_TAG_VALUE = "attribute_newline_in_tag_value", _O.VALUE_DROPPED
    ATTRIBUTE_BACKSLASH_IN_TAG_VALUE = "attribute_backslash_in_tag_value", _O.VALUE_DROPPED
    ATTRIBUTE_TAG_VALUE_TOO_LONG = "attribute_tag_value_too_long", _O.VALUE_DROPPED
    ATTRIBUTE_INVALID_UTF8 = "attribute_invalid_utf8", _O.VALUE_DROPPED
    # a luna.field.* / luna.time.* value that does not fit its field's one type
    ATTRIBUTE_TYPE_MISMATCH = "attribute_type_mismatch", _O.VALUE_DROPPED
    # a luna.usages.<estimator> whose name is no identifier, or whose value is no integer >= 0
    ATTRIBUTE_INVALID_ESTIMATOR = "attribute_invalid_estimator", _O.VALUE_DROPPED
    ATTRIBUTE_INVALID_USAGE = "attribute_invalid_usage", _O.VALUE_DROPPED
    UNKNOWN_WATCHDOG_EVENT = "unknown_watchdog_event", _O.REJECTED
    BAD_WATCHDOG_VALUE = "bad_watchdog_value", _O.VALUE_DROPPED
    INVALID_ESTIMATOR = "invalid_estimator", _O.REJECTED
    NONFINITE_USAGE = "nonfinite_usage", _O.REJECTED
    NEGATIVE_USAGE = "negative_usage", _O.REJECTED
    FRACTIONAL_USAGE = "fractional_usage", _O.REJECTED  # not a whole number: never rounded
    # a cumulative luna.usages point older than its stream's last: its uses are in the later one
    OUT_OF_ORDER_USAGE = "out_of_order_usage", _O.REJECTED
    USAGE_BASELINE = "usage_baseline", _O.EVENT  # a stream's first cumulative point, not counted
    USAGE_STREAM_EVICTED = "usage_stream_evicted", _O.EVENT  # past mapping/usages.STREAM_LIMIT
    USAGE_STREAM_EXPIRED = "usage_stream_expired", _O.EVENT  # not seen for STALE_NS
    # a stream of unknown start time that went down and up again: two senders alike
    USAGE_STREAM_OVERLAP = "usage_stream_overlap", _O.EVENT

    # -- ingest: encoding (names from schema._keys and the encoder) ------------------------
    TIME_OUT_OF_RANGE = "time_out_of_range", _O.REJECTED
    # a point dated beyond max_time_ahead after, or max_time_age before, the ingest's clock
    TIME_TOO_FAR_AHEAD = "time_too_far_ahead", _O.REJECTED
    TIME_TOO_OLD = "time_too_old", _O.REJECTED
    KEY_TOO_LONG = "key_too_long", _O.REJECTED
    INVALID_UTF8 = "invalid_utf8", _O.REJECTED
    INVALID_UTF8_KEY = "invalid_utf8_key", _O.REJECTED
    COMMENT_MEASUREMENT = "comment_measurement", _O.REJECTED
    RESERVED_KEY = "reserved_key", _O.REJECTED
    NO_FIELDS = "no_fields", _O.REJECTED
    EMPTY_MEASUREMENT = "empty_measurement", _O.REJECTED
    NEWLINE_IN_MEASUREMENT = "newline_in_measurement", _O.REJECTED
    BACKSLASH_IN_MEASUREMENT = "backslash_in_measurement", _O.REJECTED
    WHITESPACE_START_MEASUREMENT = "whitespace_start_measurement", _O.REJECTED
    EMPTY_TAG_KEY = "empty_tag_key", _O.REJECTED
    NEWLINE_IN_TAG_KEY = "newline_in_tag_key", _O.REJECTED
    BACKSLASH_IN_TAG_KEY = "backslash_in_tag_key", _O.REJECTED
    EMPTY_TAG_VALUE = "empty_tag_value", _O.VALUE_DROPPED  # the tag is left out
    NEWLINE_IN_TAG_VALUE = "newline_in_tag_value", _O.REJECTED
    BACKSLASH_IN_TAG_VALUE = "backslash_in_tag_value", _O.REJECTED
    TAG_VALUE_TOO_LONG = "tag_value_too_long", _O.REJECTED
    EMPTY_FIELD_KEY = "empty_field_key", _O.REJECTED
    NEWLINE_IN_FIELD_KEY = "newline_in_field_key", _O.REJECTED
    BACKSLASH_IN_FIELD_KEY = "backslash_in_field_key", _O.REJECTED
    WHITESPACE_START_FIELD_KEY = "whitespace_start_field_key", _O.REJECTED
    EMPTY_KEY = "empty_key", _O.REJECTED
    NEWLINE_IN_KEY = "newline_in_key", _O.REJECTED
    BACKSLASH_IN_KEY = "backslash_in_key", _O.REJECTED
    WHITESPACE_START_KEY = "whitespace_start_key", _O.REJECTED
    NONFINITE_FIELD = "nonfinite_field", _O.VALUE_DROPPED
    INT_OUT_OF_RANGE = "int_out_of_range", _O.VALUE_DROPPED
    UNSUPPORTED_FIELD_TYPE = "unsupported_field_type", _O.VALUE_DROPPED
    TRUNCATED_STRING = "truncated_string", _O.VALUE_DROPPED

    # -- delivery ---------------------------------------------------------------------------
    SPOOLED = "spooled", _O.SPOOLED
    WRITTEN = "written", _O.WRITTEN
    RETRIED = "retried", _O.RETRIED
    REPLAYED_LINES = "replayed_lines", _O.REPLAYED
    DEAD_LETTERED = "dead_lettered", _O.DEAD_LETTERED
    LEFT_IN_SPOOL = "left_in_spool", _O.LEFT_IN_SPOOL
    DROPPED_SPOOL_FULL = "dropped_spool_full", _O.DROPPED
    DROPPED_AT_SHUTDOWN = "dropped_at_shutdown", _O.DROPPED
    DROPPED_AFTER_SHUTDOWN = "dropped_after_shutdown", _O.DROPPED
    DROPPED_CORRUPT = "dropped_corrupt", _O.DROPPED
    SPLIT_WRITES = "split_writes", _O.EVENT
    SPOOL_FALLBACK_MEMORY = "spool_fallback_memory", _O.EVENT
    CORRUPT_RECORDS = "corrupt_records", _O.EVENT
    ACK_WRITE_ERRORS = "ack_write_errors", _O.EVENT
    SPOOL_FILES_REFUSED = "spool_files_refused", _O.EVENT  # a link, FIFO, foreign name ...
    WRITER_RESTARTS = "writer_restarts", _O.EVENT
    WRITER_ERRORS = "writer_errors", _O.EVENT
    SINK_ERRORS = "sink_errors", _O.EVENT
    DEAD_LETTERS_ROTATED_OUT = "dead_letters_rotated_out", _O.EVENT
    DEAD_LETTER_WRITE_ERRORS = "dead_letter_write_errors", _O.EVENT

    # -- otel-luna serve --------------------------------------------------------------------
    REQUESTS_TRACES = "requests_traces", _O.EVENT
    REQUESTS_METRICS = "requests_metrics", _O.EVENT
    REQUESTS_REFUSED_SPOOL_FULL = "requests_refused_spool_full", _O.EVENT
    REQUESTS_REFUSED_SPOOL_UNAVAILABLE = "requests_refused_spool_unavailable", _O.EVENT
    # OTLP/HTTP requests answered with an error (receiver/protocol.py), by why
    REQUESTS_REFUSED_NOT_FOUND = "requests_refused_not_found", _O.EVENT  # 404
    REQUESTS_REFUSED_METHOD = "requests_refused_method", _O.EVENT  # 405
    REQUESTS_REFUSED_UNAUTHENTICATED = "requests_refused_unauthenticated", _O.EVENT  # 401
    REQUESTS_REFUSED_UNSUPPORTED = "requests_refused_unsupported", _O.EVENT  # 415
    REQUESTS_REFUSED_TOO_LARGE = "requests_refused_too_large", _O.EVENT  # 413, 431
    REQUESTS_REFUSED_MALFORMED = "requests_refused_malformed", _O.EVENT  # 400
    # 413: decoded it would pass serve_max_decoded_bytes (HTTP and gRPC)
    REQUESTS_REFUSED_DECODED_TOO_LARGE = "requests_refused_decoded_too_large", _O.EVENT
    REQUESTS_REFUSED_TIMEOUT = "requests_refused_timeout", _O.EVENT  # 408, or closed silently
    REQUESTS_REFUSED_BUSY = "requests_refused_busy", _O.EVENT  # 503: too many bytes in flight
    REQUESTS_REFUSED_STOPPING = "requests_refused_stopping", _O.EVENT  # 503: serve is stopping
    # 503: a body still arriving when the stop's grace ended
    REQUESTS_REFUSED_CUT_AT_STOP = "requests_refused_cut_at_stop", _O.EVENT
    REQUESTS_FAILED = "requests_failed", _O.EVENT  # 500: a bug (logged)
    # OTLP/JSON spans and metrics that could not be read, left out of an accepted request
    MALFORMED_SPAN = "malformed_span", _O.REJECTED
    MALFORMED_DATA_POINT = "malformed_data_point", _O.REJECTED
    # OTLP spans whose trace or span id is not 16/8 bytes or all zeros (invalid, says the proto):
    # their points would have no identity of their own and overwrite each other
    INVALID_SPAN_ID = "invalid_span_id", _O.REJECTED


class Counts:
    """Counters that several threads update: every update and every read under one lock.

    For counters on a hot path that already run under a lock of their own (the mapping's, under
    the ingest lock), a plain ``Counter[Reason]`` read under that lock does the same job.
    """

    __slots__ = ("_lock", "_values")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: Counter[Reason] = Counter()

    def add(self, reason: Reason, count: int = 1) -> None:
        if count:
            with self._lock:
                self._values[reason] += count

    def update(self, counts: Mapping[Reason, int]) -> None:
        with self._lock:
            self._values.update(counts)

    def __getitem__(self, reason: str) -> int:
        with self._lock:
            return self._values[reason]  # type: ignore[index]  # a Reason's name finds it too

    def snapshot(self) -> Counter[Reason]:
        """A copy, consistent at one moment."""
        with self._lock:
            return Counter(self._values)

    def after_fork_in_child(self) -> None:
        """A fresh lock (the parent's may have been held by a thread the child lacks), and no
        counts: the child's counters are its own."""
        self._lock = threading.Lock()
        self._values = Counter()


class Counting:
    """What a mapper or an encoder shares: it counts what it drops or rejects in ``counts``
    as it works, and hands what it counted over with :meth:`take_counts` (the ingest takes them
    after each batch). Not thread-safe: its owner's lock covers both."""

    counts: Counter[Reason]

    def __init__(self) -> None:
        #: What it counted since :meth:`take_counts` last took them.
        self.counts = Counter()

    def take_counts(self) -> Counter[Reason]:
        """What it counted since the last call (or since it was made); it counts anew."""
        counts = self.counts
        self.counts = Counter()
        return counts


def rejected(counts: Mapping[Reason, int]) -> int:
    """How many spans, samples or points ``counts`` says were rejected."""
    return sum(value for reason, value in counts.items() if reason.outcome is Outcome.REJECTED)


def describe(counts: Mapping[Reason, int]) -> str:
    """The problems in ``counts`` in one line, rejections first, for OTLP partial success."""
    parts = []
    for outcome, what in (
        (Outcome.REJECTED, "points rejected"),
        (Outcome.VALUE_DROPPED, "values or attributes dropped"),
    ):
        found = {str(key): value for key, value in counts.items() if key.outcome is outcome}
        if found:
            reasons = ", ".join(f"{key}={value}" for key, value in sorted(found.items()))
            total = f"{sum(found.values())} " if outcome is Outcome.REJECTED else ""
            parts.append(f"{total}{what} ({reasons})")
    return "; ".join(parts)


def problems(counts: Iterable[tuple[Reason, int]]) -> Counter[Reason]:
    """Only the rejections and dropped values among ``counts``."""
    return Counter(
        {
            reason: value
            for reason, value in counts
            if value and reason.outcome in (Outcome.REJECTED, Outcome.VALUE_DROPPED)
        }
    )
