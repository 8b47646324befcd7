"""Settings: defaults, TOML file, environment precedence, clear errors, no leaked secrets."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import re
import sys
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from otel_luna.serve import SERVE, ServeSettings
from otel_luna.settings import Settings, SettingsError, describe, env_name
from otel_luna.settings._settings import DELIVERY, DESTINATION, SPOOL
from otel_luna.sinks import SINK_GROUP, load_sink

DOC = Path(__file__).parent.parent.parent / "docs" / "configuration.md"
_GENERATOR = importlib.util.spec_from_file_location(
    "generate_configuration", DOC.parent / "generate_configuration.py"
)
assert _GENERATOR is not None and _GENERATOR.loader is not None
generate_configuration = importlib.util.module_from_spec(_GENERATOR)
_GENERATOR.loader.exec_module(generate_configuration)


def test_defaults() -> None:
    """With nothing set: InfluxDB 1.x API on 127.0.0.1:8086, flushed every second."""
    settings = Settings.load({})
    assert settings.endpoint == "http://127.0.0.1:8086"
    assert settings.resolved_api_version == "1"
    assert settings.sink_name == "influxdb-v1"
    assert settings.flush_interval == 1.0
    assert settings.token is None and settings.password is None


def test_environment_overrides_toml(tmp_path: Path) -> None:
    """The [monitoring] section is read, and environment variables win over it."""
    config = tmp_path / "luna.toml"
    config.write_text(
        "[monitoring]\n"
        'host = "db.local"\nport = 9999\nuse_ssl = 1\nflushing_period = 5\n'
        'version = 2\norganization = "luna"\nbucket = "b"\ntoken = "t0k"\n'
        "send_data_for_monitoring = 1\n"
    )
    settings = Settings.load(
        {"OTEL_EXPORTER_LUNA_CONFIG": str(config), "OTEL_EXPORTER_LUNA_FLUSH_INTERVAL": "0.5"}
    )
    assert settings.endpoint == "https://db.local:9999"
    assert settings.flush_interval == 0.5
    assert (settings.resolved_api_version, settings.org, settings.bucket) == ("2", "luna", "b")
    assert settings.sink_name == "influxdb-v2"


def test_auto_api_version_follows_token() -> None:
    """auto means the 2.x API when a token is set."""
    env = {"OTEL_EXPORTER_LUNA_TOKEN": "secret", "OTEL_EXPORTER_LUNA_ORG": "luna"}
    assert Settings.load(env).resolved_api_version == "2"


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"OTEL_EXPORTER_LUNA_ENDPOINT": "ftp://x"}, "OTEL_EXPORTER_LUNA_ENDPOINT"),
        ({"OTEL_EXPORTER_LUNA_ENDPOINT": "http://h:99999"}, "OTEL_EXPORTER_LUNA_ENDPOINT"),
        ({"OTEL_EXPORTER_LUNA_API_VERSION": "3"}, "OTEL_EXPORTER_LUNA_API_VERSION"),
        ({"OTEL_EXPORTER_LUNA_FLUSH_INTERVAL": "soon"}, "OTEL_EXPORTER_LUNA_FLUSH_INTERVAL"),
        ({"OTEL_EXPORTER_LUNA_BATCH_SIZE": "0"}, "OTEL_EXPORTER_LUNA_BATCH_SIZE"),
        ({"OTEL_EXPORTER_LUNA_GZIP": "maybe"}, "OTEL_EXPORTER_LUNA_GZIP"),
        ({"OTEL_EXPORTER_LUNA_API_VERSION": "2"}, "OTEL_EXPORTER_LUNA_ORG"),
        ({"OTEL_EXPORTER_LUNA_USERNAME": "u"}, "OTEL_EXPORTER_LUNA_USERNAME"),
        ({"OTEL_EXPORTER_LUNA_CONFIG": "/nonexistent.toml"}, "OTEL_EXPORTER_LUNA_CONFIG"),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], setting: str) -> None:
    """A bad value fails with an error that names the setting and what it accepts."""
    with pytest.raises(SettingsError) as caught:
        Settings.load(env)
    assert caught.value.setting == setting
    assert str(caught.value).startswith(setting)


def test_unknown_toml_key_is_named(tmp_path: Path) -> None:
    """A typo in the [monitoring] section fails naming the key."""
    config = tmp_path / "luna.toml"
    config.write_text("[monitoring]\nflushing_perod = 1\n")
    with pytest.raises(SettingsError, match=r"\[monitoring\] flushing_perod: unknown key"):
        Settings.load({"OTEL_EXPORTER_LUNA_CONFIG": str(config)})


def test_secrets_never_shown() -> None:
    """Tokens and passwords appear neither in repr nor in error messages."""
    settings = Settings.load(
        {
            "OTEL_EXPORTER_LUNA_PASSWORD": "hunter2",
            "OTEL_EXPORTER_LUNA_USERNAME": "u",
            "OTEL_EXPORTER_LUNA_TOKEN": "tok-XYZ",
            "OTEL_EXPORTER_LUNA_API_VERSION": "1",
        }
    )
    assert "hunter2" not in repr(settings) and "tok-XYZ" not in repr(settings)
    with pytest.raises(SettingsError) as caught:
        Settings.load({"OTEL_EXPORTER_LUNA_TOKEN": ""}, token=12.5)
    assert "12.5" not in str(caught.value)


def test_describe_covers_every_setting() -> None:
    """Every field of Settings and ServeSettings (but the sinks' options) and every setting a
    built-in sink declares has an environment variable, what it accepts, a doc line and a
    group; describe() alone lists the core's and the sinks'."""
    rows = describe(Settings, ServeSettings)
    fields = {field.name for field in dataclasses.fields(ServeSettings)} - {"sink_options"}
    assert {row.name for row in rows if not row.group.endswith(" sink")} == fields
    assert ("max_in_flight", "pingcentre sink") in {(row.name, row.group) for row in rows}
    for row in rows:
        assert row.env.startswith("OTEL_EXPORTER_LUNA_") and row.accepts and row.doc, row
    core = [row.group for row in rows[: len(fields)]]
    assert core == sorted(core, key=[DESTINATION, DELIVERY, SPOOL, SERVE].index)
    assert [row for row in describe() if row.group != SERVE] == [
        row for row in rows if row.group != SERVE
    ]


def test_the_core_settings_name_no_serve_setting() -> None:
    """serve's settings are the serve add-on's: the core's Settings has none of them, and
    ServeSettings has every core setting besides its own."""
    core = {field.name for field in dataclasses.fields(Settings)}
    serve = {field.name for field in dataclasses.fields(ServeSettings)}
    assert not any(name.startswith("serve_") for name in core)
    assert core < serve and all(name.startswith("serve_") for name in serve - core)
    assert {row.group for row in describe()}.isdisjoint({SERVE})


def test_settings_import_no_sink() -> None:
    """One way only: sinks import settings; settings find sinks' declarations through their
    entry points, never importing otel_luna.sinks."""
    package = Path(__file__).parent.parent / "otel_luna" / "settings"
    for module in package.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):  # function-level imports too
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            assert not any(name.startswith("otel_luna.sinks") for name in names), module
    assert SINK_GROUP == "otel_luna.sinks"  # settings reads the sinks' entry points itself


def built_in_groups() -> list[str]:
    """The groups docs/configuration.md shows: the core's and those of the sinks otel-luna
    ships (other installed sinks may declare settings too)."""
    ours = {
        f"{entry.name} sink"
        for entry in entry_points(group=SINK_GROUP)
        if entry.value.startswith("otel_luna.")
    }
    rows = generate_configuration.rows()
    sinks = sorted({row.group for row in rows if row.group in ours})
    return [DESTINATION, DELIVERY, SPOOL, SERVE, *sinks]


@pytest.mark.parametrize("group", built_in_groups())
def test_configuration_doc_shows_each_group_as_declared(group: str) -> None:
    """docs/configuration.md has a table per group made from the declarations
    (docs/generate_configuration.py): every setting with its real default, range and doc
    line."""
    table = generate_configuration.markdown_table(group)
    rows = generate_configuration.rows()
    assert table.count("\n| `OTEL_EXPORTER_LUNA_") == sum(r.group == group for r in rows)
    found = re.search(
        rf'<!-- markdown_table\("{group}"\) -->\n(.*?)<!-- end of markdown_table -->',
        DOC.read_text(),
        re.S,
    )
    assert found, f"no table of {group} in {DOC}"
    assert found.group(1) == table, f"run python docs/generate_configuration.py:\n{table}"


def test_configuration_doc_is_as_generated() -> None:
    """docs/generate_configuration.py --check: the document is what the script writes."""
    assert generate_configuration.main(["--check"]) == 0


def test_configuration_doc_has_a_section_per_group() -> None:
    headings = re.findall(r"^### (.+)$", DOC.read_text(), re.M)
    assert headings[:5] == ["Destination", "Delivery", "Spool", "Serve", "`pingcentre` sink"]


def test_env_name_is_derived_from_the_name() -> None:
    assert env_name("dead_letter") == "OTEL_EXPORTER_LUNA_DEAD_LETTER"
    assert env_name("enabled") == "OTEL_EXPORTER_LUNA_ENABLED"  # TOML: send_data_for_monitoring
    with pytest.raises(KeyError):
        env_name("max_in_flight")  # a sink's setting: its Setting has .env


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OTEL_EXPORTER_LUNA_FLUSH_INTERVAL", "1e308"),
        ("OTEL_EXPORTER_LUNA_FLUSH_INTERVAL", "nan"),
        ("OTEL_EXPORTER_LUNA_FLUSH_INTERVAL", "inf"),
        ("OTEL_EXPORTER_LUNA_TIMEOUT", "1e-9"),
        ("OTEL_EXPORTER_LUNA_TIMEOUT", "86400"),
        ("OTEL_EXPORTER_LUNA_SHUTDOWN_TIMEOUT", "1e9"),
        ("OTEL_EXPORTER_LUNA_SHUTDOWN_TIMEOUT", "0"),
        ("OTEL_EXPORTER_LUNA_BATCH_SIZE", "10000000000"),
        ("OTEL_EXPORTER_LUNA_SPOOL_MAX_BYTES", str(2**50)),
        ("OTEL_EXPORTER_LUNA_DEAD_LETTER_MAX_BYTES", "10"),
        ("OTEL_EXPORTER_LUNA_MAX_IN_FLIGHT", "100000"),
        ("OTEL_EXPORTER_LUNA_ROUTE_LIMIT", "0"),
        ("OTEL_EXPORTER_LUNA_SERVE_MAX_MESSAGE_BYTES", str(2**31)),
    ],
)
def test_absurd_values_fail_naming_the_setting_and_its_range(variable: str, value: str) -> None:
    """Values outside a setting's documented range fail at start-up, naming it and the range."""
    loaded = ServeSettings if variable.startswith("OTEL_EXPORTER_LUNA_SERVE_") else Settings
    with pytest.raises(SettingsError) as caught:
        loaded.load({variable: value})
    assert caught.value.setting == variable
    (accepts,) = [row.accepts for row in describe(loaded) if row.env == variable]
    assert str(caught.value).endswith(f"accepts {accepts}") and " from " in accepts


def test_unwritable_dead_letter_path_fails_at_exporter_start(tmp_path: Path) -> None:
    """An enabled exporter whose dead-letter path cannot be written fails at start-up naming
    OTEL_EXPORTER_LUNA_DEAD_LETTER, before its spool is opened; a disabled one does not."""
    from otel_luna._exporter import LunaSpanExporter

    (tmp_path / "file").write_text("")
    options = {
        "dead_letter": str(tmp_path / "file" / "dead.jsonl"),
        "spool_dir": str(tmp_path / "spool"),
    }
    with pytest.raises(SettingsError) as caught:
        LunaSpanExporter(Settings.load({}, **options))
    assert caught.value.setting == "OTEL_EXPORTER_LUNA_DEAD_LETTER"
    assert not (tmp_path / "spool").exists()
    LunaSpanExporter(Settings.load({}, enabled=False, **options)).shutdown()


# --------------------------------------------------------------------------- endpoints


@pytest.mark.parametrize(
    ("endpoint", "shown"),
    [
        ("http://127.0.0.1:18090/?u=admin&p=QS3cr3t", "'http://127.0.0.1:18090/?***'"),
        ("http://127.0.0.1:8086?db=luna&QS3cr3t", "'http://127.0.0.1:8086?***'"),
        ("https://db:8086/influx?token=QS3cr3t", "'https://db:8086/influx?***'"),
        ("http://db:8086/#QS3cr3t", "'http://db:8086/#***'"),
        ("http://db:8086/?", "'http://db:8086/?***'"),
    ],
)
def test_endpoint_with_a_query_or_fragment_is_refused_and_not_shown(
    endpoint: str, shown: str
) -> None:
    """A query string or fragment (InfluxDB 1.x would take ?u=&p= credentials from it) is
    refused naming the setting; what follows ? or # is masked in the message."""
    with pytest.raises(SettingsError) as caught:
        Settings.load({"OTEL_EXPORTER_LUNA_ENDPOINT": endpoint})
    assert caught.value.setting == "OTEL_EXPORTER_LUNA_ENDPOINT"
    assert f"bad value {shown}: no query string or fragment" in str(caught.value)
    assert "QS3cr3t" not in str(caught.value)


@pytest.mark.parametrize(
    ("endpoint", "why"),
    [
        ("http:// bad host", "no spaces"),
        ("http://db :8086", "no spaces"),
        ("http://db:8086/a b", "no spaces"),
        ("http://db:8086/\nx", "control character"),
        ("http://db\t:8086", "control character"),
        ("http://-db-:8086", "not a valid host"),
        ("http://a..b:8086", "not a valid host"),
        ("http://db%20x:8086", "not a valid host"),
        ("http://999.1.1.1:8086", "not a valid host"),
        ("http://[db]:8086", "not a valid URL"),
        ("http://db:0", "port must be a number"),
        ("http://db:99999", "port must be a number"),
        ("http://db:80a", "port must be a number"),
        ("http://:8086", "needs a host"),
    ],
)
def test_endpoint_with_an_invalid_host_is_refused(endpoint: str, why: str) -> None:
    """A host with whitespace, control characters or that is neither a host name nor an IP
    address, and a bad port, fail at start-up naming the setting (they would retry for ever)."""
    with pytest.raises(SettingsError) as caught:
        Settings.load({"OTEL_EXPORTER_LUNA_ENDPOINT": endpoint})
    assert caught.value.setting == "OTEL_EXPORTER_LUNA_ENDPOINT"
    assert why in str(caught.value)


@pytest.mark.parametrize(
    ("endpoint", "why"),
    [
        ("file://luna:QS3cr3t@host/var/luna.lp", "takes no user or password"),
        ("file://QS3cr3t@host/var/luna.lp", "takes no user or password"),
        ("file:///var/luna.lp?QS3cr3t", "%3F and %23"),
        ("file:///var/luna#QS3cr3t.lp", "%3F and %23"),
    ],
)
def test_file_endpoint_with_userinfo_query_or_fragment_is_refused(endpoint: str, why: str) -> None:
    """file:// takes a path only: userinfo (it would become part of the path, password
    included) and ? or # (silently cut off the path) are refused, the secret not shown."""
    with pytest.raises(SettingsError) as caught:
        Settings.load({"OTEL_EXPORTER_LUNA_ENDPOINT": endpoint})
    assert caught.value.setting == "OTEL_EXPORTER_LUNA_ENDPOINT"
    assert why in str(caught.value) and "QS3cr3t" not in str(caught.value)


@pytest.mark.parametrize(
    ("endpoint", "kept"),
    [
        ("http://127.0.0.1:8086", "http://127.0.0.1:8086"),
        ("http://127.0.0.1:8086/influx/", "http://127.0.0.1:8086/influx"),
        (
            "https://proxy.example.com/monitoring/influx",
            "https://proxy.example.com/monitoring/influx",
        ),
        ("http://[::1]:8086", "http://[::1]:8086"),
        ("http://influx_db:8086", "http://influx_db:8086"),
        ("http://localhost.:8086", "http://localhost.:8086"),
        ("file:///var/lib/my luna.lp", "file:///var/lib/my luna.lp"),
        ("file://./relative.lp", "file://./relative.lp"),
        ("console", "console"),
    ],
)
def test_valid_endpoints_are_kept(endpoint: str, kept: str) -> None:
    """Host names, IP addresses, a path prefix (a reverse proxy), file paths with spaces."""
    assert Settings.load({"OTEL_EXPORTER_LUNA_ENDPOINT": endpoint}).endpoint == kept


def test_toml_host_with_a_space_is_refused(tmp_path: Path) -> None:
    """host/port in the [monitoring] section build the endpoint: a bad host is named there."""
    config = tmp_path / "luna.toml"
    config.write_text('[monitoring]\nhost = "db host"\nport = 8086\n')
    with pytest.raises(SettingsError) as caught:
        Settings.load({"OTEL_EXPORTER_LUNA_CONFIG": str(config)})
    assert caught.value.setting == "[monitoring] host"
    assert "no spaces" in str(caught.value)


# --------------------------------------------------------------------------- secrets in errors

SECRET = "SwapS3cr3t"


@pytest.mark.parametrize("source", ["environment", "toml", "overrides"])
@pytest.mark.parametrize(
    ("secret_setting", "bad"),
    [
        ("password", {"flush_interval": SECRET}),
        ("password", {"batch_size": f"{SECRET}-1"}),
        ("password", {"endpoint": f"http://{SECRET} db:8086"}),
        ("password", {"api_version": SECRET}),
        ("token", {"timeout": SECRET}),
        ("token", {"schema": f"x{SECRET}x"}),
        ("serve_token", {"serve_http_port": SECRET}),
    ],
)
def test_settings_errors_never_show_a_configured_secret(
    tmp_path: Path, source: str, secret_setting: str, bad: dict[str, str]
) -> None:
    """A secret given in the environment, the TOML file or as a keyword argument is masked in
    the error about another setting that holds the same text (a value pasted in the wrong
    variable), which still names that setting and what it accepts."""
    loaded = ServeSettings if secret_setting.startswith("serve_") else Settings
    env_names = {row.name: row.env for row in describe(loaded)}
    toml_keys = {row.name: row.toml for row in describe(loaded)}
    secrets = {secret_setting: SECRET, "username": "luna"}
    env: dict[str, str] = {}
    overrides: dict[str, str] = {}
    if source == "environment":
        env = {env_names[name]: value for name, value in {**secrets, **bad}.items()}
    elif source == "toml":
        config = tmp_path / "luna.toml"
        rows = [f'{toml_keys[name]} = "{value}"' for name, value in secrets.items()]
        config.write_text("[monitoring]\n" + "\n".join(rows) + "\n")
        env = {"OTEL_EXPORTER_LUNA_CONFIG": str(config)}
        env.update({env_names[name]: value for name, value in bad.items()})
    else:
        overrides = {**secrets, **bad}
    (name,) = bad
    with pytest.raises(SettingsError) as caught:
        loaded.load(env, **overrides)
    assert caught.value.setting in (env_names[name], name)
    assert SECRET not in str(caught.value)
    assert "accepts" in str(caught.value)


def test_a_secret_is_masked_in_errors_also_percent_encoded() -> None:
    """The password percent-encoded in another setting's value is masked too."""
    with pytest.raises(SettingsError) as caught:
        Settings.load(
            {
                "OTEL_EXPORTER_LUNA_USERNAME": "luna",
                "OTEL_EXPORTER_LUNA_PASSWORD": "S3cr3t-P@ss",
                "OTEL_EXPORTER_LUNA_FLUSH_INTERVAL": "S3cr3t-P%40ss",
            }
        )
    assert caught.value.setting == "OTEL_EXPORTER_LUNA_FLUSH_INTERVAL"
    assert "S3cr3t" not in str(caught.value) and "bad value '***'" in str(caught.value)


# --------------------------------------------------------------------------- direct construction


@pytest.mark.parametrize(
    ("changes", "setting"),
    [
        ({"endpoint": "ftp://x"}, "endpoint"),
        ({"endpoint": "http://admin:pw@db:8086"}, "endpoint"),
        ({"flush_interval": 0}, "flush_interval"),
        ({"schema": "other"}, "schema"),
        ({"endpoint": None}, "endpoint"),
        ({"api_version": "2"}, "OTEL_EXPORTER_LUNA_ORG"),
        ({"username": "luna"}, "OTEL_EXPORTER_LUNA_USERNAME"),
    ],
)
def test_direct_construction_and_replace_check_values_as_load_does(
    changes: dict[str, object], setting: str
) -> None:
    """Settings(...) and replace() refuse what load() refuses, naming the field."""
    with pytest.raises(SettingsError) as caught:
        Settings(**changes)  # type: ignore[arg-type]
    assert caught.value.setting == setting
    with pytest.raises(SettingsError) as caught:
        Settings.load({}).replace(**changes)
    assert caught.value.setting == setting
    assert "pw" not in str(caught.value)


def test_direct_construction_never_shows_a_secret() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings(token="S3cr3tT0k", org="o", timeout="S3cr3tT0k")  # type: ignore[arg-type]
    assert caught.value.setting == "timeout" and "S3cr3tT0k" not in str(caught.value)


def test_direct_construction_normalises_as_load_does() -> None:
    settings = Settings(endpoint="http://db:8086/", timeout=5, gzip="yes")  # type: ignore[arg-type]
    assert settings == Settings.load({}, endpoint="http://db:8086", timeout=5.0, gzip=True)
    assert isinstance(settings.timeout, float) and settings.gzip is True
    assert settings.replace(timeout="7").timeout == 7.0


# --------------------------------------------------------------------------- sinks' own settings

FAKE_SINK = """
from otel_luna.settings import Setting, number

DEPTH = Setting("fake_depth", 3, *number(int, 1, 10), doc="how deep")
KEY = Setting("fake_key", None, str, "a key", secret=True, doc="the key", toml="key")


class FakeSink:
    settings = (DEPTH, KEY)

    def __init__(self, settings):
        self.depth = settings.option(DEPTH)
        self.key = settings.option(KEY)

    def write(self, body):
        pass

    def close(self):
        pass
"""


@pytest.fixture
def fake_sink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An installed third-party sink ``fake`` with settings fake_depth and fake_key (secret,
    TOML key ``key``), and an installed sink ``broken`` that cannot be imported."""
    site = tmp_path / "site"
    info = site / "fake_luna_sink-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-luna-sink\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[{SINK_GROUP}]\nfake = fake_luna_sink:FakeSink\nbroken = no_such_module:Sink\n"
    )
    (site / "fake_luna_sink.py").write_text(FAKE_SINK)
    monkeypatch.syspath_prepend(str(site))
    yield importlib.import_module("fake_luna_sink")
    sys.modules.pop("fake_luna_sink", None)


def test_a_sink_setting_is_read_from_every_source(fake_sink: Any, tmp_path: Path) -> None:
    """A sink's setting comes from its variable, its TOML key or a keyword argument, and
    the sink reads it with Settings.option; not given, it is the declared default."""
    config = tmp_path / "luna.toml"
    config.write_text('[monitoring]\nsink = "fake"\nfake_depth = 4\nkey = "k3y"\n')
    from_toml = Settings.load({"OTEL_EXPORTER_LUNA_CONFIG": str(config)})
    assert (from_toml.option(fake_sink.DEPTH), from_toml.option(fake_sink.KEY)) == (4, "k3y")
    env = {"OTEL_EXPORTER_LUNA_SINK": "fake", "OTEL_EXPORTER_LUNA_FAKE_DEPTH": "5"}
    assert Settings.load(env).option(fake_sink.DEPTH) == 5
    assert Settings.load(env, fake_depth=6).option(fake_sink.DEPTH) == 6
    assert Settings.load({}, sink="fake").option(fake_sink.DEPTH) == 3
    sink = load_sink(Settings.load(env, fake_key="k"))
    assert (sink.depth, sink.key) == (5, "k")
    assert Settings.load(env).replace(fake_depth=2).option(fake_sink.DEPTH) == 2


@pytest.mark.parametrize(
    ("env", "overrides", "setting"),
    [
        ({"OTEL_EXPORTER_LUNA_FAKE_DEPTH": "11"}, {}, "OTEL_EXPORTER_LUNA_FAKE_DEPTH"),
        ({"OTEL_EXPORTER_LUNA_SINK": "fake"}, {"fake_depth": 0}, "fake_depth"),
        ({}, {"fake_dept": 1}, "fake_dept"),
    ],
)
def test_a_bad_sink_setting_fails_at_load_naming_it(
    fake_sink: Any, env: dict[str, str], overrides: dict[str, object], setting: str
) -> None:
    """A sink's setting is checked at load — also when another sink is chosen — and an
    unknown keyword is still refused."""
    with pytest.raises(SettingsError) as caught:
        Settings.load(env, **overrides)
    assert caught.value.setting == setting
    assert "accepts an integer from 1 to 10" in str(caught.value) or "unknown setting" in str(
        caught.value
    )


def test_an_unknown_toml_key_names_the_sinks_keys_too(fake_sink: Any, tmp_path: Path) -> None:
    config = tmp_path / "luna.toml"
    config.write_text("[monitoring]\nfake_dept = 1\n")
    with pytest.raises(SettingsError, match=r"\[monitoring\] fake_dept: unknown key.*fake_depth"):
        Settings.load({"OTEL_EXPORTER_LUNA_CONFIG": str(config)})


def test_a_sink_secret_is_never_shown(fake_sink: Any) -> None:
    """A sink's secret setting is in Settings.secrets, masked in repr and in load errors."""
    settings = Settings.load({}, sink="fake", fake_key="Pl4gS3cr3t")
    assert "Pl4gS3cr3t" in settings.secrets and "Pl4gS3cr3t" not in repr(settings)
    assert "fake_depth" not in repr(settings)  # defaults are not stored
    assert "'fake_key': '***'" in repr(settings)
    env = {"OTEL_EXPORTER_LUNA_FAKE_KEY": "Pl4gS3cr3t", "OTEL_EXPORTER_LUNA_TIMEOUT": "Pl4gS3cr3t"}
    with pytest.raises(SettingsError) as caught:
        Settings.load(env)
    assert caught.value.setting == "OTEL_EXPORTER_LUNA_TIMEOUT"
    assert "Pl4gS3cr3t" not in str(caught.value)


def test_sink_settings_are_part_of_the_value(fake_sink: Any) -> None:
    """Settings stay a hashable value: equal however given (a default given equals none),
    different when a sink's setting differs."""
    plain = Settings.load({}, sink="fake")
    assert plain == Settings.load({}, sink="fake", fake_depth=3)
    assert hash(plain) == hash(Settings.load({"OTEL_EXPORTER_LUNA_FAKE_DEPTH": "3"}, sink="fake"))
    deeper = Settings.load({}, sink="fake", fake_depth=4)
    assert deeper != plain and len({plain, deeper, Settings.load({}, sink="fake")}) == 2


def test_describe_lists_a_sinks_settings_under_it(fake_sink: Any) -> None:
    """describe() shows the settings of every installed sink in group "<name> sink"; a sink
    that cannot be imported declares none and breaks nothing."""
    rows = {row.name: row for row in describe()}
    assert rows["fake_depth"][:6] == (
        "fake_depth",
        "OTEL_EXPORTER_LUNA_FAKE_DEPTH",
        "fake_depth",
        3,
        "an integer from 1 to 10",
        "fake sink",
    )
    assert rows["fake_key"].default is None and rows["fake_key"].toml == "key"
    assert (
        "| `OTEL_EXPORTER_LUNA_FAKE_DEPTH` | `fake_depth` | `3` |"
        in generate_configuration.markdown_table("fake sink")
    )
    assert Settings.load({"OTEL_EXPORTER_LUNA_SINK": "broken"}).sink_name == "broken"


def test_ping_centre_max_in_flight_is_the_sinks_own(tmp_path: Path) -> None:
    """max_in_flight is declared by the Ping Centre sink, still read from its variable and
    checked at load; the sink uses it."""
    from otel_luna.sinks._pingcentre import MAX_IN_FLIGHT, PingCentreSink

    assert "max_in_flight" not in {field.name for field in dataclasses.fields(Settings)}
    env = {"OTEL_EXPORTER_LUNA_SINK": "pingcentre", "OTEL_EXPORTER_LUNA_MAX_IN_FLIGHT": "3"}
    settings = Settings.load(env, endpoint="http://127.0.0.1:9", schema="watchdog")
    assert settings.option(MAX_IN_FLIGHT) == 3
    sink = PingCentreSink(settings)
    assert sink._max_in_flight == 3
    sink.close()
    with pytest.raises(SettingsError) as caught:
        Settings.load({**env, "OTEL_EXPORTER_LUNA_MAX_IN_FLIGHT": "0"})
    assert caught.value.setting == "OTEL_EXPORTER_LUNA_MAX_IN_FLIGHT"


@pytest.mark.parametrize(
    ("given", "kept"),
    [("::1", "::1"), ("[::1]", "::1"), ("[::]", "::"), (" 0.0.0.0 ", "0.0.0.0"), ("host", "host")],
)
def test_listen_addresses_are_kept_without_brackets(given: str, kept: str) -> None:
    """SERVE_HOST and SERVE_HEALTH_HOST take IPv6 with or without brackets, kept without."""
    env = {"OTEL_EXPORTER_LUNA_SERVE_HOST": given, "OTEL_EXPORTER_LUNA_SERVE_HEALTH_HOST": given}
    settings = ServeSettings.load(env)
    assert (settings.serve_host, settings.serve_health_host) == (kept, kept)


@pytest.mark.parametrize("given", ["[]", "[::1", "::1]", "a b", "host/24", "\x1b[2J"])
def test_a_listen_address_that_is_none_names_the_setting(given: str) -> None:
    with pytest.raises(SettingsError) as caught:
        ServeSettings.load({"OTEL_EXPORTER_LUNA_SERVE_HEALTH_HOST": given})
    assert caught.value.setting == "OTEL_EXPORTER_LUNA_SERVE_HEALTH_HOST"


# --------------------------------------------------------------------------- serve's settings


def test_one_toml_file_configures_the_exporter_and_serve(tmp_path: Path) -> None:
    """The core's Settings lets serve's keys be; ServeSettings reads them, and refuses a
    mistyped one naming the key."""
    config = tmp_path / "luna.toml"
    config.write_text('[monitoring]\nflushing_period = 5\nserve_host = "::1"\nserve_workers = 2\n')
    env = {"OTEL_EXPORTER_LUNA_CONFIG": str(config)}
    assert Settings.load(env).flush_interval == 5
    serve = ServeSettings.load(env)
    assert (serve.flush_interval, serve.serve_host, serve.serve_workers) == (5, "::1", 2)
    config.write_text("[monitoring]\nserve_wrokers = 2\n")
    Settings.load(env)
    with pytest.raises(SettingsError, match=r"\[monitoring\] serve_wrokers: unknown key"):
        ServeSettings.load(env)
    with pytest.raises(SettingsError, match="serve_workers: unknown setting"):
        Settings.load({}, serve_workers=2)


def test_serve_tls_needs_both_files_naming_the_certificate() -> None:
    """A TLS certificate without its key (or the reverse) fails when the settings are read,
    naming OTEL_EXPORTER_LUNA_SERVE_TLS_CERT, as a core check would."""
    for given in ({"serve_tls_cert": "c.pem"}, {"serve_tls_key": "k.pem"}):
        with pytest.raises(SettingsError) as caught:
            ServeSettings.load({}, **given)
        assert caught.value.setting == "OTEL_EXPORTER_LUNA_SERVE_TLS_CERT"
    both = ServeSettings.load({}, serve_tls_cert="c.pem", serve_tls_key="k.pem")
    assert (both.serve_tls_cert, both.serve_tls_key) == ("c.pem", "k.pem")
    with pytest.raises(SettingsError, match="USERNAME: set both"):
        ServeSettings.load({}, username="luna")  # the core's checks run too


def test_serve_settings_are_the_core_settings_and_serves_own() -> None:
    """ServeSettings.load reads the core's settings as Settings.load does, from the same
    variables; with several workers, a stream's first point is not its first ever."""
    env = {"OTEL_EXPORTER_LUNA_SPOOL": "memory", "OTEL_EXPORTER_LUNA_SERVE_HTTP_PORT": "0"}
    serve = ServeSettings.load(env)
    assert isinstance(serve, Settings) and serve.spool == Settings.load(env).spool == "memory"
    assert serve.serve_http_port == 0 and serve.sees_whole_streams
    assert not ServeSettings.load({}, serve_workers=2).sees_whole_streams
    assert Settings.load({}).sees_whole_streams
    assert serve.replace(serve_workers=3).serve_workers == 3
    assert ServeSettings.env_name("spool_dir") == env_name("spool_dir")
