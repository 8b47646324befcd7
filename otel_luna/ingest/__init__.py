"""Records → the profile's mappers → the encoder → delivery: what both ways in share."""

from __future__ import annotations

from otel_luna.ingest._ingest import METRICS, TRACES, DeliveryState, Ingest, Result, SpanFilter

__all__ = ["METRICS", "TRACES", "DeliveryState", "Ingest", "Result", "SpanFilter"]
