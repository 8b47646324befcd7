"""Every setting of otel-luna, declared once: environment variable, TOML key, parser, default.

The public API: :class:`Settings`, the core's, loaded with :meth:`Settings.load` (an app passes
it to the exporters), and what a sink plugin or an add-on declares and loads settings of its own
with — :class:`Setting` (a sink's ``settings`` attribute, read with :meth:`Settings.option`),
:func:`setting` (a field of an add-on's subclass of :class:`Settings`), the parsers
(:func:`number`, ``parse_*``), :class:`SettingsError` and :func:`env_name` to name a setting in
an error — and :func:`describe`, which lists every setting as a :class:`Row`.

Modules: ``_declare`` (the declaration framework), ``_parsers``, ``_sources`` (TOML file,
environment, keyword arguments and their precedence), ``_plugins`` (the settings sinks declare,
read from their entry points: settings import no sink), ``_settings`` (the core's
:class:`Settings`).
"""

from __future__ import annotations

from otel_luna.settings._declare import Setting, SettingsError, setting
from otel_luna.settings._parsers import (
    number,
    parse_address,
    parse_bool,
    parse_header_text,
    parse_port,
    parse_text,
)
from otel_luna.settings._settings import Row, Settings, describe, env_name
from otel_luna.settings._sources import OTEL_EXPORTER_LUNA_CONFIG

__all__ = [
    "OTEL_EXPORTER_LUNA_CONFIG",
    "Row",
    "Setting",
    "Settings",
    "SettingsError",
    "describe",
    "env_name",
    "number",
    "parse_address",
    "parse_bool",
    "parse_header_text",
    "parse_port",
    "parse_text",
    "setting",
]
