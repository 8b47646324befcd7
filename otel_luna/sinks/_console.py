"""Line protocol printed to standard output, for a first look."""

from __future__ import annotations

import sys

from otel_luna.settings._settings import Settings
from otel_luna.sinks._base import Sink


class ConsoleSink(Sink):
    """Writes each body to ``sys.stdout``."""

    def __init__(self, settings: Settings | None = None) -> None:
        del settings

    def write(self, body: bytes) -> None:
        sys.stdout.write(body.decode())
        sys.stdout.flush()
