"""Where settings come from, later ones winning: defaults, the ``[monitoring]`` section of the
TOML file named by ``OTEL_EXPORTER_LUNA_CONFIG`` (keys mirror luna-handlers' own ``monitoring``
section), the ``OTEL_EXPORTER_LUNA_*`` environment variables, then keyword arguments. Each
function here takes the declarations it reads; none knows which settings class they are of.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from otel_luna.redact import credential_forms
from otel_luna.settings._declare import ENV_PREFIX, Setting, SettingsError
from otel_luna.settings._parsers import parse_bool

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: Path of a TOML file whose ``[monitoring]`` section holds settings (environment wins).
OTEL_EXPORTER_LUNA_CONFIG = "OTEL_EXPORTER_LUNA_CONFIG"

#: ``[monitoring]`` keys that build the endpoint, as in luna-handlers' configuration.
ENDPOINT_PARTS = ("host", "port", "use_ssl")
_USE_SSL = Setting("use_ssl", False, parse_bool, "true or false (1 or 0)")


def config_path(env: Mapping[str, str]) -> str:
    """The TOML file ``env`` names, or ``""``."""
    return env.get(OTEL_EXPORTER_LUNA_CONFIG) or ""


def read_section(path: str) -> dict[str, Any]:
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


def toml_endpoint(section: Mapping[str, Any], endpoint: Setting) -> dict[str, Any]:
    """The ``endpoint`` that ``host``, ``port`` and ``use_ssl`` build, unless ``endpoint`` is
    given."""
    if "host" not in section or "endpoint" in section:
        return {}
    use_ssl = _USE_SSL.convert("[monitoring] use_ssl", section.get("use_ssl", False))
    url = f"{'https' if use_ssl else 'http'}://{section['host']}:{section.get('port', 8086)}"
    return {endpoint.name: endpoint.convert("[monitoring] host", url)}


def given(
    declared: Iterable[Setting],
    env: Mapping[str, str],
    section: Mapping[str, Any],
    overrides: Mapping[str, Any],
) -> dict[str, Any]:
    """The values given to ``declared`` settings, parsed; a later source wins."""
    values: dict[str, Any] = {}
    for each in declared:
        if each.toml in section:
            values[each.name] = each.convert(f"[monitoring] {each.toml}", section[each.toml])
        raw = env.get(each.env)
        if raw is not None and raw.strip() != "":
            values[each.name] = each.convert(each.env, raw)
        if each.name in overrides:
            value = overrides[each.name]
            values[each.name] = (
                each.default_value() if value is None else each.convert(each.name, value)
            )
    return values


def unknown(
    declared: Iterable[Setting],
    env: Mapping[str, str],
    section: Mapping[str, Any],
    overrides: Mapping[str, Any],
    others: Iterable[str] = (),
) -> tuple[list[str], list[str], list[str]]:
    """What is given that none of ``declared`` reads: TOML keys, keyword arguments, and
    environment variables named like settings. TOML keys and variables of settings named
    ``<prefix>…`` for a prefix in ``others`` (an add-on's, read from the same sources by its
    own settings class) are let be."""
    declared = list(declared)
    keys = {each.toml for each in declared}.union(ENDPOINT_PARTS)
    names = {each.name for each in declared}
    variables = {each.env for each in declared} | {OTEL_EXPORTER_LUNA_CONFIG}
    other_keys = tuple(others)
    other_variables = tuple(ENV_PREFIX + prefix.upper() for prefix in other_keys)
    return (
        [key for key in section if key not in keys and not key.startswith(other_keys)],
        [name for name in overrides if name not in names],
        [
            variable
            for variable, raw in env.items()
            if variable.startswith(ENV_PREFIX)
            and variable not in variables
            and not (other_variables and variable.startswith(other_variables))
            and raw.strip()
        ],
    )


def quiet_section(env: Mapping[str, str]) -> dict[str, Any]:
    """The TOML file's section, read again for what must work when the settings are bad (the
    secrets to mask, a setting read on its own): empty when there is no file or it cannot be
    read. Never raises."""
    path = config_path(env)
    if not path:
        return {}
    try:
        return read_section(path)
    except SettingsError:
        return {}


def given_secrets(
    declared: Iterable[Setting], env: Mapping[str, str], overrides: Mapping[str, Any]
) -> tuple[str, ...]:
    """Every secret value given to the ``declared`` settings — valid or not — in the keyword
    arguments, the environment and the TOML file (read again, quietly), in every form
    :func:`~otel_luna.redact.credential_forms` gives (the ``password`` also with the
    ``username``)."""
    declared = list(declared)
    sources: list[Mapping[str, Any]] = [overrides]
    sources.append({each.name: env.get(each.env) for each in declared})
    section = quiet_section(env)
    if section:
        sources.append({each.name: section.get(each.toml) for each in declared})
    secret = [each.name for each in declared if each.secret and each.name != "password"]
    users: list[str | None] = [str(src["username"]) for src in sources if src.get("username")]
    passwords = [str(source["password"]) for source in sources if source.get("password")]
    tokens = [str(source[name]) for source in sources for name in secret if source.get(name)]
    found: list[str] = []
    for username in users or [None]:
        found += credential_forms(username, passwords, tokens)
    return tuple(dict.fromkeys(found))


#: The last word of a setting's name that makes it secret, for the settings of an add-on this
#: process does not declare (:func:`shared_secrets`).
SECRET_WORDS = ("token", "password", "secret")


def shared_secrets(prefixes: Iterable[str], env: Mapping[str, str]) -> tuple[str, ...]:
    """The values of settings under ``prefixes`` (an add-on's, as ``serve_``, that this
    process reads from the same environment and TOML file without declaring them) whose name
    ends in a :data:`SECRET_WORDS` word: ``OTEL_EXPORTER_LUNA_SERVE_TOKEN`` is a secret in an
    app's messages too. In every form :func:`~otel_luna.redact.credential_forms` gives."""
    prefixes = tuple(prefixes)
    if not prefixes:
        return ()

    def secret(name: str) -> bool:
        name = name.lower()
        return name.startswith(prefixes) and name.rsplit("_", 1)[-1] in SECRET_WORDS

    values = [
        value
        for key, value in env.items()
        if key.startswith(ENV_PREFIX) and secret(key[len(ENV_PREFIX) :]) and value
    ]
    values += [str(value) for key, value in quiet_section(env).items() if secret(key) and value]
    return tuple(credential_forms(None, [], values)) if values else ()


def given_alone(declared: Setting, environ: Mapping[str, str] | None = None) -> Any:
    """The value given to ``declared``, read on its own: the environment, else the TOML file;
    None if neither sets it (or the file cannot be read). Never raises."""
    env = os.environ if environ is None else environ
    raw: Any = env.get(declared.env)
    if raw is None or not str(raw).strip():
        raw = quiet_section(env).get(declared.toml)
    return raw


def requested(declared: Setting, environ: Mapping[str, str] | None = None) -> bool:
    """Whether the boolean setting ``declared`` is asked for, read on its own (the environment,
    else the TOML file) so that it counts when other settings are bad. A value that is no
    boolean counts as true: whoever set it wanted something."""
    raw = given_alone(declared, environ)
    if raw is None:
        return False
    try:
        return bool(declared.parse(raw))
    except (ValueError, TypeError):
        return True
