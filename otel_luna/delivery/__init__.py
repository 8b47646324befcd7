"""Lines to a destination: the spool, the writer thread, the dead-letter file."""

from __future__ import annotations

from otel_luna.delivery._delivery import (
    destination_name,
    destination_slug,
    open_delivery,
)

__all__ = [
    "destination_name",
    "destination_slug",
    "open_delivery",
]
