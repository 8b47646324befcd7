"""How a setting is declared: a :class:`Setting` (name, default, parser, what it accepts, doc,
group, environment variable, TOML key, secret or not), a dataclass field made with
:func:`setting`, and :class:`SettingsError`, which names the setting at fault.

The environment variable (``OTEL_EXPORTER_LUNA_<NAME>``) and the ``[monitoring]`` key follow
from the name unless given. A settings class (the core's :class:`~otel_luna.settings.Settings`,
an add-on's subclass of it) declares each field with :func:`setting`; :func:`declarations`
reads them back. A sink declares its own as a tuple of :class:`Setting` in its ``settings``
attribute.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from otel_luna.redact import redact

#: How every setting's environment variable starts.
ENV_PREFIX = "OTEL_EXPORTER_LUNA_"


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
    #: Never shown: not in a message, a ``repr`` or ``describe()``; masked by ``secrets``.
    secret: bool = False
    #: The default as the docs show it, for a default that depends on the machine.
    shown_default: str | None = None
    #: A bad value as an error message shows it.
    show: Callable[[Any], str] = _shown
    #: Makes the default each time one is needed (then ``default`` is unused).
    factory: Callable[[], Any] | None = None

    def __post_init__(self) -> None:
        if self.name:  # the fields of a settings class get their name later: declarations()
            object.__setattr__(self, "env", self.env or ENV_PREFIX + self.name.upper())
            object.__setattr__(self, "toml", self.toml or self.name)

    def default_value(self) -> Any:
        return self.default if self.factory is None else self.factory()

    def convert(self, where: str, raw: Any) -> Any:
        """``raw`` parsed, or a :class:`SettingsError` naming ``where`` (the variable, TOML key
        or argument it came from), what is wrong and what the setting accepts; a secret's
        value is not shown."""
        try:
            return self.parse(raw)
        except (ValueError, TypeError) as error:
            shown = "" if self.secret else f" {self.show(raw)!r}"
            why = str(error)
            if why == f"expected {self.accepts}":  # would say it twice
                raise SettingsError(where, f"bad value{shown}; accepts {self.accepts}") from None
            raise SettingsError(where, f"bad value{shown}: {why}; accepts {self.accepts}") from None


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
    """A field of a settings dataclass declared as a :class:`Setting` named after the field."""
    declared = Setting(
        "", default, parse, accepts, doc, group, toml, env, secret, shown_default, show, factory
    )
    metadata = {_SETTING: declared}
    if factory is not None:
        return field(default_factory=factory, repr=not secret, metadata=metadata)
    return field(default=default, repr=not secret, metadata=metadata)


def declarations(cls: type) -> tuple[Setting, ...]:
    """The settings that the fields of the dataclass ``cls`` declare with :func:`setting`, in
    their order (a subclass's after its base's)."""
    return tuple(
        dataclasses.replace(each.metadata[_SETTING], name=each.name)
        for each in dataclasses.fields(cls)
        if _SETTING in each.metadata
    )
