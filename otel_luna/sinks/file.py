"""Lines appended to a local file (``file:///path``): line protocol, or JSON pings for
``.json``/``.jsonl`` paths. The embedded default of the demo."""

from __future__ import annotations

import os
import threading
from urllib.parse import unquote, urlsplit

from otel_luna.settings import Settings
from otel_luna.sinks import SinkError


def file_path(endpoint: str) -> str:
    """The path of a ``file://`` endpoint (``file:///abs/x.lp`` or ``file://./rel.lp``)."""
    parts = urlsplit(endpoint)
    return unquote(parts.netloc + parts.path)


class FileSink:
    """Appends each body to the file and flushes it to the operating system."""

    def __init__(self, settings: Settings) -> None:
        self.path = file_path(settings.endpoint)
        #: ``.json`` / ``.jsonl`` files get JSON lines (pings), others line protocol.
        self.format = "json" if self.path.endswith((".json", ".jsonl")) else "line-protocol"
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        self._file = open(self.path, "ab")  # noqa: SIM115 - held open for the sink's life
        self._lock = threading.Lock()

    def write(self, body: bytes) -> None:
        try:
            with self._lock:
                self._file.write(body)
                self._file.flush()
        except OSError as error:
            raise SinkError(f"{self.path}: {error.strerror}", retryable=True) from None

    def close(self) -> None:
        with self._lock:
            self._file.close()
