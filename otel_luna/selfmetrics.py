"""otel-luna's own counters as OpenTelemetry metrics, in the ``otel_luna.*`` namespace.

``otel_luna.points`` (counter) counts points by ``outcome`` and ``reason``
(:class:`~otel_luna.outcomes.Reason`, :class:`~otel_luna.outcomes.Outcome`): what mapping and
encoding made, rejected or trimmed carries the ``signal`` (``traces``, ``metrics``) it came
in by; what delivery did (spooled, written, retried, replayed, dead-lettered, dropped) is one
per destination and has no ``signal``. ``otel_luna.events`` counts what is not about points
(SERVER spans seen, split writes, writer restarts) by ``event``; ``otel_luna.spool.lines``
(up-down counter) is what waits in the spool. They go wherever the application's metrics go;
the ``luna`` metric exporter never writes them into a LUNA series (it only maps
``luna.usages``). ``otel-luna serve`` also serves them in Prometheus text format
(:mod:`otel_luna.serve._health`), grouped the same way by :func:`totals`.
"""

from __future__ import annotations

import threading
import weakref
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Protocol

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from otel_luna import _fork
from otel_luna.outcomes import Outcome, Reason

__all__ = [
    "EVENTS_HELP",
    "POINTS_HELP",
    "SPOOL_HELP",
    "EventTotals",
    "PointTotals",
    "Source",
    "register",
    "totals",
]

POINTS_HELP = "Points otel-luna handled, by outcome and reason"
EVENTS_HELP = "Other things otel-luna counted (spans seen, split writes, ...)"
SPOOL_HELP = "Points waiting in the spool"
#: (signal or None, outcome, reason label) → points; (signal or None, event) → events.
PointTotals = Counter[tuple[str | None, Outcome, str]]
EventTotals = Counter[tuple[str | None, Reason]]


def totals(counts: Iterable[tuple[str | None, Reason, int]]) -> tuple[PointTotals, EventTotals]:
    """Counters by (signal, reason) as the metrics have them: points by outcome and the
    reason's :attr:`~otel_luna.outcomes.Reason.label`, events by reason. Pure."""
    points: PointTotals = Counter()
    events: EventTotals = Counter()
    for signal, reason, value in counts:
        if reason.outcome is Outcome.EVENT:
            events[(signal, reason)] += value
        else:
            points[(signal, reason.outcome, reason.label)] += value
    return points, events


class Source(Protocol):
    """What reports: an ingest."""

    def mapping_counts_by_signal(self) -> Mapping[str, Counter[Reason]]: ...

    def delivery_counts(self) -> Counter[Reason]: ...

    def queued(self) -> int: ...


class _Registry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sources: weakref.WeakSet[Source] = weakref.WeakSet()
        self._instruments: list[object] = []

    def add(self, source: Source) -> None:
        with self._lock:
            self._sources.add(source)
            if not self._instruments:
                meter = metrics.get_meter("otel_luna")
                self._instruments = [
                    meter.create_observable_counter(
                        "otel_luna.points",
                        [self._points],
                        "{point}",
                        POINTS_HELP,
                    ),
                    meter.create_observable_counter(
                        "otel_luna.events",
                        [self._events],
                        "{event}",
                        EVENTS_HELP,
                    ),
                    meter.create_observable_up_down_counter(
                        "otel_luna.spool.lines",
                        [self._pending],
                        "{point}",
                        SPOOL_HELP,
                    ),
                ]

    def _snapshot(self) -> list[Source]:
        with self._lock:
            return list(self._sources)

    def _counts(self) -> Iterable[tuple[str | None, Reason, int]]:
        for source in self._snapshot():
            for signal, counts in source.mapping_counts_by_signal().items():
                for reason, value in counts.items():
                    yield signal, reason, value
            for reason, value in source.delivery_counts().items():
                yield None, reason, value

    def _points(self, options: CallbackOptions) -> Iterable[Observation]:
        points, _ = totals(self._counts())
        return [
            Observation(
                value,
                {"outcome": outcome.value, "reason": label}
                | ({} if signal is None else {"signal": signal}),
            )
            for (signal, outcome, label), value in points.items()
        ]

    def _events(self, options: CallbackOptions) -> Iterable[Observation]:
        _, events = totals(self._counts())
        return [
            Observation(
                value, {"event": str(event)} | ({} if signal is None else {"signal": signal})
            )
            for (signal, event), value in events.items()
        ]

    def _pending(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(sum(source.queued() for source in self._snapshot()))]


_registry = _Registry()


@_fork.at_fork
def _renew_lock() -> None:
    """A lock held by another thread at the fork stays held in the child: a new one."""
    _registry._lock = threading.Lock()


def register(source: Source) -> None:
    """Report ``source``'s counters while it lives (held by a weak reference)."""
    _registry.add(source)
