"""An app exporting spans in this process: the SDK's batch span processor in front of
``LunaSpanExporter`` with a disk spool (``conftest.app_factory`` makes them for a test)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from otel_luna import LunaSpanExporter
from otel_luna._cli import status_entries
from otel_luna.settings import Settings

#: How long a test waits for the points of an app to be delivered.
DELIVERY_TIMEOUT = 60.0


class App:
    """The in-process exporter behind the SDK's batch span processor, with a disk spool."""

    def __init__(self, tmp_path: Path, **settings: Any) -> None:
        self.spool_dir = tmp_path / "spool"
        self.dead_letter = tmp_path / "dead.jsonl"
        self.exporter = LunaSpanExporter(
            Settings.load(
                {},
                **{
                    "api_version": "1",
                    "flush_interval": 0.1,
                    "spool_dir": str(self.spool_dir),
                    "dead_letter": str(self.dead_letter),
                    **settings,
                },
            )
        )
        self.provider = TracerProvider(resource=Resource.create({"service.name": "dest"}))
        self.provider.add_span_processor(
            BatchSpanProcessor(self.exporter, schedule_delay_millis=100)
        )
        self.ids: list[str] = []

    def requests(self, count: int) -> None:
        tracer = self.provider.get_tracer("dest")
        for _ in range(count):
            request_id = uuid.uuid4().hex
            self.ids.append(request_id)
            attributes = {
                "http.method": "POST",
                "http.route": "/work",
                "http.status_code": 200,
                "luna.request_id": request_id,
            }
            with tracer.start_as_current_span(
                "POST /work", kind=trace.SpanKind.SERVER, attributes=attributes
            ):
                pass

    def blocked(self) -> dict[str, Any] | None:
        """The blocked state ``otel-luna status`` shows for this process, if any."""
        for entry in status_entries(str(self.spool_dir)):
            if isinstance(entry.get("blocked"), dict):
                return entry  # type: ignore[return-value]
        return None

    def flush(self, timeout: float) -> bool:
        """Hand every ended span to the exporter, then wait until its points are written."""
        return self.provider.force_flush(int(timeout * 1000)) and self.exporter.force_flush(
            int(timeout * 1000)
        )

    def close(self) -> None:
        self.provider.shutdown()
