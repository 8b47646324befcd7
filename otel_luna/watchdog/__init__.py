"""watchdog-proxy metrics: ``new_item``, ``poller_heartbeat`` and ``worker_works`` pings.

Thin wrappers over the OpenTelemetry API: each call is one span named ``watchdog.<event>`` with
``watchdog.event`` and the event's fields as ``watchdog.<field>`` attributes; an exporter with
``OTEL_EXPORTER_LUNA_SCHEMA=watchdog`` turns it into one ping (or one InfluxDB point). Another
language produces the same pings by emitting such spans.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

from opentelemetry import trace

from otel_luna._helpers import integer, misuse
from otel_luna.mapping._watchdog import EVENT, PREFIX
from otel_luna.schema.watchdog import NEW_ITEM, POLLER_HEARTBEAT, WORKER_WORKS

__all__ = ["new_item", "poller_heartbeat", "worker_works"]


def _tracer() -> trace.Tracer:
    return trace.get_tracer("otel_luna.watchdog")


def _emit(event: str, fields: dict[str, Any]) -> None:
    attributes = {
        EVENT: event,
        **{PREFIX + name: value for name, value in fields.items() if value is not None},
    }
    _tracer().start_span(f"watchdog.{event}", attributes=attributes).end()


def _usable(name: str, value: Any, kind: type) -> Any:
    """``value`` if it is of ``kind`` (an integer >= 0, or a string), else None (the ping
    carries null) with a warning: the helpers never raise into the application."""
    if kind is int:
        number = integer(value)
        if number is not None and number >= 0:
            return number
        misuse(f"watchdog: {name} must be an integer >= 0")
        return None
    if isinstance(value, str):
        return value
    misuse(f"watchdog: {name} must be a string")
    return None


def new_item(consumer_name: str, watchdog_id: str, content_type: str) -> None:
    """A consumer submitted an item: one ``new_item`` ping (``type`` is the content type)."""
    fields = {"consumer_name": consumer_name, "watchdog_id": watchdog_id, "type": content_type}
    _emit(NEW_ITEM, {name: _usable(name, value, str) for name, value in fields.items()})


def poller_heartbeat(
    poller_id: str, items_in_queue: int, items_in_progress: int, items_in_waiting: int
) -> None:
    """The queue poller is alive: one ``poller_heartbeat`` ping with the queue sizes."""
    counts = {
        "items_in_queue": items_in_queue,
        "items_in_progress": items_in_progress,
        "items_in_waiting": items_in_waiting,
    }
    _emit(
        POLLER_HEARTBEAT,
        {
            "poller_id": _usable("poller_id", poller_id, str),
            **{name: _usable(name, value, int) for name, value in counts.items()},
        },
    )


class _Stage:
    __slots__ = ("_field", "_start", "_work")

    def __init__(self, work: worker_works, field: str) -> None:
        self._work = work
        self._field = field
        self._start = 0.0

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        elapsed_ms = round((time.perf_counter() - self._start) * 1000)
        self._work.timings[self._field] = self._work.timings.get(self._field, 0) + elapsed_ms


class worker_works:
    """A worker processes one queue item: one ``worker_works`` ping when the block ends.

    ``with work.sent():`` times the time in queue / sending to PhotoDNA (``timing_sent``),
    ``work.received()`` the wait for PhotoDNA's reply (``timing_received``),
    ``work.submitted()`` the reply to the consumer (``timing_submitted``), each in integer ms.
    If the block raises, ``is_error`` is true and the ping still goes out with the timings that
    were reached (``null`` for the rest); the exception propagates.
    """

    def __init__(self, worker_id: str, consumer_name: str, watchdog_id: str) -> None:
        given = {"worker_id": worker_id, "consumer_name": consumer_name, "watchdog_id": watchdog_id}
        self.fields: dict[str, Any] = {
            name: _usable(name, value, str) for name, value in given.items()
        }
        self.timings: dict[str, int] = {}
        self.is_match: bool | None = None
        self._span: Any = None

    def sent(self) -> _Stage:
        return _Stage(self, "timing_sent")

    def received(self) -> _Stage:
        return _Stage(self, "timing_received")

    def submitted(self) -> _Stage:
        return _Stage(self, "timing_submitted")

    def set_photodna_tracking_id(self, tracking_id: str) -> None:
        self.fields["photodna_tracking_id"] = _usable("photodna_tracking_id", tracking_id, str)

    def set_match(self, is_match: bool) -> None:
        self.is_match = bool(is_match)

    def __enter__(self) -> worker_works:
        self._span = _tracer().start_span(f"watchdog.{WORKER_WORKS}")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        fields = {**self.fields, **self.timings, "is_error": exc is not None}
        if self.is_match is not None:
            fields["is_match"] = self.is_match
        span = self._span
        attributes = {PREFIX + k: v for k, v in fields.items() if v is not None}
        span.set_attributes({EVENT: WORKER_WORKS, **attributes})
        span.end()
