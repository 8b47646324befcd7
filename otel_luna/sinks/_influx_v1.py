"""InfluxDB 1.x ``/write`` API: database, retention policy, basic auth.

InfluxDB 2.x/3.x and VictoriaMetrics serve the same endpoint for compatibility.
"""

from __future__ import annotations

from urllib.parse import urlencode

from otel_luna.settings._settings import Settings
from otel_luna.sinks._base import basic_auth
from otel_luna.sinks._http import PostingSink


class InfluxV1Sink(PostingSink):
    """Writes line protocol with ``POST /write?db=…&rp=…&precision=ns``."""

    def __init__(self, settings: Settings) -> None:
        query = {"db": settings.database, "precision": "ns"}
        if settings.retention_policy:
            query["rp"] = settings.retention_policy
        super().__init__(
            settings,
            f"{settings.endpoint}/write?{urlencode(query)}",
            basic_auth(settings.username, settings.password),
            where=f"{settings.endpoint}/write?db={settings.database}",
        )
