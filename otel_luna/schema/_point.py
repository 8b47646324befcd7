"""The one point type that crosses from mapping to encoding."""

from __future__ import annotations

from typing import NamedTuple

FieldValue = int | float | str | bool


class Point(NamedTuple):
    """A time-series point: measurement, tags, fields, time in ns since the epoch.

    ``tags`` are string-valued and sorted by key (InfluxDB's preferred order); ``fields`` hold
    ``int``, ``float``, ``str`` or ``bool`` values.
    """

    measurement: str
    tags: tuple[tuple[str, str], ...]
    fields: dict[str, FieldValue]
    time_ns: int
