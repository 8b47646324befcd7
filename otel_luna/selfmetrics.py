"""otel-luna's own counters as OpenTelemetry metrics, in the ``otel_luna.*`` namespace.

``otel_luna.points`` (counter, attributes ``signal``, ``outcome``, ``reason``) counts points
mapped, spooled, written, retried, replayed, dropped and dead-lettered; ``otel_luna.spool.lines``
(up-down counter, attribute ``signal``) is what waits in the spool. They go wherever the
application's metrics go; the ``luna`` metric exporter never writes them into a LUNA series
(it only maps ``luna.usages``).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import Counter
from collections.abc import Iterable
from typing import Protocol

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

#: Counter keys that are not drops, and the outcome they report.
_OUTCOMES = {
    "mapped": "mapped",
    "spooled": "spooled",
    "written": "written",
    "retried": "retried",
    "replayed_lines": "replayed",
    "dead_lettered": "dead_lettered",
    "left_in_spool": "left_in_spool",
}
#: Counter keys that only describe (not points): reported under ``otel_luna.events``.
_NOT_POINTS = frozenset(
    {
        "server_spans",
        "split_writes",
        "spool_fallback_memory",
        "corrupt_records",
        "queued",
        "route_overflow",
        "ack_write_errors",
        "writer_restarts",
        "writer_errors",
        "sink_errors",
        "dead_letters_rotated_out",
    }
)


def classify(key: str) -> tuple[str, str]:
    """(outcome, reason) of a counter key: ``dropped_spool_full`` → (dropped, spool_full)."""
    outcome = _OUTCOMES.get(key)
    if outcome is not None:
        return outcome, ""
    return "dropped", key.removeprefix("dropped_")


class Source(Protocol):
    """What reports: a pipeline."""

    def counts(self) -> Counter[str]: ...

    def queued(self) -> int: ...


class _Registry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sources: weakref.WeakKeyDictionary[Source, str] = weakref.WeakKeyDictionary()
        self._instruments: list[object] = []

    def add(self, source: Source, signal: str) -> None:
        with self._lock:
            self._sources[source] = signal
            if not self._instruments:
                meter = metrics.get_meter("otel_luna")
                self._instruments = [
                    meter.create_observable_counter(
                        "otel_luna.points",
                        [self._points],
                        "{point}",
                        "Points otel-luna handled, by outcome and reason",
                    ),
                    meter.create_observable_counter(
                        "otel_luna.events",
                        [self._events],
                        "{event}",
                        "Other things otel-luna counted (spans seen, split writes, ...)",
                    ),
                    meter.create_observable_up_down_counter(
                        "otel_luna.spool.lines",
                        [self._pending],
                        "{point}",
                        "Points waiting in the spool",
                    ),
                ]

    def _snapshot(self) -> list[tuple[Source, str]]:
        with self._lock:
            return list(self._sources.items())

    def _points(self, options: CallbackOptions) -> Iterable[Observation]:
        totals: Counter[tuple[str, str, str]] = Counter()
        for source, signal in self._snapshot():
            for key, value in source.counts().items():
                if key not in _NOT_POINTS:
                    totals[(signal, *classify(key))] += value
        return [
            Observation(value, {"signal": signal, "outcome": outcome, "reason": reason})
            for (signal, outcome, reason), value in totals.items()
        ]

    def _events(self, options: CallbackOptions) -> Iterable[Observation]:
        totals: Counter[tuple[str, str]] = Counter()
        for source, signal in self._snapshot():
            for key, value in source.counts().items():
                if key in _NOT_POINTS:
                    totals[(signal, key)] += value
        return [
            Observation(value, {"signal": signal, "event": event})
            for (signal, event), value in totals.items()
        ]

    def _pending(self, options: CallbackOptions) -> Iterable[Observation]:
        totals: Counter[str] = Counter()
        for source, signal in self._snapshot():
            totals[signal] += source.queued()
        return [Observation(value, {"signal": signal}) for signal, value in totals.items()]


_registry = _Registry()
if hasattr(os, "register_at_fork"):  # a lock held by another thread at fork stays held

    def _reinit_lock() -> None:
        _registry._lock = threading.Lock()

    os.register_at_fork(after_in_child=_reinit_lock)


def register(source: Source, signal: str) -> None:
    """Report ``source``'s counters while it lives (held by a weak reference)."""
    _registry.add(source, signal)
