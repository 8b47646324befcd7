"""Spans carrying ``watchdog.*`` attributes → watchdog points. Pure: data in, data out.

Each helper call in :mod:`otel_luna.watchdog` is one span with ``watchdog.event`` and the event's
fields as ``watchdog.<field>`` attributes; the span's end is the ping's time.
"""

from __future__ import annotations

from typing import Any

from otel_luna._attributes import WATCHDOG_PREFIX
from otel_luna.mapping._records import SpanRecord
from otel_luna.mapping._timestamps import SeriesTimes, owner_of
from otel_luna.outcomes import Counting, Reason
from otel_luna.schema._point import FieldValue, Point
from otel_luna.schema.watchdog import EVENTS, TAGS

EVENT = "watchdog.event"
PREFIX = WATCHDOG_PREFIX


def _check(value: Any, kind: type) -> bool:
    if kind is int:
        return type(value) is int
    if kind is bool:
        return type(value) is bool
    return isinstance(value, str)


class WatchdogMapper(Counting):
    """Same interface as :class:`~otel_luna.mapping._requests.RequestMapper`: ``add(...)`` →
    points, :meth:`take_counts` → what it counted."""

    def __init__(self, times: SeriesTimes | None = None) -> None:
        super().__init__()
        self.arrived_ns = 0  # it keeps nothing between spans that would expire
        self.batch_span_ids: set[int] = set()
        self.times = SeriesTimes() if times is None else times

    #: The attribute keys of the spans this mapper reads (``watchdog.event`` among them).
    prefix = PREFIX

    def wants(
        self, is_server: bool, marked: bool, span_id: int, local_parent_id: int | None
    ) -> bool:
        """Whether :meth:`add` can make anything of a span: one with a ``watchdog.*`` key
        (``marked``); it keeps nothing between spans."""
        return marked

    def add(self, record: SpanRecord) -> list[Point]:
        attributes = record.attributes
        event = attributes.get(EVENT)
        if event is None:
            return []
        spec = EVENTS.get(event)
        if spec is None:
            self.counts[Reason.UNKNOWN_WATCHDOG_EVENT] += 1
            return []
        tags: list[tuple[str, str]] = []
        fields: dict[str, FieldValue] = {}
        for name, kind in spec:
            value = attributes.get(PREFIX + name)
            if value is None:
                continue  # a ping carries null; InfluxDB gets no field
            if not _check(value, kind):
                self.counts[Reason.BAD_WATCHDOG_VALUE] += 1
                continue
            if name in TAGS:
                tags.append((name, str(value).lower() if kind is bool else str(value)))
            else:
                fields[name] = value
        if not fields:
            fields["count"] = 1  # line protocol needs a field; pings ignore it
        return [
            Point(
                event,
                tuple(sorted(tags)),
                fields,
                self.times.claim(record.end_ns, owner_of(record.trace_id, record.span_id)),
            )
        ]
