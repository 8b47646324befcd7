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
    env_names = {row[0]: row[1] for row in describe()}
    toml_keys = {row[0]: row[2] for row in describe()}
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
        Settings.load(env, **overrides)
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
