"""Lines to a destination: the spool, the writer thread, the dead-letter file."""

from __future__ import annotations

from otel_luna._files import make_directories, read_small, replace_file
from otel_luna.delivery._delivery import (
    destination_name,
    destination_slug,
    open_delivery,
)
from otel_luna.delivery._spool import SpoolRefused, SpoolUnavailable
from otel_luna.delivery._spool_status import process_directories, read_stats
from otel_luna.delivery._throttle import Due, RateLog

__all__ = [
    "Due",
    "RateLog",
    "SpoolRefused",
    "SpoolUnavailable",
    "destination_name",
    "destination_slug",
    "make_directories",
    "open_delivery",
    "process_directories",
    "read_small",
    "read_stats",
    "replace_file",
]
