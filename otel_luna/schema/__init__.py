"""The series otel-luna writes, as data: names, tags, fields and types from the seeds."""

from __future__ import annotations

from otel_luna.schema._point import FieldValue, Point

__all__ = ["FieldValue", "Point"]
