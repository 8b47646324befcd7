"""InfluxDB 2.x ``/api/v2/write`` API: organization, bucket, token.

InfluxDB 3.x (the bucket is its database) and VictoriaMetrics serve the same endpoint. Failures
are classified as for 1.x: a missing organization or bucket (404), a token refused (401, 403)
block the destination.
"""

from __future__ import annotations

from urllib.parse import urlencode

from otel_luna.settings._settings import Settings
from otel_luna.sinks._http import PostingSink


class InfluxV2Sink(PostingSink):
    """Writes line protocol with ``POST /api/v2/write?org=…&bucket=…&precision=ns`` and
    ``Authorization: Token …``."""

    def __init__(self, settings: Settings) -> None:
        query = {"org": settings.org or "", "bucket": settings.bucket, "precision": "ns"}
        headers = {"Authorization": f"Token {settings.token}"} if settings.token else {}
        super().__init__(
            settings,
            f"{settings.endpoint}/api/v2/write?{urlencode(query)}",
            headers,
            where=f"{settings.endpoint}/api/v2/write?bucket={settings.bucket}",
        )
