"""Sinks move encoded bytes to a destination. They never map or encode.

A sink is any object with ``write(body: bytes) -> None`` (raising :class:`SinkError` when the
destination did not take the body) and ``close() -> None``. Sinks are found by name in the
entry-point group ``otel_luna.sinks``; each entry point is a callable taking the
:class:`~otel_luna.settings.Settings`. Third-party packages add destinations the same way. The
entry point may declare settings of its own in a ``settings`` attribute, a tuple of
:class:`~otel_luna.settings.Setting` (see :func:`sink_settings`).
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Protocol

from otel_luna.redact import redact

if TYPE_CHECKING:
    from otel_luna.settings._settings import Setting, Settings

#: Entry-point group of sink factories.
SINK_GROUP = "otel_luna.sinks"


class Sink(Protocol):
    """Where encoded lines go. An optional ``format`` attribute says what lines it takes:
    ``"line-protocol"`` (the default) or ``"json"`` (one JSON object per line). An optional
    ``after_fork_in_child() -> None`` is called in a forked child before its first write: it
    replaces connection pools, never closing the parent's sockets."""

    def write(self, body: bytes) -> None:
        """Deliver ``body`` (newline-terminated lines) or raise :class:`SinkError`."""

    def close(self) -> None:
        """Release connections and files."""


class Failure(enum.Enum):
    """What a failed write means for the lines in it, decided by the sink that saw the failure."""

    #: The destination may take the same body later (connection error, timeout, 408, 429, 5xx):
    #: keep it, retry after a backoff.
    RETRY = "retry"
    #: The destination refuses everything (401, 403, database or bucket not found, TLS): hold
    #: the spool as it is, retry after a backoff, warn; never split, never dead-letter.
    BLOCKED = "blocked"
    #: The body is too large (413): split it; a single line that alone is too large is rejected.
    TOO_LARGE = "too_large"
    #: Some lines of the body are refused for good (unparsable, field type conflict): isolate
    #: them by splitting; the others are delivered.
    PER_LINE = "per_line"


class SinkError(Exception):
    """A write failed; ``failure`` says what that means for the lines written.

    Third-party sinks may still pass ``retryable=`` instead (``True`` is :attr:`Failure.RETRY`,
    ``False`` is :attr:`Failure.PER_LINE`). The message is redacted (:func:`redact`) here, so
    it can be logged and dead-lettered as it is; sinks pass their own secrets in ``secrets``.
    """

    def __init__(
        self,
        message: str,
        *,
        failure: Failure | None = None,
        retryable: bool | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        retry_body: bytes | None = None,
        rejected: list[tuple[bytes, str, int | None]] | None = None,
        secrets: Iterable[str] = (),
        trouble: str | None = None,
    ) -> None:
        # Redact first, then shorten: a cut through a secret would leave part of it readable.
        super().__init__(redact(message, secrets)[:MESSAGE_LIMIT])
        if failure is None:
            if retryable is None:
                raise TypeError("SinkError needs failure= (or retryable=)")
            failure = Failure.RETRY if retryable else Failure.PER_LINE
        self.failure = failure
        self.status = status
        #: Seconds the server asked us to wait (``Retry-After``), if it said.
        self.retry_after = retry_after
        #: A sink that delivers line by line (Ping Centre) took some lines: these others may
        #: succeed later (the rest of the body was delivered and must not be sent again) ...
        self.retry_body = retry_body
        #: ... and these were refused for good: (line, reason, HTTP status).
        self.rejected = rejected
        #: The class of trouble a failed connection was (:func:`connection_trouble`); an HTTP
        #: reply's is derived from ``status`` (:attr:`trouble`).
        self._trouble = trouble

    @property
    def trouble(self) -> str:
        """The class of delivery trouble, for the log line of each class (once a minute):
        ``connection refused``, ``DNS failure``, ``TLS error``, ``timeout``, ``connection
        reset``, ``connection error``, ``HTTP <status>`` for a 4xx (and any other non-5xx),
        ``HTTP 5xx``; a sink that says none of these is ``sink error``."""
        if self._trouble is not None:
            return self._trouble
        if self.status is not None:
            return "HTTP 5xx" if self.status >= 500 else f"HTTP {self.status}"
        return "sink error"

    @property
    def retryable(self) -> bool:
        """Whether the same body may be taken later unchanged (:attr:`Failure.RETRY` or
        :attr:`Failure.BLOCKED`)."""
        return self.failure in (Failure.RETRY, Failure.BLOCKED)


#: InfluxDB 1.x replies that name the destination, not a line, under a status that usually
#: means otherwise: ``500 retention policy not found``, ``400 database is required``.
_DESTINATION_REASONS = ("retention policy not found", "database is required")


def classify(status: int, reason: str = "") -> Failure:
    """The :class:`Failure` of an HTTP reply with ``status`` (not 2xx) and the server's error
    message ``reason`` (see :func:`server_reason`).

    408, 429 and 5xx: RETRY; 413: TOO_LARGE; 400 and 422 (unparsable line, field type conflict,
    partial write): PER_LINE; every other status (401, 403, 404, 405, 411, 415, a 3xx ...) and
    a reply naming a missing retention policy or database: BLOCKED.
    """
    if status in (400, 500) and reason.lower().startswith(_DESTINATION_REASONS):
        return Failure.BLOCKED
    if status in (408, 429) or status >= 500:
        return Failure.RETRY
    if status == 413:
        return Failure.TOO_LARGE
    if status in (400, 422):
        return Failure.PER_LINE
    return Failure.BLOCKED


def classify_connection_error(error: BaseException) -> Failure:
    """BLOCKED for TLS errors (a certificate that does not verify will not start to), else
    RETRY (refused, reset, timed out, name not resolved)."""
    import urllib3

    if isinstance(error, urllib3.exceptions.MaxRetryError):
        error = error.reason or error
    return Failure.BLOCKED if isinstance(error, urllib3.exceptions.SSLError) else Failure.RETRY


def connection_trouble(error: BaseException) -> str:
    """The class of trouble a urllib3 error raised before any reply was: ``DNS failure``,
    ``TLS error``, ``connection refused``, ``timeout``, ``connection reset`` or ``connection
    error``."""
    import urllib3

    exceptions = urllib3.exceptions
    if isinstance(error, exceptions.MaxRetryError):
        error = error.reason or error
    if isinstance(error, exceptions.NameResolutionError):
        return "DNS failure"
    if isinstance(error, exceptions.SSLError):
        return "TLS error"
    if isinstance(error, exceptions.NewConnectionError):  # a ConnectTimeoutError subclass
        cause = error.__cause__ or error.__context__
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        return "timeout" if isinstance(cause, TimeoutError) else "connection error"
    if isinstance(error, exceptions.TimeoutError):
        return "timeout"
    if isinstance(error, exceptions.ProtocolError):
        return "connection reset"
    return "connection error"


#: Most characters of a SinkError message (after redaction).
MESSAGE_LIMIT = 1000
#: Most bytes of a reply body read for its reason: redaction sees all of them.
REPLY_LIMIT = 64 * 1024


def server_reason(body: bytes | str) -> str:
    """The error message of a reply body: InfluxDB's ``{"error": ...}`` (1.x) or
    ``{"message": ...}`` (2.x), else the text; not yet redacted, not shortened."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if isinstance(document, dict):
        message = document.get("error") or document.get("message")
        if isinstance(message, str):
            text = message
    return text.strip()  # shortened only after redaction (SinkError), never through a secret


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


def sink_factory(settings: Settings) -> Callable[[Settings], Sink]:
    """The entry point named by ``settings.sink_name``: a callable (usually the sink's class)
    that builds the sink from ``settings``."""
    from otel_luna.settings._settings import SettingsError, env_name

    name = settings.sink_name
    found = entry_points(group=SINK_GROUP, name=name)
    if not found:
        known = sorted(ep.name for ep in entry_points(group=SINK_GROUP))
        raise SettingsError(
            env_name("sink"), f"no sink named {name!r}; installed: {', '.join(known)}"
        ).redacted(settings.secrets)  # a secret pasted into the wrong setting
    factory: Callable[[Settings], Sink] = next(iter(found)).load()
    return factory


def wire_format(sink: object, settings: Settings) -> str:
    """What lines ``sink`` — a sink, or its factory before it is built — takes: its
    ``format_for(settings)``, else its ``format``, else line protocol."""
    format_for = getattr(sink, "format_for", None)
    if callable(format_for):
        return str(format_for(settings))
    return str(getattr(sink, "format", "line-protocol"))


def load_sink(settings: Settings) -> Sink:
    """The sink named by ``settings.sink_name``, built from ``settings``."""
    return sink_factory(settings)(settings)


def sink_settings(name: str | None = None) -> list[Setting]:
    """The settings the sink ``name`` declares (every installed sink's when ``name`` is None),
    each in group ``"<name> sink"``: the :class:`~otel_luna.settings.Setting` objects in the
    ``settings`` attribute of its entry point's object. A sink that cannot be imported
    declares none here; :func:`load_sink` says why when it is the one chosen."""
    from otel_luna.settings._settings import Setting

    if name is None:
        found = entry_points(group=SINK_GROUP)
    else:
        found = entry_points(group=SINK_GROUP, name=name)
    declared: list[Setting] = []
    for entry in sorted(found, key=lambda entry: entry.name):
        try:
            factory = entry.load()
        except Exception:  # noqa: BLE001 - whatever a broken plugin raises; see load_sink
            continue
        settings = getattr(factory, "settings", ())
        if isinstance(settings, (tuple, list)):  # else an attribute of the sink's own
            declared += [
                dataclasses.replace(each, group=f"{entry.name} sink")
                for each in settings
                if isinstance(each, Setting)
            ]
    return declared
