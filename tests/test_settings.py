"""Settings: defaults, TOML file, environment precedence, clear errors, no leaked secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from otel_luna.settings import Settings, SettingsError, describe


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
    """Every field of Settings has an environment variable and a documented default."""
    names = {row[0] for row in describe()}
    assert names == set(Settings.__dataclass_fields__)
    for _, env, _, _, accepts in describe():
        assert env.startswith("OTEL_EXPORTER_LUNA_") and accepts


def test_configuration_doc_lists_every_setting_and_default() -> None:
    """docs/configuration.md has a row for every setting with its real default and range."""
    doc = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    for _, env, toml, default, accepts in describe():
        shown = "*(none)*" if default is None else f"`{default}`"
        assert f"| `{env}` | `{toml}` | {shown} | {accepts} |" in doc, env


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
    with pytest.raises(SettingsError) as caught:
        Settings.load({variable: value})
    assert caught.value.setting == variable
    (accepts,) = [row[4] for row in describe() if row[1] == variable]
    assert str(caught.value).endswith(f"accepts {accepts}") and " from " in accepts


def test_unwritable_dead_letter_path_fails_at_exporter_start(tmp_path: Path) -> None:
    """An enabled exporter whose dead-letter path cannot be written fails at start-up naming
    OTEL_EXPORTER_LUNA_DEAD_LETTER, before its spool is opened; a disabled one does not."""
    from otel_luna.exporter import LunaSpanExporter

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
