"""Sinks move encoded bytes to a destination. They never map or encode.

A sink is any object with ``write(body: bytes) -> None`` (raising :class:`SinkError` when the
destination did not take the body) and ``close() -> None``. Sinks are found by name in the
entry-point group ``otel_luna.sinks``; each entry point is a callable taking the
:class:`~otel_luna.settings.Settings`. Third-party packages add destinations the same way.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from otel_luna.settings import Settings

#: Entry-point group of sink factories.
SINK_GROUP = "otel_luna.sinks"


class Sink(Protocol):
    """Where encoded lines go. An optional ``format`` attribute says what lines it takes:
    ``"line-protocol"`` (the default) or ``"json"`` (one JSON object per line)."""

    def write(self, body: bytes) -> None:
        """Deliver ``body`` (newline-terminated lines) or raise :class:`SinkError`."""

    def close(self) -> None:
        """Release connections and files."""


class SinkError(Exception):
    """A write failed. ``retryable`` says whether the same body may succeed later."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after: float | None = None,
        retry_body: bytes | None = None,
        rejected: list[tuple[bytes, str, int | None]] | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        #: Seconds the server asked us to wait (``Retry-After``), if it said.
        self.retry_after = retry_after
        #: A sink that delivers line by line (Ping Centre) took some lines: these others may
        #: succeed later (the rest of the body was delivered and must not be sent again) ...
        self.retry_body = retry_body
        #: ... and these were refused for good: (line, reason, HTTP status).
        self.rejected = rejected


def suppress_instrumentation() -> None:
    """Mark this thread's context so OpenTelemetry instrumentations (urllib3, requests) do not
    trace our own writes. Call once at the start of every thread that writes to a sink."""
    from opentelemetry import context

    context.attach(context.set_value(context._SUPPRESS_INSTRUMENTATION_KEY, True))


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), if usable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    import time
    from email.utils import parsedate_to_datetime

    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def load_sink(settings: Settings) -> Sink:
    """The sink named by ``settings.sink_name``, built from ``settings``."""
    from otel_luna.settings import OTEL_EXPORTER_LUNA_SINK, SettingsError

    name = settings.sink_name
    found = entry_points(group=SINK_GROUP, name=name)
    if not found:
        known = sorted(ep.name for ep in entry_points(group=SINK_GROUP))
        raise SettingsError(
            OTEL_EXPORTER_LUNA_SINK, f"no sink named {name!r}; installed: {', '.join(known)}"
        )
    factory = next(iter(found)).load()
    sink: Sink = factory(settings)
    return sink
