"""Every setting of otel-luna, declared once: environment variable, TOML key, parser, default.

The public API: :class:`Settings` (the core's, loaded with :meth:`Settings.load`) and what a
sink plugin or an add-on declares and loads settings of its own with — :class:`Setting` (a sink's
``settings`` attribute), :func:`setting` (a field of a :class:`Settings` subclass), the parsers,
:class:`SettingsError` — and :func:`describe`, which lists them all.
"""

from __future__ import annotations

from otel_luna.settings._declare import ENV_PREFIX, Setting, SettingsError, setting
from otel_luna.settings._parsers import (
    number,
    parse_address,
    parse_bool,
    parse_header_text,
    parse_port,
    parse_text,
)
from otel_luna.settings._plugins import SINK_GROUP, sink_settings
from otel_luna.settings._settings import (
    DELIVERY,
    DESTINATION,
    SETTINGS,
    SPOOL,
    Row,
    Settings,
    SinkOptions,
    describe,
    env_name,
    strict_requested,
)
from otel_luna.settings._sources import OTEL_EXPORTER_LUNA_CONFIG

__all__ = [
    "DELIVERY",
    "DESTINATION",
    "ENV_PREFIX",
    "OTEL_EXPORTER_LUNA_CONFIG",
    "SETTINGS",
    "SINK_GROUP",
    "SPOOL",
    "Row",
    "Setting",
    "Settings",
    "SettingsError",
    "SinkOptions",
    "describe",
    "env_name",
    "number",
    "parse_address",
    "parse_bool",
    "parse_header_text",
    "parse_port",
    "parse_text",
    "setting",
    "sink_settings",
    "strict_requested",
]
