"""Records → the profile's mappers → the encoder → delivery: what both ways in share."""

from __future__ import annotations

from otel_luna.ingest._ingest import (
    ERROR_LOG_INTERVAL,
    METRICS,
    TRACES,
    Ingest,
    Result,
)

__all__ = [
    "ERROR_LOG_INTERVAL",
    "METRICS",
    "TRACES",
    "Ingest",
    "Result",
]
