"""Lines appended to a local file (``file:///path``): line protocol, or JSON pings for
``.json``/``.jsonl`` paths. The embedded default of the demo."""

from __future__ import annotations

import os
import threading
from urllib.parse import unquote, urlsplit

from otel_luna._files import write_all
from otel_luna.settings._settings import Settings
from otel_luna.sinks._base import JSON, LINE_PROTOCOL, Failure, Sink, SinkError


def file_path(endpoint: str) -> str:
    """The path of a ``file://`` endpoint (``file:///abs/x.lp`` or ``file://./rel.lp``)."""
    parts = urlsplit(endpoint)
    return unquote(parts.netloc + parts.path)


class FileSink(Sink):
    """Appends each body to the file and flushes it to the operating system."""

    @classmethod
    def format_for(cls, settings: Settings) -> str:
        """``.json`` / ``.jsonl`` files get JSON lines (pings), others line protocol."""
        return JSON if file_path(settings.endpoint).endswith((".json", ".jsonl")) else LINE_PROTOCOL

    def __init__(self, settings: Settings) -> None:
        self.path = file_path(settings.endpoint)
        self.format = self.format_for(settings)
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        # Unbuffered, appending: each body reaches the operating system in os.write calls, and
        # a forked child shares nothing but the descriptor.
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()

    def write(self, body: bytes) -> None:
        try:
            with self._lock:
                write_all(self._fd, body)
        except OSError as error:
            raise SinkError(f"{self.path}: {error.strerror}", failure=Failure.RETRY) from None

    def after_fork_in_child(self) -> None:
        """A lock of the child's own (the parent's writer may have held it at the fork)."""
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
