"""Spans carrying ``watchdog.*`` attributes → watchdog points. Pure: data in, data out.

Each helper call in :mod:`otel_luna.watchdog` is one span with ``watchdog.event`` and the event's
fields as ``watchdog.<field>`` attributes; the span's end is the ping's time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from otel_luna.mapping.timestamps import SeriesTimes, owner_of
from otel_luna.point import FieldValue, Point
from otel_luna.schema.watchdog import EVENTS, TAGS

EVENT = "watchdog.event"
PREFIX = "watchdog."


def _check(value: Any, kind: type) -> bool:
    if kind is int:
        return type(value) is int
    if kind is bool:
        return type(value) is bool
    return isinstance(value, str)


class WatchdogMapper:
    """Same interface as :class:`~otel_luna.mapping.RequestMapper`: ``add(...)`` → points."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.times = SeriesTimes()

    def add(
        self,
        attributes: Mapping[str, Any],
        is_server: bool,
        trace_id: int,
        span_id: int,
        parent_span_id: int | None,
        start_ns: int,
        end_ns: int,
        status_error: bool,
        service: str,
    ) -> list[Point]:
        event = attributes.get(EVENT)
        if event is None:
            return []
        spec = EVENTS.get(event)
        if spec is None:
            self.counts["unknown_watchdog_event"] += 1
            return []
        tags: list[tuple[str, str]] = []
        fields: dict[str, FieldValue] = {}
        for name, kind in spec:
            value = attributes.get(PREFIX + name)
            if value is None:
                continue  # a ping carries null; InfluxDB gets no field
            if not _check(value, kind):
                self.counts["bad_watchdog_value"] += 1
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
                self.times.claim(end_ns, owner_of(trace_id, span_id)),
            )
        ]
