"""Every setting of otel-luna, declared once: environment variable, TOML key, parser, default."""

from __future__ import annotations

from otel_luna.settings._settings import (
    DELIVERY,
    DESTINATION,
    SERVE,
    SPOOL,
    Row,
    Setting,
    Settings,
    SettingsError,
    describe,
    env_name,
    markdown_table,
    number,
    setting,
    strict_requested,
)

__all__ = [
    "DELIVERY",
    "DESTINATION",
    "SERVE",
    "SPOOL",
    "Row",
    "Setting",
    "Settings",
    "SettingsError",
    "describe",
    "env_name",
    "markdown_table",
    "number",
    "setting",
    "strict_requested",
]
