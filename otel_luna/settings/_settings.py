"""The core's settings, declared once and read once into a frozen :class:`Settings`.

Each field of :class:`Settings` is declared with :func:`~otel_luna.settings.setting`: its
default, parser, what it accepts, a one-line doc and its group; its environment variable
(``OTEL_EXPORTER_LUNA_<NAME>``) and ``[monitoring]`` key follow from its name unless given.
Everything else — loading, error messages, the list of secrets, :func:`describe`, the tables of
``docs/configuration.md`` (``docs/generate_configuration.py``) — is derived from those
declarations. A sink declares settings of its own the same way, as
:class:`~otel_luna.settings.Setting` objects in its ``settings`` attribute (found through its
entry point, see :func:`~otel_luna.settings._plugins.sink_settings`); their values are in
:attr:`Settings.sink_options`, read with :meth:`Settings.option`. An add-on declares its own
settings in a subclass of :class:`Settings` (``otel-luna serve``:
``otel_luna.serve.ServeSettings``), loaded from the same sources by the same :meth:`load`.

Sources, later ones winning: defaults, the ``[monitoring]`` section of the TOML file named by
``OTEL_EXPORTER_LUNA_CONFIG``, the ``OTEL_EXPORTER_LUNA_*`` environment variables, then keyword
arguments (:mod:`otel_luna.settings._sources`). A bad value raises
:class:`~otel_luna.settings.SettingsError` naming the setting and what it accepts. Secrets have
no default and never appear in a message or a ``repr``: every secret given (environment, TOML
file, keyword arguments) is masked in every :class:`~otel_luna.settings.SettingsError` that
:meth:`Settings.load` raises, whichever setting the error is about.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple, TypeVar

from otel_luna.redact import MASK, credential_forms
from otel_luna.settings import _sources as sources
from otel_luna.settings._declare import Setting, SettingsError, declarations, setting
from otel_luna.settings._parsers import (
    default_state_dir,
    number,
    parse_api_version,
    parse_bool,
    parse_endpoint,
    parse_header_text,
    parse_schema,
    parse_spool_kind,
    parse_text,
    parse_usages_mode,
    shown_endpoint,
)
from otel_luna.settings._plugins import SINK_GROUP, sink_settings

#: Groups of the core's settings, each a section of docs/configuration.md; a sink's own
#: settings are in group ``"<sink name> sink"``.
DESTINATION = "destination"
DELIVERY = "delivery"
SPOOL = "spool"

_S = TypeVar("_S", bound="Settings")

_TIB = 2**40
_CENTURY = 100 * 365 * 86400  # seconds


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
    normalised) as :meth:`load` checks them. An add-on subclasses it to declare settings of its
    own (more fields made with :func:`~otel_luna.settings.setting`, more checks in
    :meth:`validated`)."""

    #: Prefixes of the ``[monitoring]`` keys (and ``OTEL_EXPORTER_LUNA_<PREFIX>…`` variables)
    #: that add-ons' settings classes read from the same file: this class lets them be, as
    #: one file may configure the apps and ``otel-luna serve`` alike. A subclass that declares
    #: them sets ``()``, so that a mistyped key of its own is refused.
    shared_prefixes: ClassVar[tuple[str, ...]] = ("serve_",)

    # destination
    endpoint: str = setting(
        "http://127.0.0.1:8086",
        parse_endpoint,
        "http(s)://host:port[/path prefix], file:///path or console",
        group=DESTINATION,
        doc="where points go: an InfluxDB URL, a line-protocol file or standard output",
        show=shown_endpoint,
    )
    api_version: str = setting(
        "auto",
        parse_api_version,
        "1, 2 or auto",
        group=DESTINATION,
        toml="version",
        doc="InfluxDB write API: 1 (/write), 2 (/api/v2/write), auto: 2 when a token is set",
    )
    database: str = setting(
        "luna_monitoring",
        parse_text,
        "a database name",
        group=DESTINATION,
        toml="database_name",
        doc="1.x API: database",
    )
    retention_policy: str | None = setting(
        None,
        parse_text,
        "a retention policy name",
        group=DESTINATION,
        doc="1.x API: retention policy (the database's default when unset)",
    )
    username: str | None = setting(
        None,
        parse_text,
        "a user name",
        group=DESTINATION,
        toml="user_name",
        doc="1.x API: user name for basic authentication",
    )
    password: str | None = setting(
        None,
        parse_text,
        "a password",
        group=DESTINATION,
        secret=True,
        doc="1.x API: password for basic authentication (secret)",
    )
    org: str | None = setting(
        None,
        parse_text,
        "an organization name",
        group=DESTINATION,
        toml="organization",
        doc="2.x API: organization",
    )
    bucket: str = setting(
        "luna_monitoring", parse_text, "a bucket name", group=DESTINATION, doc="2.x API: bucket"
    )
    token: str | None = setting(
        None,
        parse_header_text,
        "an API token",
        group=DESTINATION,
        secret=True,
        doc="2.x API: token (secret)",
    )
    sink: str | None = setting(
        None,
        parse_text,
        f"the name of an entry point in group {SINK_GROUP}",
        group=DESTINATION,
        doc="the sink that delivers the points (default: chosen by the endpoint)",
    )
    schema: str = setting(
        "luna",
        parse_schema,
        "luna or watchdog",
        group=DESTINATION,
        doc="which series to write: luna (requests, errors, …) or watchdog (pings)",
    )
    usages: str = setting(
        "request",
        parse_usages_mode,
        "request or interval",
        group=DESTINATION,
        doc="where record_usages counts: request = on the request's span (one usages_statistic "
        "point per request), interval = the luna.usages counter (one point per service and "
        "metrics export interval; needs OTEL_METRICS_EXPORTER=luna); usages outside a "
        "request go to the counter either way",
    )
    enabled: bool = setting(
        True,
        parse_bool,
        "true or false (1 or 0)",
        group=DESTINATION,
        toml="send_data_for_monitoring",
        doc="false turns the exporter into a no-op",
    )
    strict: bool = setting(
        False,
        parse_bool,
        "true or false (1 or 0)",
        group=DESTINATION,
        doc="a bad setting ends the process at start-up (exit status 2) instead of leaving the "
        "app running without the luna exporters",
    )
    gzip: bool = setting(
        False, parse_bool, "true or false", group=DESTINATION, doc="gzip request bodies"
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
        parse_bool,
        "true or false",
        group=DELIVERY,
        doc="on SIGTERM, spool what the SDK holds and deliver it before the previous handler",
    )
    dead_letter: str = setting(
        None,
        parse_text,
        "a file path",
        group=DELIVERY,
        factory=lambda: default_state_dir("dead-letter.jsonl"),
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
        parse_spool_kind,
        "disk or memory",
        group=SPOOL,
        doc="where encoded points wait for the sink: disk (survives restarts) or memory",
    )
    spool_dir: str = setting(
        None,
        parse_text,
        "a directory path",
        group=SPOOL,
        factory=lambda: default_state_dir("spool"),
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
    #: Values of the settings sinks declare; read them with :meth:`option`.
    sink_options: SinkOptions = field(default=SinkOptions())

    def __post_init__(self) -> None:
        try:
            for each in self.declared():
                value = getattr(self, each.name)
                if value is None and each.default is None and each.factory is None:
                    continue  # unset and optional
                object.__setattr__(self, each.name, each.convert(each.name, value))
            self.validated()
        except SettingsError as error:  # a secret pasted into another field is not shown
            raise error.redacted(self.secrets) from None

    @classmethod
    def declared(cls) -> tuple[Setting, ...]:
        """The declarations of this class's fields, in their order."""
        found = _DECLARED.get(cls)
        if found is None:
            found = _DECLARED[cls] = declarations(cls)
        return found

    @classmethod
    def env_name(cls, name: str) -> str:
        """The environment variable of the setting ``name`` (a field of this class)."""
        for each in cls.declared():
            if each.name == name:
                return each.env
        raise KeyError(name)

    @classmethod
    def load(cls: type[_S], environ: Mapping[str, str] | None = None, **overrides: Any) -> _S:
        """Defaults, then the TOML file, then the environment, then ``overrides`` (``None``
        meaning the default): an instance of ``cls``. Settings that sinks declare are read
        the same way.

        A :class:`~otel_luna.settings.SettingsError` never shows a secret given in any of
        them."""
        env = os.environ if environ is None else environ
        try:
            return cls._load(env, overrides)
        except SettingsError as error:
            declared = [*cls.declared(), *_sink_declarations(cls, sink_settings())]
            given = sources.given_secrets(declared, env, overrides)
            shared = sources.shared_secrets(cls.shared_prefixes, env)
            raise error.redacted((*given, *shared)) from None

    @classmethod
    def _load(cls: type[_S], env: Mapping[str, str], overrides: Mapping[str, Any]) -> _S:
        path = sources.config_path(env)
        section = sources.read_section(path) if path else {}
        values = sources.toml_endpoint(section, _BY_NAME["endpoint"])
        values.update(sources.given(cls.declared(), env, section, overrides))
        return cls(**values)._with_sink_options(env, section, overrides, path)

    def _with_sink_options(
        self: _S,
        env: Mapping[str, str],
        section: Mapping[str, Any],
        overrides: Mapping[str, Any],
        path: str = "",
    ) -> _S:
        """This with the values given to the settings its sink declares, and to those of any
        other installed sink when something given is no setting of this one's."""
        cls = type(self)
        own = cls.declared()
        others = cls.shared_prefixes
        # Only the chosen sink is imported, unless a setting of another one is given: the
        # others may be slow to import or broken.
        declared = _sink_declarations(cls, sink_settings(self.sink_name))
        if any(sources.unknown([*own, *declared], env, section, overrides, others)):
            declared = _sink_declarations(cls, [*declared, *sink_settings()])
        every = [*own, *declared]
        # unknown variables are let be
        keys, names, _ = sources.unknown(every, env, section, overrides, others)
        if keys:
            known = sorted([*(each.toml for each in every), *sources.ENDPOINT_PARTS])
            raise SettingsError(
                f"[monitoring] {keys[0]}", f"unknown key in {path}; known keys: {', '.join(known)}"
            )
        if names:
            known = [each.name for each in every]
            raise SettingsError(names[0], f"unknown setting; known: {', '.join(known)}")
        given = sources.given(declared, env, section, overrides)
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
        """Checks that need several settings at once (construction runs them); a subclass
        adds its own after these."""
        if self.resolved_api_version == "2" and not self.org:
            raise SettingsError(
                env_name("org"), "the 2.x API needs an organization (and usually a token)"
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
        """The entry point of the sinks' group (:data:`~otel_luna.settings._plugins.SINK_GROUP`)
        that delivers the points."""
        if self.sink:
            return self.sink
        if self.endpoint == "console":
            return "console"
        if self.endpoint.startswith("file:"):
            return "file"
        return f"influxdb-v{self.resolved_api_version}"

    @property
    def sees_whole_streams(self) -> bool:
        """Whether every point of a client's metric streams comes to this process, so that the
        first point of a stream seen is its first ever: an app's exporter does; a subclass
        says when not (``otel-luna serve`` with several workers, between which a client's
        connection may move)."""
        return True

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values never to show (for :func:`otel_luna.redact.redact`): the password, the tokens
        (a sink's secret settings too) and their base64 forms, see
        :func:`~otel_luna.redact.credential_forms`. :func:`~otel_luna.redact.redact` masks each
        also percent-encoded or JSON-escaped."""
        # The password is the one secret that also goes with the username (basic auth).
        secret = [each for each in self.declared() if each.secret and each.name != "password"]
        tokens = [getattr(self, each.name) for each in secret]
        tokens += [value for each, value in self.sink_options.items if each.secret]
        passwords = [str(self.password)] if self.password is not None else []
        tokens = [str(token) for token in tokens if token is not None]
        found = credential_forms(self.username and str(self.username), passwords, tokens)
        return (*found, *sources.shared_secrets(type(self).shared_prefixes, os.environ))

    def replace(self: _S, **changes: Any) -> _S:
        """A copy with ``changes`` applied, checked as :meth:`load` checks them."""
        names = {each.name for each in self.declared()}
        try:
            core = {name: value for name, value in changes.items() if name in names}
            changed = dataclasses.replace(self, **core)
            others = {name: value for name, value in changes.items() if name not in names}
            return changed._with_sink_options({}, {}, others) if others else changed
        except SettingsError as error:  # a secret among the changes, shown in another's error
            given = {"username": self.username, "password": self.password, **changes}
            declared = [*self.declared(), *_sink_declarations(type(self), sink_settings())]
            secrets = sources.given_secrets(declared, {}, given)
            raise error.redacted((*self.secrets, *secrets)) from None


_DECLARED: dict[type, tuple[Setting, ...]] = {}

#: The declarations of the fields of :class:`Settings`, in their order.
SETTINGS: tuple[Setting, ...] = Settings.declared()
_BY_NAME = {each.name: each for each in SETTINGS}


def strict_requested(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``OTEL_EXPORTER_LUNA_STRICT`` (or ``strict`` in the TOML file) asks for a bad
    setting to be fatal, read on its own so that it counts when other settings are bad. A value
    that is no boolean counts as true: whoever set it wanted something strict."""
    return sources.requested(_BY_NAME["strict"], environ)


def usages_requested(environ: Mapping[str, str] | None = None) -> str:
    """The ``usages`` setting read on its own (the environment, else the TOML file), for
    ``record_usages`` in a process whose exporters did not tell it (an app exporting over
    OTLP): its default for a value that is bad (the exporters, which load all settings, say
    so). Never raises."""
    declared = _BY_NAME["usages"]
    raw = sources.given_alone(declared, environ)
    try:
        return str(declared.parse(raw)) if raw is not None else str(declared.default)
    except (ValueError, TypeError):
        return str(declared.default)


def env_name(name: str) -> str:
    """The environment variable of the setting ``name`` (a field of :class:`Settings`)."""
    return _BY_NAME[name].env


def _sink_declarations(cls: type[Settings], declared: Iterable[Setting]) -> list[Setting]:
    """``declared`` without the names of ``cls``' fields (those stay the class's) and, of
    several with one name, all but the first."""
    names = {each.name for each in cls.declared()}
    unique: dict[str, Setting] = {}
    for each in declared:
        if each.name not in names:
            unique.setdefault(each.name, each)
    return list(unique.values())


class Row(NamedTuple):
    """A setting as :func:`describe` lists it."""

    name: str
    env: str
    toml: str
    default: Any  # None for a secret or a setting without a default
    accepts: str
    group: str
    doc: str


def describe(*classes: type[Settings]) -> list[Row]:
    """Every setting: the fields of ``classes`` (default: :class:`Settings`; a field of several
    once), then those every installed sink declares."""
    declared: dict[str, Setting] = {}
    for cls in classes or (Settings,):
        for each in cls.declared():
            declared.setdefault(each.name, each)
    sinks = _sink_declarations(Settings, sink_settings())
    sinks = [each for each in sinks if each.name not in declared]
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
        for each in [*declared.values(), *sinks]
    ]
