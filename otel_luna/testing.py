"""Test helpers for applications that use otel-luna: an in-memory sink and a ready exporter."""

from __future__ import annotations

import threading

from otel_luna._exporter import LunaSpanExporter
from otel_luna.encoding._lineprotocol import split_lines
from otel_luna.settings._settings import Settings

__all__ = ["InMemorySink", "in_memory_exporter"]


class InMemorySink:
    """Keeps every written line; ``lines`` is a snapshot."""

    def __init__(self, settings: Settings | None = None) -> None:
        del settings
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self.closed = False

    def write(self, body: bytes) -> None:
        with self._lock:
            self._lines.extend(line.decode().removesuffix("\n") for line in split_lines(body))

    def close(self) -> None:
        self.closed = True

    @property
    def lines(self) -> list[str]:
        with self._lock:
            return list(self._lines)


def in_memory_exporter(**settings: object) -> tuple[LunaSpanExporter, InMemorySink]:
    """A :class:`LunaSpanExporter` writing to a fresh :class:`InMemorySink` (memory spool)."""
    sink = InMemorySink()
    exporter = LunaSpanExporter(Settings.load({}, **{"spool": "memory", **settings}), sink=sink)
    return exporter, sink
