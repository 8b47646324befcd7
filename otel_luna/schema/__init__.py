"""The series otel-luna writes, as data: names, tags, fields and types from the seeds.

:mod:`otel_luna.schema.luna` and :mod:`otel_luna.schema.watchdog` are the two profiles' series;
:class:`Point` is what a mapper makes of a span and an encoder writes.
"""

from __future__ import annotations

from otel_luna.schema._point import FieldValue, Point

__all__ = ["FieldValue", "Point"]
