"""Every setting of the exporter, declared once and read once into a frozen :class:`Settings`.

Each field of :class:`Settings` is declared with :func:`setting`: its default, parser, what it
accepts, a one-line doc and its group; its environment variable (``OTEL_EXPORTER_LUNA_<NAME>``)
and ``[monitoring]`` key follow from its name unless given. Everything else — loading, error
messages, the list of secrets, :func:`describe`, the tables of ``docs/configuration.md`` — is
derived from those declarations. A sink declares settings of its own the same way, as
:class:`Setting` objects in its ``settings`` attribute (see :func:`otel_luna.sinks.sink_settings`);
their values are in :attr:`Settings.sink_options`, read with :meth:`Settings.option`.

Sources, later ones winning: defaults, the ``[monitoring]`` section of the TOML file named by
``OTEL_EXPORTER_LUNA_CONFIG`` (keys mirror luna-handlers' own ``monitoring`` section), the
``OTEL_EXPORTER_LUNA_*`` environment variables, then keyword arguments. A bad value raises
:class:`SettingsError` naming the setting and what it accepts. Secrets have no default and never
appear in a message or a ``repr``: every secret given (environment, TOML file, keyword
arguments) is masked in every :class:`SettingsError` that :meth:`Settings.load` raises, whichever
setting the error is about.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from otel_luna.redact import MASK, credential_forms, redact

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: Path of a TOML file whose ``[monitoring]`` section holds settings (environment wins).
OTEL_EXPORTER_LUNA_CONFIG = "OTEL_EXPORTER_LUNA_CONFIG"
#: How every setting's environment variable starts.
ENV_PREFIX = "OTEL_EXPORTER_LUNA_"

#: Groups of settings, each a section of docs/configuration.md; a sink's own settings are in
#: group ``"<sink name> sink"``.
DESTINATION = "destination"
DELIVERY = "delivery"
SPOOL = "spool"
SERVE = "serve"

_TIB = 2**40
_CENTURY = 100 * 365 * 86400  # seconds
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class SettingsError(ValueError):
    """A setting has a value the exporter cannot use; ``setting`` names it, ``message`` says
    what is wrong."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting
        self.message = message

    def redacted(self, secrets: Iterable[str]) -> SettingsError:
        """This error with every value of ``secrets`` (in any form a text may hold it, see
        :func:`~otel_luna.redact.redact`) masked in its message; itself if none is there."""
        message = redact(self.message, secrets)
        return self if message == self.message else SettingsError(self.setting, message)


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("expected true or false")


def number(
    kind: type[int] | type[float], low: float, high: float, unit: str = ""
) -> tuple[Callable[[Any], Any], str]:
    """A parser of ``kind`` numbers from ``low`` to ``high``, and its ``accepts`` text: the
    ``parse`` and ``accepts`` of a :class:`Setting`."""

    def show(bound: float) -> str:
        return str(int(bound)) if kind is int else f"{bound:g}"

    def parse(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        try:
            parsed = kind(value)
        except (TypeError, ValueError):
            raise ValueError("not an integer" if kind is int else "not a number") from None
        if not low <= parsed <= high:  # NaN fails too
            raise ValueError("out of range")
        return parsed

    noun = "seconds" if kind is float else "an integer"
    return parse, f"{noun} from {show(low)} to {show(high)}" + (f" ({unit})" if unit else "")


def _api_version(value: Any) -> str:
    text = str(value).strip().lower()
    if text not in ("1", "2", "auto"):
        raise ValueError("expected 1, 2 or auto")
    return text


#: One label of a host name (letters, digits, ``-`` inside, ``_`` as Docker names have).
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")
#: What no endpoint may hold (``urlsplit`` silently drops tabs and newlines, so they are looked
#: for before it), and what only a file path may.
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")
_WHITESPACE = re.compile(r"\s")
_QUERY_OR_FRAGMENT = re.compile(r"[?#].*", re.S)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def _valid_host(host: str, bracketed: bool) -> bool:
    """An IP address (IPv6 only in brackets), or a DNS name whose last label is not a number."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if bracketed:
            return False
    else:
        return bracketed == (address.version == 6)
    name = host[:-1] if host.endswith(".") else host
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return False
    labels = name.split(".")
    return (
        len(name) <= 253
        and all(_HOST_LABEL.match(label) for label in labels)
        and not labels[-1].isdigit()  # 999.1.1.1 is no address and no name either
    )


def _endpoint(value: Any) -> str:
    text = str(value).strip()
    if text == "console":
        return text
    if _CONTROL_CHARACTER.search(text):
        raise ValueError("the endpoint holds a control character")
    if _WHITESPACE.search(text) and not text.lower().startswith("file:"):
        raise ValueError("an http(s) endpoint holds no spaces")
    try:
        parts = urlsplit(text)
    except ValueError:  # e.g. a bracketed host that is no IPv6 address
        raise ValueError("not a valid URL") from None
    if parts.scheme == "file":
        if "@" in parts.netloc:
            raise ValueError("a file:// endpoint takes no user or password, only a path")
        if "?" in text or "#" in text:
            raise ValueError("write ? and # in a file path as %3F and %23")
        if not (parts.netloc + parts.path):
            raise ValueError("a file:// endpoint needs a path, e.g. file:///var/lib/luna.lp")
        return text
    if parts.scheme in ("http", "https"):
        if "@" in parts.netloc:
            raise ValueError("put credentials in the username/password or token settings")
        if "?" in text or "#" in text:
            raise ValueError(
                "no query string or fragment (credentials go in the username/password or "
                "token settings; a path prefix such as http://host/influx is allowed)"
            )
        host = parts.hostname
        if not host:
            raise ValueError("an http(s) endpoint needs a host, e.g. http://127.0.0.1:8086")
        if not _valid_host(host, parts.netloc.startswith("[")):
            raise ValueError("the host is not a valid host name or IP address")
        try:
            port = parts.port
        except ValueError:
            port = 0
        if port == 0:
            raise ValueError("the port must be a number from 1 to 65535")
        return text.rstrip("/")
    raise ValueError("not a supported kind of endpoint")


def _shown_endpoint(value: Any) -> str:
    """An endpoint as an error message may show it: everything up to its last ``@`` (userinfo,
    whatever characters the password holds, however mistyped the scheme), its query and its
    fragment masked."""
    text = str(value)
    at = text.rfind("@")
    if at != -1:
        scheme = _SCHEME.match(text)
        text = (scheme.group(0) if scheme else "") + MASK + text[at:]
    return redact(_QUERY_OR_FRAGMENT.sub(lambda found: found.group(0)[0] + MASK, text))


def _schema(value: Any) -> str:
    text = str(value).strip().lower()
    if text not in ("luna", "watchdog"):
        raise ValueError("expected luna or watchdog")
    return text


def _port(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a port number")
    number = int(value)
    if not 0 <= number <= 65535:
        raise ValueError("expected a port from 0 to 65535")
    return number


def _spool_kind(value: Any) -> str:
    text = str(value).strip().lower()
    if text not in ("disk", "memory"):
        raise ValueError("expected disk or memory")
    return text


def _default_state_dir(name: str) -> str:
    """``$XDG_STATE_HOME/otel-luna/<name>``, else ``~/.local/state/otel-luna/<name>``."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(state, "otel-luna", name)


def _text(value: Any) -> str:
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise ValueError("expected a string")
    text = str(value)
    if not text:
        raise ValueError("must not be empty")
    return text


def _address(value: Any) -> str:
    """A host name or an IP address to listen on; an IPv6 address with or without brackets
    (``::1``, ``[::1]``), kept without them."""
    text = _text(value).strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if not text or any(char in text for char in "[]/ ") or not text.isprintable():
        raise ValueError("expected a host name or an IP address (IPv6 with or without [ ])")
    return text


def _header_text(value: Any) -> str:
    """Text sent in an HTTP header as it is (a token): no control characters, which no header
    may carry. Said without the value, which is a secret."""
    text = _text(value)
    if "\n" in text or "\r" in text:
        raise ValueError(
            "contains a line break, which no HTTP header may carry (often the trailing newline "
            "of the file the secret was read from): remove it"
        )
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in text):
        raise ValueError("contains a control character, which no HTTP header may carry")
    return text


def _shown(value: Any) -> str:
    return redact(str(value))


@dataclass(frozen=True)
class Setting:
    """One setting, declared once. ``env`` defaults to ``OTEL_EXPORTER_LUNA_<NAME>`` and
    ``toml`` (its key in the ``[monitoring]`` section) to ``name``. A sink declares its own as
    a tuple of these in its ``settings`` attribute; their parsed values must be hashable."""

    name: str
    default: Any
    parse: Callable[[Any], Any]
    #: What the setting accepts, as error messages and the docs say it.
    accepts: str
    #: One line for the docs.
    doc: str = ""
    #: Section of the docs; a sink's settings get ``"<sink name> sink"``.
    group: str = ""
    toml: str = ""
    env: str = ""
    #: Never shown: not in a message, a ``repr`` or :func:`describe`; masked by ``secrets``.
    secret: bool = False
    #: The default as the docs show it, for a default that depends on the machine.
    shown_default: str | None = None
    #: A bad value as an error message shows it.
    show: Callable[[Any], str] = _shown
    #: Makes the default each time one is needed (then ``default`` is unused).
    factory: Callable[[], Any] | None = None

    def __post_init__(self) -> None:
        if self.name:  # the fields of Settings get their name later, see SETTINGS
            object.__setattr__(self, "env", self.env or ENV_PREFIX + self.name.upper())
            object.__setattr__(self, "toml", self.toml or self.name)

    def default_value(self) -> Any:
        return self.default if self.factory is None else self.factory()


_SETTING = "otel_luna.setting"  # key of a Setting in a field's metadata


def setting(
    default: Any,
    parse: Callable[[Any], Any],
    accepts: str,
    *,
    group: str,
    doc: str,
    toml: str = "",
    env: str = "",
    secret: bool = False,
    shown_default: str | None = None,
    show: Callable[[Any], str] = _shown,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """A field of :class:`Settings` declared as a :class:`Setting` named after the field."""
    declared = Setting(
        "", default, parse, accepts, doc, group, toml, env, secret, shown_default, show, factory
    )
    metadata = {_SETTING: declared}
    if factory is not None:
        return field(default_factory=factory, repr=not secret, metadata=metadata)
    return field(default=default, repr=not secret, metadata=metadata)


@dataclass(frozen=True)
class SinkOptions:
    """The values given to settings that sinks declare, each with its declaration, by name.
    A value equal to its default is left out, so that equal settings compare (and hash) equal
    however they were given."""

    items: tuple[tuple[Setting, Any], ...] = ()

    def __repr__(self) -> str:
        return repr({each.name: MASK if each.secret else value for each, value in self.items})


@dataclass(frozen=True)
class Settings:
    """The exporter's settings. Build with :meth:`load`; fields are documented in
    ``docs/configuration.md``. Built directly or by :meth:`replace`, values are checked (and
    normalised) as :meth:`load` checks them."""

    # destination
    endpoint: str = setting(
        "http://127.0.0.1:8086",
        _endpoint,
        "http(s)://host:port[/path prefix], file:///path or console",
        group=DESTINATION,
        doc="where points go: an InfluxDB URL, a line-protocol file or standard output",
        show=_shown_endpoint,
    )
    api_version: str = setting(
        "auto",
        _api_version,
        "1, 2 or auto",
        group=DESTINATION,
        toml="version",
        doc="InfluxDB write API: 1 (/write), 2 (/api/v2/write), auto: 2 when a token is set",
    )
    database: str = setting(
        "luna_monitoring",
        _text,
        "a database name",
        group=DESTINATION,
        toml="database_name",
        doc="1.x API: database",
    )
    retention_policy: str | None = setting(
        None,
        _text,
        "a retention policy name",
        group=DESTINATION,
        doc="1.x API: retention policy (the database's default when unset)",
    )
    username: str | None = setting(
        None,
        _text,
        "a user name",
        group=DESTINATION,
        toml="user_name",
        doc="1.x API: user name for basic authentication",
    )
    password: str | None = setting(
        None,
        _text,
        "a password",
        group=DESTINATION,
        secret=True,
        doc="1.x API: password for basic authentication (secret)",
    )
    org: str | None = setting(
        None,
        _text,
        "an organization name",
        group=DESTINATION,
        toml="organization",
        doc="2.x API: organization",
    )
    bucket: str = setting(
        "luna_monitoring", _text, "a bucket name", group=DESTINATION, doc="2.x API: bucket"
    )
    token: str | None = setting(
        None,
        _header_text,
        "an API token",
        group=DESTINATION,
        secret=True,
        doc="2.x API: token (secret)",
    )
    sink: str | None = setting(
        None,
        _text,
        "the name of an entry point in group otel_luna.sinks",
        group=DESTINATION,
        doc="the sink that delivers the points (default: chosen by the endpoint)",
    )
    schema: str = setting(
        "luna",
        _schema,
        "luna or watchdog",
        group=DESTINATION,
        doc="which series to write: luna (requests, errors, …) or watchdog (pings)",
    )
    enabled: bool = setting(
        True,
        _parse_bool,
        "true or false (1 or 0)",
        group=DESTINATION,
        toml="send_data_for_monitoring",
        doc="false turns the exporter into a no-op",
    )
    strict: bool = setting(
        False,
        _parse_bool,
        "true or false (1 or 0)",
        group=DESTINATION,
        doc="a bad setting ends the process at start-up (exit status 2) instead of leaving the "
        "app running without the luna exporters",
    )
    gzip: bool = setting(
        False, _parse_bool, "true or false", group=DESTINATION, doc="gzip request bodies"
    )
    timeout: float = setting(
        10.0, *number(float, 0.1, 600), group=DESTINATION, doc="seconds one write may take"
    )
    # delivery
    flush_interval: float = setting(
        1.0,
        *number(float, 0.01, 3600),
        group=DELIVERY,
        toml="flushing_period",
        doc="seconds between flushes of buffered points",
    )
    batch_size: int = setting(
        5000,
        *number(int, 1, 1_000_000_000),
        group=DELIVERY,
        doc="most lines in one write; a full batch is written at once",
    )
    shutdown_timeout: float = setting(
        10.0,
        *number(float, 0.1, 3600),
        group=DELIVERY,
        doc="seconds shutdown (and interpreter exit) may spend delivering what is spooled",
    )
    handle_sigterm: bool = setting(
        True,
        _parse_bool,
        "true or false",
        group=DELIVERY,
        doc="on SIGTERM, spool what the SDK holds and deliver it before the previous handler",
    )
    dead_letter: str = setting(
        None,
        _text,
        "a file path",
        group=DELIVERY,
        factory=lambda: _default_state_dir("dead-letter.jsonl"),
        shown_default="$XDG_STATE_HOME/otel-luna/dead-letter.jsonl",
        doc="file of the points the destination rejects for good, one JSON object per line",
    )
    dead_letter_max_bytes: int = setting(
        64 * 1024 * 1024,
        *number(int, 1024, _TIB, "bytes"),
        group=DELIVERY,
        doc="size at which the dead-letter file is rotated (one older file kept)",
    )
    route_limit: int = setting(
        1000,
        *number(int, 1, 1_000_000, "distinct routes per service"),
        group=DELIVERY,
        doc="most distinct route tag values per service; further ones are METHOD:{overflow}",
    )
    max_time_ahead: float = setting(
        600.0,
        *number(float, 0, _CENTURY, "0: no bound"),
        group=DELIVERY,
        doc="seconds a point's time may be ahead of this host's clock; a later point is "
        "rejected (time_too_far_ahead)",
    )
    max_time_age: float = setting(
        0.0,
        *number(float, 0, _CENTURY, "0: no bound"),
        group=DELIVERY,
        doc="seconds a point's time may be behind this host's clock; an older point is "
        "rejected (time_too_old); set it to the retention policy's duration",
    )
    # spool
    spool: str = setting(
        "disk",
        _spool_kind,
        "disk or memory",
        group=SPOOL,
        doc="where encoded points wait for the sink: disk (survives restarts) or memory",
    )
    spool_dir: str = setting(
        None,
        _text,
        "a directory path",
        group=SPOOL,
        factory=lambda: _default_state_dir("spool"),
        shown_default="$XDG_STATE_HOME/otel-luna/spool",
        doc="directory of the disk spool (one subdirectory per destination, then per process)",
    )
    spool_max_bytes: int = setting(
        512 * 1024 * 1024,
        *number(int, 1, _TIB, "bytes"),
        group=SPOOL,
        doc="most bytes the spool holds; beyond it the oldest points are dropped",
    )
    spool_retry_interval: float = setting(
        5.0,
        *number(float, 0, 3600),
        group=SPOOL,
        doc="seconds a disk spool whose disk refused a write keeps new points in memory "
        "before it tries the disk again (serve: refuses instead)",
    )
    # otel-luna serve
    serve_host: str = setting(
        "127.0.0.1",
        _address,
        "a host name or an IP address; IPv6 as ::1 or [::1], :: for all",
        group=SERVE,
        doc="address to listen on",
    )
    serve_grpc_port: int = setting(
        4317,
        _port,
        "0 (any free port) to 65535",
        group=SERVE,
        doc="OTLP/gRPC port",
    )
    serve_http_port: int = setting(
        4318,
        _port,
        "0 (any free port) to 65535",
        group=SERVE,
        doc="OTLP/HTTP port",
    )
    serve_health_port: int | None = setting(
        None,
        _port,
        "0 (any free port) to 65535; unset: off",
        group=SERVE,
        doc="port of the health and metrics endpoint (/healthz, /readyz, /metrics in "
        "Prometheus text format); off unless set",
    )
    serve_health_host: str = setting(
        "127.0.0.1",
        _address,
        "a host name or an IP address; IPv6 as ::1 or [::1]",
        group=SERVE,
        doc="address the health and metrics endpoint listens on (not serve_host: the counters "
        "are for the operator, not for every sender)",
    )
    serve_max_message_bytes: int = setting(
        16 * 1024 * 1024,
        *number(int, 1, 2**31 - 1, "bytes"),
        group=SERVE,
        doc="largest request accepted (after decompression: gzip, deflate or zstd)",
    )
    serve_workers: int = setting(
        1,
        *number(int, 0, 256, "processes; 0: one per CPU"),
        group=SERVE,
        doc="processes sharing the ports (SO_REUSEPORT), each with its own spool directory",
    )
    serve_max_connections: int = setting(
        256,
        *number(int, 1, 100_000, "per worker"),
        group=SERVE,
        doc="most OTLP/HTTP connections and gRPC calls served at once; more wait or are refused",
    )
    serve_max_inflight_bytes: int = setting(
        64 * 1024 * 1024,
        *number(int, 1024, 2**40, "bytes per worker"),
        group=SERVE,
        doc="most request bytes being read or decoded at once; beyond it requests are refused "
        "with 503 / RESOURCE_EXHAUSTED and retried by the client",
    )
    serve_max_decoded_bytes: int = setting(
        128 * 1024 * 1024,
        *number(int, 1024 * 1024, 2**40, "bytes per request, estimated before decoding"),
        group=SERVE,
        doc="most memory one request may take decoded, by a bound computed before decoding "
        "(many tiny messages decode to 30-90 times their wire size); beyond it the request is "
        "refused with 413 / RESOURCE_EXHAUSTED: send fewer spans or data points per request",
    )
    serve_read_timeout: float = setting(
        10.0,
        *number(float, 0.1, 600),
        group=SERVE,
        doc="seconds a client may take to send a request's headers and body (gRPC: the "
        "connection preface and its call's message); also bounds how long a slow client can "
        "hold up shutdown",
    )
    serve_idle_timeout: float = setting(
        60.0,
        *number(float, 0.1, 86400),
        group=SERVE,
        doc="seconds a connection may stay open without a request (HTTP keep-alive, a gRPC "
        "connection without calls); then serve closes it (gRPC: GOAWAY, the client reconnects)",
    )
    serve_tls_cert: str | None = setting(
        None,
        _text,
        "a PEM file path",
        group=SERVE,
        doc="TLS certificate chain; with the key, both protocols use TLS",
    )
    serve_tls_key: str | None = setting(
        None, _text, "a PEM file path", group=SERVE, doc="TLS private key"
    )
    serve_token: str | None = setting(
        None,
        _header_text,
        "a bearer token",
        group=SERVE,
        secret=True,
        doc="when set, the bearer token every request must carry (secret)",
    )
    #: Values of the settings sinks declare; read them with :meth:`option`.
    sink_options: SinkOptions = field(default=SinkOptions())

    def __post_init__(self) -> None:
        try:
            for each in SETTINGS:
                value = getattr(self, each.name)
                if value is None and each.default is None and each.factory is None:
                    continue  # unset and optional
                object.__setattr__(self, each.name, _convert(each.name, each, value))
            self.validated()
        except SettingsError as error:  # a secret pasted into another field is not shown
            raise error.redacted(self.secrets) from None

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then the TOML file, then the environment, then ``overrides`` (``None``
        meaning the default). Settings that sinks declare are read the same way.

        A :class:`SettingsError` never shows a secret given in any of them."""
        env = os.environ if environ is None else environ
        try:
            return cls._load(env, overrides)
        except SettingsError as error:
            raise error.redacted(_given_secrets(env, overrides)) from None

    @classmethod
    def _load(cls, env: Mapping[str, str], overrides: Mapping[str, Any]) -> Settings:
        path = env.get(OTEL_EXPORTER_LUNA_CONFIG) or ""
        section = _read_section(path) if path else {}
        values = _toml_endpoint(section)
        values.update(_given(SETTINGS, env, section, overrides))
        return cls(**values)._with_sink_options(env, section, overrides, path)

    def _with_sink_options(
        self,
        env: Mapping[str, str],
        section: Mapping[str, Any],
        overrides: Mapping[str, Any],
        path: str = "",
    ) -> Settings:
        """This with the values given to the settings its sink declares, and to those of any
        other installed sink when something given is no setting of this one's."""
        from otel_luna.sinks._base import sink_settings

        # Only the chosen sink is imported, unless a setting of another one is given: the
        # others may be slow to import or broken.
        declared = _sink_declarations(sink_settings(self.sink_name))
        if any(_unknown([*SETTINGS, *declared], env, section, overrides)):
            declared = _sink_declarations([*declared, *sink_settings()])
        every = [*SETTINGS, *declared]
        keys, names, _ = _unknown(every, env, section, overrides)  # unknown variables are let be
        if keys:
            known = sorted([*(each.toml for each in every), *_ENDPOINT_PARTS])
            raise SettingsError(
                f"[monitoring] {keys[0]}", f"unknown key in {path}; known keys: {', '.join(known)}"
            )
        if names:
            known = [each.name for each in every]
            raise SettingsError(names[0], f"unknown setting; known: {', '.join(known)}")
        given = _given(declared, env, section, overrides)
        if not given:
            return self
        by_name = {each.name: each for each in declared}
        options = {each.name: (each, value) for each, value in self.sink_options.items}
        options.update({name: (by_name[name], value) for name, value in given.items()})
        kept = [(each, value) for each, value in options.values() if value != each.default_value()]
        for each, value in kept:
            try:
                hash(value)  # settings are a value: equal settings are one destination
            except TypeError:
                raise SettingsError(
                    each.env, f"the sink's parser gave an unhashable {type(value).__name__}"
                ) from None
        kept.sort(key=lambda option: option[0].name)
        return dataclasses.replace(self, sink_options=SinkOptions(tuple(kept)))

    def option(self, declared: Setting) -> Any:
        """The value of a setting a sink declares: the one given, else its default."""
        for each, value in self.sink_options.items:
            if each.name == declared.name:
                return value
        return declared.default_value()

    def validated(self) -> Settings:
        """Checks that need several settings at once (construction runs them)."""
        if self.resolved_api_version == "2" and not self.org:
            raise SettingsError(
                env_name("org"), "the 2.x API needs an organization (and usually a token)"
            )
        if bool(self.serve_tls_cert) != bool(self.serve_tls_key):
            raise SettingsError(
                env_name("serve_tls_cert"), "set both the TLS certificate and key, or neither"
            )
        if bool(self.username) != bool(self.password):
            raise SettingsError(env_name("username"), "set both username and password, or neither")
        return self

    @property
    def resolved_api_version(self) -> str:
        """``1`` or ``2``: ``auto`` means 2 when a token is set."""
        if self.api_version == "auto":
            return "2" if self.token else "1"
        return self.api_version

    @property
    def sink_name(self) -> str:
        """Entry point in ``otel_luna.sinks`` that delivers the points."""
        if self.sink:
            return self.sink
        if self.endpoint == "console":
            return "console"
        if self.endpoint.startswith("file:"):
            return "file"
        return f"influxdb-v{self.resolved_api_version}"

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values never to show (for :func:`otel_luna.redact.redact`): the password, the tokens
        (a sink's secret settings too) and their base64 forms, see
        :func:`~otel_luna.redact.credential_forms`. :func:`~otel_luna.redact.redact` masks each
        also percent-encoded or JSON-escaped."""
        # The password is the one secret that also goes with the username (basic auth).
        tokens = [getattr(self, each.name) for each in _SECRETS if each.name != "password"]
        tokens += [value for each, value in self.sink_options.items if each.secret]
        passwords = [str(self.password)] if self.password is not None else []
        tokens = [str(token) for token in tokens if token is not None]
        return credential_forms(self.username and str(self.username), passwords, tokens)

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied, checked as :meth:`load` checks them."""
        try:
            core = {name: value for name, value in changes.items() if name in _BY_NAME}
            changed = dataclasses.replace(self, **core)
            others = {name: value for name, value in changes.items() if name not in _BY_NAME}
            return changed._with_sink_options({}, {}, others) if others else changed
        except SettingsError as error:  # a secret among the changes, shown in another's error
            given = {"username": self.username, "password": self.password, **changes}
            raise error.redacted((*self.secrets, *_given_secrets({}, given))) from None


#: The declarations of the fields of :class:`Settings`, in their order.
SETTINGS: tuple[Setting, ...] = tuple(
    dataclasses.replace(each.metadata[_SETTING], name=each.name)
    for each in dataclasses.fields(Settings)
    if _SETTING in each.metadata
)
_BY_NAME = {each.name: each for each in SETTINGS}
_SECRETS = [each for each in SETTINGS if each.secret]


def strict_requested(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``OTEL_EXPORTER_LUNA_STRICT`` (or ``strict`` in the TOML file) asks for a bad
    setting to be fatal, read on its own so that it counts when other settings are bad. A value
    that is no boolean counts as true: whoever set it wanted something strict."""
    env = os.environ if environ is None else environ
    declared = _BY_NAME["strict"]
    raw: Any = env.get(declared.env)
    if raw is None or not str(raw).strip():
        path = env.get(OTEL_EXPORTER_LUNA_CONFIG) or ""
        try:
            raw = _read_section(path).get(declared.toml) if path else None
        except SettingsError:
            raw = None
    if raw is None:
        return False
    try:
        return bool(declared.parse(raw))
    except (ValueError, TypeError):
        return True


def env_name(name: str) -> str:
    """The environment variable of the setting ``name`` (a field of :class:`Settings`)."""
    return _BY_NAME[name].env


def _sink_declarations(declared: Iterable[Setting]) -> list[Setting]:
    """``declared`` without the names of :class:`Settings` fields (those stay the core's) and,
    of several with one name, all but the first."""
    unique: dict[str, Setting] = {}
    for each in declared:
        if each.name not in _BY_NAME:
            unique.setdefault(each.name, each)
    return list(unique.values())


def _unknown(
    declared: Iterable[Setting],
    env: Mapping[str, str],
    section: Mapping[str, Any],
    overrides: Mapping[str, Any],
) -> tuple[list[str], list[str], list[str]]:
    """What is given that none of ``declared`` reads: TOML keys, keyword arguments, and
    environment variables named like settings."""
    declared = list(declared)
    keys = {each.toml for each in declared}.union(_ENDPOINT_PARTS)
    names = {each.name for each in declared}
    variables = {each.env for each in declared} | {OTEL_EXPORTER_LUNA_CONFIG}
    return (
        [key for key in section if key not in keys],
        [name for name in overrides if name not in names],
        [
            variable
            for variable, raw in env.items()
            if variable.startswith(ENV_PREFIX) and variable not in variables and raw.strip()
        ],
    )


def _given(
    declared: Iterable[Setting],
    env: Mapping[str, str],
    section: Mapping[str, Any],
    overrides: Mapping[str, Any],
) -> dict[str, Any]:
    """The values given to ``declared`` settings, parsed; a later source wins."""
    values: dict[str, Any] = {}
    for each in declared:
        if each.toml in section:
            values[each.name] = _convert(f"[monitoring] {each.toml}", each, section[each.toml])
        raw = env.get(each.env)
        if raw is not None and raw.strip() != "":
            values[each.name] = _convert(each.env, each, raw)
        if each.name in overrides:
            value = overrides[each.name]
            values[each.name] = (
                each.default_value() if value is None else _convert(each.name, each, value)
            )
    return values


def _given_secrets(env: Mapping[str, str], overrides: Mapping[str, Any]) -> tuple[str, ...]:
    """Every secret value given to :meth:`Settings.load` — valid or not — in the keyword
    arguments, the environment and the TOML file (read again, quietly)."""
    from otel_luna.sinks._base import sink_settings

    declared = [*SETTINGS, *_sink_declarations(sink_settings())]
    sources: list[Mapping[str, Any]] = [overrides]
    sources.append({each.name: env.get(each.env) for each in declared})
    path = env.get(OTEL_EXPORTER_LUNA_CONFIG)
    if path:
        try:
            section = _read_section(path)
        except SettingsError:
            section = {}
        sources.append({each.name: section.get(each.toml) for each in declared})
    secret = [each.name for each in declared if each.secret and each.name != "password"]
    users: list[str | None] = [str(src["username"]) for src in sources if src.get("username")]
    passwords = [str(source["password"]) for source in sources if source.get("password")]
    tokens = [str(source[name]) for source in sources for name in secret if source.get(name)]
    found: list[str] = []
    for username in users or [None]:
        found += credential_forms(username, passwords, tokens)
    return tuple(dict.fromkeys(found))


def _convert(setting: str, declared: Setting, raw: Any) -> Any:
    try:
        return declared.parse(raw)
    except (ValueError, TypeError) as error:
        shown = "" if declared.secret else f" {declared.show(raw)!r}"
        why = str(error)
        if why == f"expected {declared.accepts}":  # would say it twice
            raise SettingsError(setting, f"bad value{shown}; accepts {declared.accepts}") from None
        raise SettingsError(
            setting, f"bad value{shown}: {why}; accepts {declared.accepts}"
        ) from None


#: ``[monitoring]`` keys that build the endpoint, as in luna-handlers' configuration.
_ENDPOINT_PARTS = ("host", "port", "use_ssl")
_USE_SSL = Setting("use_ssl", False, _parse_bool, "true or false (1 or 0)")


def _read_section(path: str) -> dict[str, Any]:
    """The ``[monitoring]`` section of the TOML file at ``path``."""
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except OSError as error:
        raise SettingsError(
            OTEL_EXPORTER_LUNA_CONFIG, f"cannot read {path}: {error.strerror}"
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(
            OTEL_EXPORTER_LUNA_CONFIG, f"{path} is not valid TOML: {error}"
        ) from None
    section = document.get("monitoring")
    if not isinstance(section, dict):
        raise SettingsError(OTEL_EXPORTER_LUNA_CONFIG, f"{path} has no [monitoring] section")
    return section


def _toml_endpoint(section: Mapping[str, Any]) -> dict[str, Any]:
    """The endpoint that ``host``, ``port`` and ``use_ssl`` build, unless ``endpoint`` is
    given."""
    if "host" not in section or "endpoint" in section:
        return {}
    use_ssl = _convert("[monitoring] use_ssl", _USE_SSL, section.get("use_ssl", False))
    endpoint = f"{'https' if use_ssl else 'http'}://{section['host']}:{section.get('port', 8086)}"
    return {"endpoint": _convert("[monitoring] host", _BY_NAME["endpoint"], endpoint)}


class Row(NamedTuple):
    """A setting as :func:`describe` lists it."""

    name: str
    env: str
    toml: str
    default: Any  # None for a secret or a setting without a default
    accepts: str
    group: str
    doc: str


def describe() -> list[Row]:
    """Every setting: the fields of :class:`Settings`, then those every installed sink
    declares."""
    from otel_luna.sinks._base import sink_settings

    return [
        Row(
            each.name,
            each.env,
            each.toml,
            None if each.secret else each.shown_default or each.default_value(),
            each.accepts,
            each.group,
            each.doc,
        )
        for each in [*SETTINGS, *_sink_declarations(sink_settings())]
    ]


def markdown_table(group: str) -> str:
    """The table of ``group``'s settings as ``docs/configuration.md`` shows it (a test checks
    that it does)."""
    lines = [
        "| environment variable | `[monitoring]` key | default | accepts | what it is |",
        "|---|---|---|---|---|",
    ]
    for row in describe():
        if row.group == group:
            default = "*(none)*" if row.default is None else f"`{row.default}`"
            doc = row.doc.replace("|", "\\|")
            lines.append(f"| `{row.env}` | `{row.toml}` | {default} | {row.accepts} | {doc} |")
    return "\n".join(lines) + "\n"
