"""Every setting of the exporter, read once into a frozen :class:`Settings`.

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
from base64 import b64encode
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from otel_luna.redact import MASK, basic_credentials, redact

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: URL of the InfluxDB (``http(s)://host:port``, optionally a path prefix; no query string),
#: ``file:///path`` for a line-protocol file, or ``console`` for standard output.
OTEL_EXPORTER_LUNA_ENDPOINT = "OTEL_EXPORTER_LUNA_ENDPOINT"
#: InfluxDB write API: ``1`` (``/write``), ``2`` (``/api/v2/write``) or ``auto`` (2 when a token
#: is set, else 1).
OTEL_EXPORTER_LUNA_API_VERSION = "OTEL_EXPORTER_LUNA_API_VERSION"
#: 1.x API: database.
OTEL_EXPORTER_LUNA_DATABASE = "OTEL_EXPORTER_LUNA_DATABASE"
#: 1.x API: retention policy (the database's default when unset).
OTEL_EXPORTER_LUNA_RETENTION_POLICY = "OTEL_EXPORTER_LUNA_RETENTION_POLICY"
#: 1.x API: user name for basic authentication.
OTEL_EXPORTER_LUNA_USERNAME = "OTEL_EXPORTER_LUNA_USERNAME"
#: 1.x API: password for basic authentication (secret).
OTEL_EXPORTER_LUNA_PASSWORD = "OTEL_EXPORTER_LUNA_PASSWORD"
#: 2.x API: organization.
OTEL_EXPORTER_LUNA_ORG = "OTEL_EXPORTER_LUNA_ORG"
#: 2.x API: bucket.
OTEL_EXPORTER_LUNA_BUCKET = "OTEL_EXPORTER_LUNA_BUCKET"
#: 2.x API: token (secret).
OTEL_EXPORTER_LUNA_TOKEN = "OTEL_EXPORTER_LUNA_TOKEN"
#: Seconds between flushes of buffered points (luna-handlers' ``flushing_period``).
OTEL_EXPORTER_LUNA_FLUSH_INTERVAL = "OTEL_EXPORTER_LUNA_FLUSH_INTERVAL"
#: Most lines in one write; a full batch is written without waiting for the interval.
OTEL_EXPORTER_LUNA_BATCH_SIZE = "OTEL_EXPORTER_LUNA_BATCH_SIZE"
#: Seconds one write may take.
OTEL_EXPORTER_LUNA_TIMEOUT = "OTEL_EXPORTER_LUNA_TIMEOUT"
#: ``true`` to gzip request bodies.
OTEL_EXPORTER_LUNA_GZIP = "OTEL_EXPORTER_LUNA_GZIP"
#: Where encoded points wait for the sink: ``disk`` (survives crashes and restarts) or ``memory``.
OTEL_EXPORTER_LUNA_SPOOL = "OTEL_EXPORTER_LUNA_SPOOL"
#: Directory of the disk spool (one subdirectory per destination, then per process).
OTEL_EXPORTER_LUNA_SPOOL_DIR = "OTEL_EXPORTER_LUNA_SPOOL_DIR"
#: Most bytes the spool holds; beyond it the oldest points are dropped and counted.
OTEL_EXPORTER_LUNA_SPOOL_MAX_BYTES = "OTEL_EXPORTER_LUNA_SPOOL_MAX_BYTES"
#: File where points the destination rejects for good are kept, one JSON object per line.
OTEL_EXPORTER_LUNA_DEAD_LETTER = "OTEL_EXPORTER_LUNA_DEAD_LETTER"
#: Seconds shutdown (and interpreter exit) may spend delivering what is spooled.
OTEL_EXPORTER_LUNA_SHUTDOWN_TIMEOUT = "OTEL_EXPORTER_LUNA_SHUTDOWN_TIMEOUT"
#: Name of the sink in entry-point group ``otel_luna.sinks`` (default: chosen by the endpoint).
OTEL_EXPORTER_LUNA_SINK = "OTEL_EXPORTER_LUNA_SINK"
#: ``false`` turns the exporter into a no-op (luna-handlers' ``send_data_for_monitoring``).
OTEL_EXPORTER_LUNA_ENABLED = "OTEL_EXPORTER_LUNA_ENABLED"
#: Which series to write: ``luna`` (requests, errors, usages_statistic, licensing) or
#: ``watchdog`` (new_item, poller_heartbeat, worker_works pings).
OTEL_EXPORTER_LUNA_SCHEMA = "OTEL_EXPORTER_LUNA_SCHEMA"
#: Ping Centre sink: most pings being POSTed at once (one HTTP request per ping).
OTEL_EXPORTER_LUNA_MAX_IN_FLIGHT = "OTEL_EXPORTER_LUNA_MAX_IN_FLIGHT"
#: ``otel-luna serve``: address to listen on.
OTEL_EXPORTER_LUNA_SERVE_HOST = "OTEL_EXPORTER_LUNA_SERVE_HOST"
#: ``otel-luna serve``: OTLP/gRPC port (0: any free port).
OTEL_EXPORTER_LUNA_SERVE_GRPC_PORT = "OTEL_EXPORTER_LUNA_SERVE_GRPC_PORT"
#: ``otel-luna serve``: OTLP/HTTP port (0: any free port).
OTEL_EXPORTER_LUNA_SERVE_HTTP_PORT = "OTEL_EXPORTER_LUNA_SERVE_HTTP_PORT"
#: ``otel-luna serve``: largest request accepted, in bytes (after gzip decompression).
OTEL_EXPORTER_LUNA_SERVE_MAX_MESSAGE_BYTES = "OTEL_EXPORTER_LUNA_SERVE_MAX_MESSAGE_BYTES"
#: ``otel-luna serve``: TLS certificate chain (PEM); with the key, both protocols use TLS.
OTEL_EXPORTER_LUNA_SERVE_TLS_CERT = "OTEL_EXPORTER_LUNA_SERVE_TLS_CERT"
#: ``otel-luna serve``: TLS private key (PEM).
OTEL_EXPORTER_LUNA_SERVE_TLS_KEY = "OTEL_EXPORTER_LUNA_SERVE_TLS_KEY"
#: ``otel-luna serve``: when set, requests must carry ``Authorization: Bearer <token>`` (secret).
OTEL_EXPORTER_LUNA_SERVE_TOKEN = "OTEL_EXPORTER_LUNA_SERVE_TOKEN"
#: Most distinct ``route`` tag values per service; further ones are written as
#: ``METHOD:{overflow}``.
OTEL_EXPORTER_LUNA_ROUTE_LIMIT = "OTEL_EXPORTER_LUNA_ROUTE_LIMIT"
#: Most bytes of the dead-letter file; beyond it the file is rotated (one older file kept).
OTEL_EXPORTER_LUNA_DEAD_LETTER_MAX_BYTES = "OTEL_EXPORTER_LUNA_DEAD_LETTER_MAX_BYTES"
#: ``true``: on SIGTERM, move what the SDK holds into the spool and deliver it (within
#: SHUTDOWN_TIMEOUT) before the signal's previous handler runs.
OTEL_EXPORTER_LUNA_HANDLE_SIGTERM = "OTEL_EXPORTER_LUNA_HANDLE_SIGTERM"
#: Path of a TOML file whose ``[monitoring]`` section holds settings (environment wins).
OTEL_EXPORTER_LUNA_CONFIG = "OTEL_EXPORTER_LUNA_CONFIG"

_TIB = 2**40
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


def _number(
    kind: type[int] | type[float], low: float, high: float, unit: str = ""
) -> tuple[Callable[[Any], Any], str]:
    """A parser of ``kind`` numbers from ``low`` to ``high``, and its ``accepts`` text."""

    def show(number: float) -> str:
        return str(int(number)) if kind is int else f"{number:g}"

    def parse(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        number = kind(value)
        if not low <= number <= high:  # NaN fails too
            raise ValueError("out of range")
        return number

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


@dataclass(frozen=True)
class _Spec:
    env: str
    toml: tuple[str, ...]
    parse: Callable[[Any], Any]
    accepts: str
    secret: bool = False
    shown_default: str | None = None  # for defaults that depend on the machine
    show: Callable[[Any], str] = lambda value: redact(str(value))  # a bad value in a message


@dataclass(frozen=True)
class Settings:
    """The exporter's settings. Build with :meth:`load`; fields are documented in
    ``docs/configuration.md``."""

    endpoint: str = "http://127.0.0.1:8086"
    api_version: str = "auto"
    database: str = "luna_monitoring"
    retention_policy: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    org: str | None = None
    bucket: str = "luna_monitoring"
    token: str | None = field(default=None, repr=False)
    flush_interval: float = 1.0
    batch_size: int = 5000
    timeout: float = 10.0
    gzip: bool = False
    spool: str = "disk"
    spool_dir: str = field(default_factory=lambda: _default_state_dir("spool"))
    spool_max_bytes: int = 512 * 1024 * 1024
    dead_letter: str = field(default_factory=lambda: _default_state_dir("dead-letter.jsonl"))
    shutdown_timeout: float = 10.0
    sink: str | None = None
    enabled: bool = True
    schema: str = "luna"
    max_in_flight: int = 8
    route_limit: int = 1000
    dead_letter_max_bytes: int = 64 * 1024 * 1024
    handle_sigterm: bool = True
    serve_host: str = "127.0.0.1"
    serve_grpc_port: int = 4317
    serve_http_port: int = 4318
    serve_max_message_bytes: int = 16 * 1024 * 1024
    serve_tls_cert: str | None = None
    serve_tls_key: str | None = None
    serve_token: str | None = field(default=None, repr=False)

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then the TOML file, then the environment, then ``overrides``.

        A :class:`SettingsError` never shows a secret given in any of them."""
        env = os.environ if environ is None else environ
        try:
            return cls._load(env, overrides)
        except SettingsError as error:
            raise error.redacted(_given_secrets(env, overrides)) from None

    @classmethod
    def _load(cls, env: Mapping[str, str], overrides: Mapping[str, Any]) -> Settings:
        values: dict[str, Any] = {}
        config_path = env.get(OTEL_EXPORTER_LUNA_CONFIG)
        if config_path:
            values.update(_from_toml(config_path))
        for name, spec in _SPECS.items():
            raw = env.get(spec.env)
            if raw is not None and raw.strip() != "":
                values[name] = _convert(spec.env, spec, raw)
        for name, value in overrides.items():
            if name not in _SPECS:
                raise SettingsError(name, f"unknown setting; known: {', '.join(_SPECS)}")
            values[name] = None if value is None else _convert(name, _SPECS[name], value)
        return cls(**values).validated()

    def validated(self) -> Settings:
        """Checks that need several settings at once."""
        if self.resolved_api_version == "2" and not self.org:
            raise SettingsError(
                OTEL_EXPORTER_LUNA_ORG, "the 2.x API needs an organization (and usually a token)"
            )
        if bool(self.serve_tls_cert) != bool(self.serve_tls_key):
            raise SettingsError(
                OTEL_EXPORTER_LUNA_SERVE_TLS_CERT,
                "set both the TLS certificate and key, or neither",
            )
        if bool(self.username) != bool(self.password):
            raise SettingsError(
                OTEL_EXPORTER_LUNA_USERNAME, "set both username and password, or neither"
            )
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
        and the base64 of ``user:password`` that basic authentication sends (also without its
        padding and URL-safe). :func:`~otel_luna.redact.redact` masks each also
        percent-encoded or JSON-escaped."""
        return _secrets(self.username, [self.password], [self.token, self.serve_token])

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied and validated."""
        return dataclasses.replace(self, **changes).validated()


def _secrets(username: Any, passwords: Iterable[Any], tokens: Iterable[Any]) -> tuple[str, ...]:
    """Secret values (blank ones left out) and the basic-authentication forms of each password
    with ``username``."""
    passwords = [str(value) for value in passwords if value is not None and str(value).strip()]
    values = [*passwords, *(str(value) for value in tokens if value is not None)]
    for secret in list(values):  # a server may echo a secret base64-encoded on its own
        values.append(b64encode(secret.encode(errors="surrogatepass")).decode().rstrip("="))
    if username:
        for password in passwords:
            values += basic_credentials(str(username), password)
    return tuple(dict.fromkeys(value for value in values if value.strip()))


def _given_secrets(env: Mapping[str, str], overrides: Mapping[str, Any]) -> tuple[str, ...]:
    """Every secret value given to :meth:`Settings.load` — valid or not — in the keyword
    arguments, the environment and the TOML file (read again, quietly)."""
    sources: list[Mapping[str, Any]] = [overrides]
    sources.append({name: env.get(spec.env) for name, spec in _SPECS.items()})
    config_path = env.get(OTEL_EXPORTER_LUNA_CONFIG)
    if config_path:
        try:
            with open(config_path, "rb") as file:
                section = tomllib.load(file).get("monitoring")
        except (OSError, ValueError):
            section = None
        if isinstance(section, dict):
            sources.append(
                {name: section.get(key) for name, spec in _SPECS.items() for key in spec.toml}
            )
    secret = [name for name, spec in _SPECS.items() if spec.secret]
    users = [source.get("username") for source in sources if source.get("username")]
    passwords = [source.get("password") for source in sources]
    tokens = [source.get(name) for source in sources for name in secret if name != "password"]
    found: list[str] = []
    for username in users or [None]:
        found += _secrets(username, passwords, tokens)
    return tuple(dict.fromkeys(found))


def _convert(setting: str, spec: _Spec, raw: Any) -> Any:
    try:
        return spec.parse(raw)
    except (ValueError, TypeError) as error:
        shown = "" if spec.secret else f" {spec.show(raw)!r}:"
        raise SettingsError(setting, f"bad value{shown} {error}; accepts {spec.accepts}") from None


_SPECS: dict[str, _Spec] = {
    "endpoint": _Spec(
        OTEL_EXPORTER_LUNA_ENDPOINT,
        ("endpoint",),
        _endpoint,
        "http(s)://host:port[/path prefix], file:///path or console",
        show=_shown_endpoint,
    ),
    "api_version": _Spec(
        OTEL_EXPORTER_LUNA_API_VERSION, ("version",), _api_version, "1, 2 or auto"
    ),
    "database": _Spec(OTEL_EXPORTER_LUNA_DATABASE, ("database_name",), _text, "a database name"),
    "retention_policy": _Spec(
        OTEL_EXPORTER_LUNA_RETENTION_POLICY, ("retention_policy",), _text, "a retention policy name"
    ),
    "username": _Spec(OTEL_EXPORTER_LUNA_USERNAME, ("user_name",), _text, "a user name"),
    "password": _Spec(OTEL_EXPORTER_LUNA_PASSWORD, ("password",), _text, "a password", True),
    "org": _Spec(OTEL_EXPORTER_LUNA_ORG, ("organization",), _text, "an organization name"),
    "bucket": _Spec(OTEL_EXPORTER_LUNA_BUCKET, ("bucket",), _text, "a bucket name"),
    "token": _Spec(OTEL_EXPORTER_LUNA_TOKEN, ("token",), _text, "an API token", True),
    "flush_interval": _Spec(
        OTEL_EXPORTER_LUNA_FLUSH_INTERVAL, ("flushing_period",), *_number(float, 0.01, 3600)
    ),
    "batch_size": _Spec(
        OTEL_EXPORTER_LUNA_BATCH_SIZE, ("batch_size",), *_number(int, 1, 1_000_000_000)
    ),
    "timeout": _Spec(OTEL_EXPORTER_LUNA_TIMEOUT, ("timeout",), *_number(float, 0.1, 600)),
    "gzip": _Spec(OTEL_EXPORTER_LUNA_GZIP, ("gzip",), _parse_bool, "true or false"),
    "spool": _Spec(OTEL_EXPORTER_LUNA_SPOOL, ("spool",), _spool_kind, "disk or memory"),
    "spool_dir": _Spec(
        OTEL_EXPORTER_LUNA_SPOOL_DIR,
        ("spool_dir",),
        _text,
        "a directory path",
        shown_default="$XDG_STATE_HOME/otel-luna/spool",
    ),
    "spool_max_bytes": _Spec(
        OTEL_EXPORTER_LUNA_SPOOL_MAX_BYTES,
        ("spool_max_bytes",),
        *_number(int, 1, _TIB, "bytes"),
    ),
    "dead_letter": _Spec(
        OTEL_EXPORTER_LUNA_DEAD_LETTER,
        ("dead_letter",),
        _text,
        "a file path",
        shown_default="$XDG_STATE_HOME/otel-luna/dead-letter.jsonl",
    ),
    "shutdown_timeout": _Spec(
        OTEL_EXPORTER_LUNA_SHUTDOWN_TIMEOUT,
        ("shutdown_timeout",),
        *_number(float, 0.1, 3600),
    ),
    "sink": _Spec(
        OTEL_EXPORTER_LUNA_SINK,
        ("sink",),
        _text,
        "the name of an entry point in group otel_luna.sinks",
    ),
    "schema": _Spec(OTEL_EXPORTER_LUNA_SCHEMA, ("schema",), _schema, "luna or watchdog"),
    "max_in_flight": _Spec(
        OTEL_EXPORTER_LUNA_MAX_IN_FLIGHT,
        ("max_in_flight",),
        *_number(int, 1, 1024),
    ),
    "route_limit": _Spec(
        OTEL_EXPORTER_LUNA_ROUTE_LIMIT,
        ("route_limit",),
        *_number(int, 1, 1_000_000, "distinct routes per service"),
    ),
    "dead_letter_max_bytes": _Spec(
        OTEL_EXPORTER_LUNA_DEAD_LETTER_MAX_BYTES,
        ("dead_letter_max_bytes",),
        *_number(int, 1024, _TIB, "bytes"),
    ),
    "handle_sigterm": _Spec(
        OTEL_EXPORTER_LUNA_HANDLE_SIGTERM,
        ("handle_sigterm",),
        _parse_bool,
        "true or false",
    ),
    "serve_host": _Spec(OTEL_EXPORTER_LUNA_SERVE_HOST, ("serve_host",), _text, "an address"),
    "serve_grpc_port": _Spec(
        OTEL_EXPORTER_LUNA_SERVE_GRPC_PORT,
        ("serve_grpc_port",),
        _port,
        "0 (any free port) to 65535",
    ),
    "serve_http_port": _Spec(
        OTEL_EXPORTER_LUNA_SERVE_HTTP_PORT,
        ("serve_http_port",),
        _port,
        "0 (any free port) to 65535",
    ),
    "serve_max_message_bytes": _Spec(
        OTEL_EXPORTER_LUNA_SERVE_MAX_MESSAGE_BYTES,
        ("serve_max_message_bytes",),
        *_number(int, 1, 2**31 - 1, "bytes"),
    ),
    "serve_tls_cert": _Spec(
        OTEL_EXPORTER_LUNA_SERVE_TLS_CERT, ("serve_tls_cert",), _text, "a PEM file path"
    ),
    "serve_tls_key": _Spec(
        OTEL_EXPORTER_LUNA_SERVE_TLS_KEY, ("serve_tls_key",), _text, "a PEM file path"
    ),
    "serve_token": _Spec(
        OTEL_EXPORTER_LUNA_SERVE_TOKEN, ("serve_token",), _text, "a bearer token", True
    ),
    "enabled": _Spec(
        OTEL_EXPORTER_LUNA_ENABLED,
        ("send_data_for_monitoring",),
        _parse_bool,
        "true or false (1 or 0)",
    ),
}

#: ``[monitoring]`` keys that build the endpoint, as in luna-handlers' configuration.
_ENDPOINT_PARTS = ("host", "port", "use_ssl")


def _from_toml(path: str) -> dict[str, Any]:
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
    by_key = {key: name for name, spec in _SPECS.items() for key in spec.toml}
    known = sorted([*by_key, *_ENDPOINT_PARTS])
    values: dict[str, Any] = {}
    for key, raw in section.items():
        if key in _ENDPOINT_PARTS:
            continue
        name = by_key.get(key)
        if name is None:
            raise SettingsError(
                f"[monitoring] {key}", f"unknown key in {path}; known keys: {', '.join(known)}"
            )
        values[name] = _convert(f"[monitoring] {key}", _SPECS[name], raw)
    if "host" in section and "endpoint" not in section:
        scheme = (
            "https"
            if _convert("[monitoring] use_ssl", _SPECS["gzip"], section.get("use_ssl", False))
            else "http"
        )
        port = section.get("port", 8086)
        endpoint = f"{scheme}://{section['host']}:{port}"
        values["endpoint"] = _convert("[monitoring] host", _SPECS["endpoint"], endpoint)
    return values


def describe() -> list[tuple[str, str, str, Any, str]]:
    """(field, environment variable, TOML key, default, accepted values) for every setting."""
    defaults = Settings()
    return [
        (
            name,
            spec.env,
            spec.toml[0],
            None if spec.secret else spec.shown_default or getattr(defaults, name),
            spec.accepts,
        )
        for name, spec in _SPECS.items()
    ]


def env_name(setting: str) -> str:
    """The environment variable of ``setting`` (a field name of :class:`Settings`)."""
    return _SPECS[setting].env
