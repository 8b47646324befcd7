"""``otel-luna serve``: an OTLP gRPC and HTTP receiver (the ``serve`` extra)."""

from __future__ import annotations

from otel_luna.serve._settings import SERVE, ServeSettings

__all__ = ["SERVE", "ServeSettings"]
