"""The SDK-facing edge: the ``luna`` span and metric exporters. Thin adapters over
:class:`~otel_luna.ingest.Ingest`; they never raise into the application.

Built without settings (as ``opentelemetry-instrument`` builds them, from the environment), an
exporter whose settings are bad logs one line naming the setting and what it accepts and does
nothing, so the app runs on without it (the OpenTelemetry convention);
``OTEL_EXPORTER_LUNA_STRICT=true`` ends the process instead, with :data:`EXIT_BAD_SETTING`.
Settings given in code raise :class:`~otel_luna.settings.SettingsError` as ever."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from opentelemetry.environment_variables import OTEL_METRICS_EXPORTER
from opentelemetry.sdk.metrics import Counter as SdkCounter
from opentelemetry.sdk.metrics import ObservableCounter
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from otel_luna import _helpers
from otel_luna.ingest._ingest import METRICS, TRACES, Ingest
from otel_luna.ingest._sdk import ServiceNames, span_records, usage_samples
from otel_luna.outcomes import Reason
from otel_luna.profiles import profile_of
from otel_luna.settings._declare import SettingsError
from otel_luna.settings._parsers import USAGES_PER_INTERVAL, USAGES_PER_REQUEST
from otel_luna.settings._settings import Settings, env_name, strict_requested
from otel_luna.sinks._base import SinkLike

_logger = logging.getLogger(__name__)

#: Exit status of a process that a bad setting ends (``OTEL_EXPORTER_LUNA_STRICT=true``).
EXIT_BAD_SETTING = 2
#: How a strict exporter ends the process: at once, as ``sys.exit`` cannot end it from
#: ``opentelemetry-instrument``'s start-up code (``sitecustomize``). Tests replace it.
_exit: Callable[[int], Any] = os._exit
#: The messages already logged: one line per process, not one per exporter.
_refused: set[str] = set()
_refused_lock = threading.Lock()


def _refuse(error: SettingsError) -> None:
    """Log ``error`` (once per process) for an exporter built from the environment; end the
    process when ``OTEL_EXPORTER_LUNA_STRICT`` asks for it."""
    strict = strict_requested()
    strict_env = env_name("strict")
    if strict:
        outcome = f"stopping the process ({strict_env} is set)"
    else:
        outcome = (
            f"the luna exporter is off and the app runs without it ({strict_env}=true stops "
            "the process instead)"
        )
    message = f"otel-luna: {error}; {outcome}"
    with _refused_lock:
        first = message not in _refused
        _refused.add(message)
    if first:
        _logger.error("%s", message)
    if strict:
        for stream in (sys.stdout, sys.stderr):
            # a closed stream, or none at all: nothing to keep
            with contextlib.suppress(AttributeError, OSError, ValueError):
                stream.flush()
        _exit(EXIT_BAD_SETTING)


#: The name of the luna exporters' entry points (``OTEL_TRACES_EXPORTER=luna``).
_ENTRY_POINT = "luna"
#: Whether a ``LunaMetricExporter`` was built in this process, and whether the warning of
#: :func:`_warn_without_metrics` was logged.
_metric_exporter_built = False
_warned_without_metrics = False


def _warn_without_metrics(settings: Settings) -> None:
    """One line, once, when usages go to the ``luna.usages`` counter but no luna metrics
    exporter writes it: said when the luna traces exporter, built from the environment
    (``opentelemetry-instrument`` builds the traces exporters first), runs and
    ``OTEL_METRICS_EXPORTER`` is unset, ``none`` or names other exporters only — unless a
    ``LunaMetricExporter`` was built (in code). In request mode (``usages``), the first time
    ``record_usages`` counts outside a request or in a sampled-out trace; in interval mode, at
    start."""
    global _warned_without_metrics
    if _warned_without_metrics or _metric_exporter_built or not settings.enabled:
        return
    if profile_of(settings).usage_mapper is None:  # a profile without usages (watchdog)
        return
    named = os.environ.get(OTEL_METRICS_EXPORTER, "").strip()
    if _ENTRY_POINT in {name.strip() for name in named.split(",")}:
        return
    _warned_without_metrics = True
    if settings.usages == USAGES_PER_INTERVAL:
        where = f"counts on the luna.usages counter ({env_name('usages')}={USAGES_PER_INTERVAL})"
        instead = (
            f", or {env_name('usages')}={USAGES_PER_REQUEST} to write a request's usages with "
            "its span"
        )
    else:  # a request's go with its span already: these had no request to go with
        where = (
            "counts usages recorded outside a request, or in a sampled-out trace, on the "
            "luna.usages counter"
        )
        instead = ""
    _logger.warning(
        "otel-luna: record_usages %s but no luna metrics exporter writes it (%s=%s): those "
        "usages are lost; set %s=luna%s",
        where,
        OTEL_METRICS_EXPORTER,
        named or "unset",
        OTEL_METRICS_EXPORTER,
        instead,
    )


def _seconds(timeout_millis: Any, default: float) -> float:
    """A timeout the SDK (or an application) passed in milliseconds, in seconds; ``default``
    for anything that is no finite, non-negative number (never an exception)."""
    try:
        seconds = float(timeout_millis) / 1000
    except (TypeError, ValueError):
        return default
    return seconds if 0 <= seconds < float("inf") else default


def _size(items: Any) -> int:
    try:
        return len(items)
    except TypeError:
        return 1


class _LunaExporterBase:
    """What both exporters share: the settings, the destination's ingest (shared with the
    other exporter of the process), the service-name cache and the shutdown flag."""

    def _attach(self, settings: Settings | None, sink: SinkLike | None) -> None:
        #: Why an exporter built from the environment does nothing (``None``: it works).
        self.settings_error: SettingsError | None = None
        try:
            self._open(settings if settings is not None else Settings.load(), sink)
        except SettingsError as error:
            if settings is not None:  # given in code: the caller's to handle
                raise
            _refuse(error)
            self.settings_error = error
            self._open(Settings(enabled=False), None)

    def _open(self, settings: Settings, sink: SinkLike | None) -> None:
        self._ingest = Ingest.shared(settings, sink)
        self.settings = settings
        self._services = ServiceNames()
        self._shutdown = False

    @property
    def counts(self) -> Any:
        """What the exporter's destination mapped, dropped and wrote, by reason (a ``Counter``)."""
        return self._ingest.counts()

    def _release(self) -> None:
        if not self._shutdown:
            self._shutdown = True
            self._ingest.release()


#: Where and how the SDK's ``BatchSpanProcessor`` says it dropped a span because its queue was
#: full (opentelemetry-sdk 1.45: ``_logger.warning("Queue full, dropping %s.", "Span")`` in
#: ``BatchProcessor.emit``, called from ``BatchSpanProcessor.on_end``).
_SDK_QUEUE_LOGGER = "opentelemetry.sdk._shared_internal"
_SDK_QUEUE_FULL = ("Queue full, dropping %s.", ("Span",))
#: How many frames up from the logging call :class:`_SdkQueueFullCounter` looks for the
#: ``BatchSpanProcessor`` that dropped the span.
_FRAMES_TO_PROCESSOR = 16


class _SdkQueueFullCounter(logging.Filter):
    """Counts, as :attr:`~otel_luna.outcomes.Reason.SDK_QUEUE_FULL`, every span the SDK's
    ``BatchSpanProcessor`` drops in front of a :class:`LunaSpanExporter`: it reads the SDK's
    ``Queue full`` warning on its way through the SDK's logger (first of the logger's filters,
    so before the SDK's own filter that lets one such line through per 20 s) and finds the
    processor that dropped it among the calling frames (``span_exporter``: which exporter).
    Drops in front of other exporters are not counted. Lets every record through (the warning
    is still logged), never raises. Nothing is counted when the application turned that
    logger's warnings off (a level above WARNING, or logging disabled)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (record.msg, record.args) == _SDK_QUEUE_FULL:
            with contextlib.suppress(Exception):  # never into the application
                exporter = _dropping_exporter()
                if isinstance(exporter, LunaSpanExporter):
                    exporter._ingest.count(TRACES, Reason.SDK_QUEUE_FULL)
        return True


def _dropping_exporter() -> object:
    """The exporter behind the ``BatchSpanProcessor`` among the calling frames, if any."""
    frame: FrameType | None = sys._getframe(1)
    for _ in range(_FRAMES_TO_PROCESSOR):
        if frame is None:
            return None
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, BatchSpanProcessor):
            return candidate.span_exporter
        frame = frame.f_back
    return None


_sdk_queue_full_counter = _SdkQueueFullCounter()


def _count_sdk_queue_full() -> None:
    """Put :class:`_SdkQueueFullCounter` first among the SDK logger's filters (once)."""
    filters = logging.getLogger(_SDK_QUEUE_LOGGER).filters
    with _refused_lock:
        if _sdk_queue_full_counter not in filters:
            filters.insert(0, _sdk_queue_full_counter)


class LunaSpanExporter(_LunaExporterBase, SpanExporter):
    """Writes SERVER spans as LUNA ``requests`` / ``errors`` points (and, for a request that
    used SDK estimators, ``usages_statistic``), licence checks as ``licensing`` points.

    With no arguments it reads :class:`~otel_luna.settings.Settings` from the environment, so
    ``OTEL_TRACES_EXPORTER=luna opentelemetry-instrument python app.py`` needs no code change.
    ``export()`` maps, encodes and spools; a background thread does the network I/O. The span
    and metric exporters of a process with equal settings share one ingest and delivery.
    """

    def __init__(self, settings: Settings | None = None, *, sink: SinkLike | None = None) -> None:
        self._attach(settings, sink)
        _count_sdk_queue_full()
        built = self.settings
        check = None
        if settings is None:  # from the environment: is a luna metrics exporter there too?
            if built.usages == USAGES_PER_INTERVAL:
                _warn_without_metrics(built)
            else:
                check = lambda: _warn_without_metrics(built)  # noqa: E731
        _helpers.set_usages_mode(built.usages, check)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            self._ingest.count(TRACES, Reason.DROPPED_AFTER_SHUTDOWN, _size(spans))
            return SpanExportResult.FAILURE
        try:
            ingest = self._ingest
            result = ingest.write_spans(span_records(spans, self._services, ingest.span_filter))
        except Exception:  # never into the application; the ingest isolates each span
            self._ingest.count(TRACES, Reason.EXPORT_ERROR, len(spans))
            _logger.exception("otel-luna: could not export %d spans", len(spans))
            return SpanExportResult.FAILURE
        if result.problems.get(Reason.EXPORT_ERROR):  # handed something that is no span
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._ingest.force_flush(_seconds(timeout_millis, 30.0))

    def shutdown(self) -> None:
        self._release()


class LunaMetricExporter(_LunaExporterBase, MetricExporter):
    """Writes the ``luna.usages`` counter as ``usages_statistic`` points, one per service and
    export interval: the usages ``record_usages`` counts outside a request, or all of them with
    ``usages = interval``. Other metrics are skipped. Asks the SDK for delta temporality on
    counters; cumulative data (other SDKs, the OTLP receiver) is turned into deltas per stream.
    """

    def __init__(self, settings: Settings | None = None, *, sink: SinkLike | None = None) -> None:
        super().__init__(
            preferred_temporality={
                SdkCounter: AggregationTemporality.DELTA,
                ObservableCounter: AggregationTemporality.DELTA,
            }
        )
        global _metric_exporter_built
        _metric_exporter_built = True
        self._attach(settings, sink)
        _helpers.set_usages_mode(self.settings.usages)

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        if self._shutdown:
            self._ingest.count(METRICS, Reason.DROPPED_AFTER_SHUTDOWN)
            return MetricExportResult.FAILURE
        try:
            self._ingest.write_usages(usage_samples(metrics_data, self._services))
        except Exception:  # never into the application
            self._ingest.count(METRICS, Reason.EXPORT_ERROR)
            _logger.exception("otel-luna: could not export metrics")
            return MetricExportResult.FAILURE
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._ingest.force_flush(_seconds(timeout_millis, 10.0))

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._release()
