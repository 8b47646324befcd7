"""InfluxDB 1.x ``/write`` API: database, retention policy, basic auth.

InfluxDB 2.x/3.x and VictoriaMetrics serve the same endpoint for compatibility.
"""

from __future__ import annotations

from base64 import b64encode
from urllib.parse import urlencode

from otel_luna.settings import Settings
from otel_luna.sinks.http import HttpPoster


class InfluxV1Sink:
    """Writes line protocol with ``POST /write?db=…&rp=…&precision=ns``."""

    def __init__(self, settings: Settings) -> None:
        query = {"db": settings.database, "precision": "ns"}
        if settings.retention_policy:
            query["rp"] = settings.retention_policy
        headers = {}
        if settings.username and settings.password:
            pair = f"{settings.username}:{settings.password}".encode()
            headers["Authorization"] = "Basic " + b64encode(pair).decode()
        self._where = f"{settings.endpoint}/write?db={settings.database}"
        self._poster = HttpPoster(
            f"{settings.endpoint}/write?{urlencode(query)}",
            headers,
            timeout=settings.timeout,
            gzip=settings.gzip,
            secrets=settings.secrets,
        )

    def write(self, body: bytes) -> None:
        self._poster.post(body, self._where)

    def after_fork_in_child(self) -> None:
        self._poster.after_fork_in_child()

    def close(self) -> None:
        self._poster.close()
