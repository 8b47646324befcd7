"""Lines to a destination: the spool, the writer thread, the dead-letter file."""

from __future__ import annotations

from otel_luna.delivery._delivery import (
    destination_name,
    destination_slug,
    open_delivery,
)
from otel_luna.delivery._throttle import Due, RateLog

__all__ = [
    "Due",
    "RateLog",
    "destination_name",
    "destination_slug",
    "open_delivery",
]
