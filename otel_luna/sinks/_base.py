"""Sinks move encoded bytes to a destination. They never map or encode.

A sink is a :class:`Sink`: ``write(body: bytes) -> None`` (raising :class:`SinkError` when the
destination did not take the body), and defaults for the rest (``close``, ``format``,
``split_body``, ``after_fork_in_child``, ``settings``) that a sink overrides when it needs to.
Sinks are found by name in the entry-point group ``otel_luna.sinks``; each entry point is a
callable taking the :class:`~otel_luna.settings.Settings` (usually the sink's class).
Third-party packages add destinations the same way. The entry point may declare settings of its
own in a ``settings`` attribute, a tuple of :class:`~otel_luna.settings.Setting` (see
:func:`sink_settings`).

A third-party sink need not subclass :class:`Sink`: any object with ``write`` and ``close``
(:class:`SinkLike`) is adapted once, when it is loaded or handed to a delivery
(:func:`as_sink`), its optional parts read then — never looked up on every write.
"""

from __future__ import annotations

import abc
import contextlib
import enum
import json
from base64 import b64encode
from collections.abc import Callable, Iterable, Iterator
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol

from otel_luna.encoding._lineprotocol import split_lines
from otel_luna.redact import redact
from otel_luna.settings._plugins import SINK_GROUP as SINK_GROUP  # the entry points' group
from otel_luna.settings._plugins import sink_settings as sink_settings  # what they declare

if TYPE_CHECKING:
    from otel_luna.settings._declare import Setting
    from otel_luna.settings._settings import Settings


#: The wire formats a sink may take: InfluxDB line protocol, or one JSON object (a ping) a line.
LINE_PROTOCOL = "line-protocol"
JSON = "json"


class SinkLike(Protocol):
    """What any sink has: a third-party sink that does not subclass :class:`Sink` is adapted
    (:func:`as_sink`); its optional ``format`` (or ``format_for(settings)``) and
    ``after_fork_in_child()`` are read once, then."""

    def write(self, body: bytes) -> None: ...

    def close(self) -> None: ...


class Sink(abc.ABC):
    """Where encoded lines go: the base class of sinks, with a default for everything but
    :meth:`write`."""

    #: What lines it takes: :data:`LINE_PROTOCOL` or :data:`JSON` (one JSON object per line).
    format: str = LINE_PROTOCOL
    #: Settings the sink declares (:class:`~otel_luna.settings.Setting`), read from the same
    #: sources as the built-in ones (:func:`sink_settings`).
    settings: tuple[Setting, ...] = ()

    @classmethod
    def format_for(cls, settings: Settings) -> str:
        """What lines a sink built from ``settings`` takes (asked before it is built, so a
        profile that does not fit fails before files or sockets are opened): :attr:`format`,
        unless the settings decide (the file sink: by the file's extension)."""
        return cls.format

    @abc.abstractmethod
    def write(self, body: bytes) -> None:
        """Deliver ``body`` (newline-terminated lines) or raise :class:`SinkError`."""

    def split_body(self, body: bytes) -> list[bytes]:
        """``body`` cut into its lines, each with its newline: how the writer splits a batch
        the destination refused, to isolate the lines it refuses for good. Line protocol by
        :func:`~otel_luna.encoding._lineprotocol.split_lines` (a string field may hold a
        newline); JSON has no raw newline."""
        if self.format == JSON:
            return [line + b"\n" for line in body.split(b"\n") if line]
        return split_lines(body)

    def after_fork_in_child(self) -> None:  # noqa: B027 - a default, not abstract
        """Called in a forked child before its first write: replace connection pools and
        locks, never closing the parent's sockets. Nothing by default."""

    def close(self) -> None:  # noqa: B027 - a default, not abstract
        """Release connections and files. Nothing by default."""


class _Adapted(Sink):
    """A sink that does not subclass :class:`Sink`, its optional parts read once."""

    def __init__(self, sink: SinkLike, format: str) -> None:
        self.adapted = sink
        self.format = format
        renew = getattr(sink, "after_fork_in_child", None)
        self._renew: Callable[[], object] | None = renew if callable(renew) else None

    def write(self, body: bytes) -> None:
        self.adapted.write(body)

    def after_fork_in_child(self) -> None:
        if self._renew is not None:
            self._renew()

    def close(self) -> None:
        self.adapted.close()

    def __repr__(self) -> str:
        return repr(self.adapted)

    def __getattr__(self, name: str) -> Any:
        """The adapted sink's own attributes, for whoever built it (never the writer's path)."""
        if name == "adapted":  # not yet set (a copy being made)
            raise AttributeError(name)
        return getattr(self.adapted, name)


def as_sink(sink: SinkLike, settings: Settings | None = None) -> Sink:
    """``sink`` as a :class:`Sink`: itself if it is one, else adapted once; its format is its
    ``format_for(settings)`` (when ``settings`` are given), else its ``format``, else line
    protocol. An object without ``write`` and ``close`` is a ``TypeError``."""
    if isinstance(sink, Sink):
        return sink
    missing = [name for name in ("write", "close") if not callable(getattr(sink, name, None))]
    if missing:
        raise TypeError(
            f"a sink needs write(body) and close(); {type(sink).__name__} has no "
            + " and no ".join(missing)
        )
    return _Adapted(sink, _declared_format(sink, settings))


@contextlib.contextmanager
def sink_not_built(settings: Settings) -> Iterator[None]:
    """Inside: finding, asking and building the sink a plugin provides. Anything it raises
    but a :class:`~otel_luna.settings.SettingsError` (an entry point that does not import, a
    ``format`` that raises, a constructor that fails, an abstract method left out) becomes one
    naming ``OTEL_EXPORTER_LUNA_SINK``: an exporter built from the environment logs it and the
    app runs without it, as for any bad setting; ``serve`` exits with it in one line."""
    from otel_luna.settings._declare import SettingsError
    from otel_luna.settings._settings import env_name

    try:
        yield
    except SettingsError:
        raise
    except Exception as error:
        raise SettingsError(
            env_name("sink"),
            f"the sink {settings.sink_name!r} could not be built: {type(error).__name__}: {error}",
        ).redacted(settings.secrets) from error


def _declared_format(sink: object, settings: Settings | None) -> str:
    """The format a sink or factory not made from :class:`Sink` declares (read once)."""
    format_for = getattr(sink, "format_for", None)
    if settings is not None and callable(format_for):
        return str(format_for(settings))
    return str(getattr(sink, "format", LINE_PROTOCOL))


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


class _AdaptedFactory:
    """The entry point of a sink not made from :class:`Sink`: builds it adapted."""

    def __init__(self, build: Callable[[Settings], SinkLike]) -> None:
        self.build = build

    def __call__(self, settings: Settings) -> Sink:
        return as_sink(self.build(settings), settings)

    def format_for(self, settings: Settings) -> str:
        return _declared_format(self.build, settings)


def sink_factory(settings: Settings) -> Callable[[Settings], Sink]:
    """The entry point named by ``settings.sink_name``: a callable (usually the sink's class)
    that builds the sink from ``settings``; one that does not build a :class:`Sink` is wrapped
    so that it does (:func:`as_sink`)."""
    from otel_luna.settings._declare import SettingsError
    from otel_luna.settings._settings import env_name

    name = settings.sink_name
    found = entry_points(group=SINK_GROUP, name=name)
    if not found:
        known = sorted(ep.name for ep in entry_points(group=SINK_GROUP))
        raise SettingsError(
            env_name("sink"), f"no sink named {name!r}; installed: {', '.join(known)}"
        ).redacted(settings.secrets)  # a secret pasted into the wrong setting
    factory = next(iter(found)).load()
    if isinstance(factory, type) and issubclass(factory, Sink):
        return factory
    return _AdaptedFactory(factory)


def wire_format(sink: SinkLike | Callable[[Settings], Sink], settings: Settings) -> str:
    """What lines ``sink`` — a sink, or its factory (:func:`sink_factory`) before it is
    built — takes."""
    if isinstance(sink, Sink):
        return sink.format
    if isinstance(sink, _AdaptedFactory) or (isinstance(sink, type) and issubclass(sink, Sink)):
        return sink.format_for(settings)
    return _declared_format(sink, settings)


def basic_auth(username: str | None, password: str | None) -> dict[str, str]:
    """The ``Authorization`` header of HTTP basic authentication (``username:password`` in UTF-8,
    base64), or no header unless both are set."""
    if not (username and password):
        return {}
    return {"Authorization": "Basic " + b64encode(f"{username}:{password}".encode()).decode()}


def load_sink(settings: Settings) -> Sink:
    """The sink named by ``settings.sink_name``, built from ``settings``."""
    return sink_factory(settings)(settings)
