"""otel-luna: OpenTelemetry data written as the LUNA PLATFORM monitoring series."""

from __future__ import annotations

from otel_luna._exporter import LunaMetricExporter, LunaSpanExporter
from otel_luna._helpers import (
    add_fields,
    add_tags,
    monitor_time,
    record_license,
    record_usages,
    set_error,
    set_request_id,
)
from otel_luna._lifecycle import flush
from otel_luna.schema._point import Point
from otel_luna.settings._declare import SettingsError
from otel_luna.settings._settings import Settings

__all__ = [
    "LunaMetricExporter",
    "LunaSpanExporter",
    "Point",
    "Settings",
    "SettingsError",
    "add_fields",
    "add_tags",
    "flush",
    "monitor_time",
    "record_license",
    "record_usages",
    "set_error",
    "set_request_id",
]
