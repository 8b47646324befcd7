"""Secrets never leave the process: not in error messages, log lines, dead letters or
``otel-luna status``, also when a server echoes the ``Authorization`` header back.

The echoing server is a fake (no real InfluxDB echoes credentials); it answers both the 1.x
and the 2.x write paths.
"""

from __future__ import annotations

import base64
import http.server
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest

from otel_luna._cli import main
from otel_luna.delivery._disk_spool import DiskSpool
from otel_luna.delivery._writer import BatchWriter, DeadLetters
from otel_luna.redact import redact
from otel_luna.serve import ServeSettings
from otel_luna.settings import Settings, SettingsError
from otel_luna.sinks import SinkError
from otel_luna.sinks._influx_v1 import InfluxV1Sink
from otel_luna.sinks._influx_v2 import InfluxV2Sink
from otel_luna.testing import InMemorySink
from tests.support.httpstub import HttpStub

PASSWORD = "s3cr3t-PASS-42"
TOKEN = "tok-9f8e7d6c5b4a"
BASIC = base64.b64encode(f"luna:{PASSWORD}".encode()).decode()


class Echo(http.server.BaseHTTPRequestHandler):
    """Answers ``status`` with a body that repeats the request's headers and query string."""

    status: ClassVar[int] = 400

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        authorization = self.headers.get("Authorization", "")
        body = json.dumps(
            {
                "error": f"unable to parse: request {self.path} with "
                f"Authorization: {authorization}; raw {authorization.split()[-1]}; "
                f"headers {dict(self.headers)}"
            }
        ).encode()
        self.send_response(Echo.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def echo(http_stub: Callable[..., HttpStub]) -> str:
    Echo.status = 400
    return http_stub(Echo).url


def assert_clean(text: str) -> None:
    for secret in (PASSWORD, TOKEN, BASIC):
        assert secret not in text


def status_output(spool: Path, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(["status", str(spool)]) == 0
    assert main(["status", str(spool), "--json"]) == 0
    return capsys.readouterr().out


def echo_writer(settings: Settings, tmp_path: Path, letters: Path) -> BatchWriter:
    """A writer to the 1.x sink of ``settings`` with a disk spool under ``tmp_path/spool`` (what
    ``otel-luna status`` reads) and dead letters in ``letters``, all given the secrets."""
    return BatchWriter(
        InfluxV1Sink(settings),
        DiskSpool(tmp_path / "spool" / "dest", 10**8),
        flush_interval=3600,
        batch_size=100,
        dead_letters=DeadLetters(str(letters), secrets=settings.secrets),
        secrets=settings.secrets,
    )


@pytest.mark.parametrize("status", [400, 401])
def test_echoed_credentials_are_redacted_everywhere(
    echo: str,
    tmp_path: Path,
    status: int,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A server echoing the Authorization header (400: a dead letter; 401: a blocked
    destination): the password and its base64 appear in no error, log line, dead letter or
    status output, while the reason is still there."""
    Echo.status = status
    settings = Settings.load({}, endpoint=echo, username="luna", password=PASSWORD)
    letters = tmp_path / "dead.jsonl"
    writer = echo_writer(settings, tmp_path, letters)
    try:
        with caplog.at_level(logging.DEBUG):
            writer.submit(["m x=1i"])
            writer.force_flush(0.5)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not (
                letters.exists() if status == 400 else writer.blocked
            ):
                time.sleep(0.01)
        output = status_output(tmp_path / "spool", capsys)
    finally:
        writer.shutdown(0.1)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "unable to parse" in logged
    assert_clean(logged)
    assert_clean(output)
    if status == 400:
        (letter,) = [json.loads(row) for row in letters.read_text().splitlines()]
        assert "unable to parse" in letter["reason"] and "Authorization" in letter["reason"]
        assert_clean(letter["reason"])
    else:
        assert "destination BLOCKED" in output and "unable to parse" in output
        assert not letters.exists()


def test_v2_token_echo_is_redacted(echo: str) -> None:
    """The 2.x sink's error for a reply echoing ``Authorization: Token …`` hides the token."""
    Echo.status = 401
    sink = InfluxV2Sink(Settings.load({}, endpoint=echo, org="o", token=TOKEN))
    with pytest.raises(SinkError) as caught:
        sink.write(b"m x=1i 1\n")
    sink.close()
    assert "Authorization" in str(caught.value)
    assert_clean(str(caught.value))


def test_third_party_sink_messages_are_redacted(tmp_path: Path) -> None:
    """A plugin sink whose error shows a URL with credentials: redacted in the dead letter."""

    class Plugin(InMemorySink):
        def write(self, body: bytes) -> None:
            raise SinkError(f"POST http://luna:{PASSWORD}@db:8086/write refused", retryable=False)

    letters = tmp_path / "dead.jsonl"
    writer = BatchWriter(
        Plugin(),
        DiskSpool(tmp_path / "spool", 10**8),
        flush_interval=3600,
        batch_size=100,
        dead_letters=DeadLetters(str(letters)),
    )
    writer.submit(["m x=1i"])
    assert writer.force_flush(10)
    writer.shutdown(1)
    (letter,) = [json.loads(row) for row in letters.read_text().splitlines()]
    assert letter["reason"] == "POST http://***@db:8086/write refused"


def test_endpoint_with_credentials_is_refused_without_them() -> None:
    """OTEL_EXPORTER_LUNA_ENDPOINT=http://admin:PASS@host is refused, the password not shown."""
    with pytest.raises(SettingsError) as caught:
        Settings.load({"OTEL_EXPORTER_LUNA_ENDPOINT": f"http://admin:{PASSWORD}@db:8086"})
    assert caught.value.setting == "OTEL_EXPORTER_LUNA_ENDPOINT"
    assert "http://***@db:8086" in str(caught.value)
    assert_clean(str(caught.value))


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("http://admin:PASS@host:8086/write", "http://***@host:8086/write"),
        ("https://a:p@ss@host/x", "https://***@host/x"),
        ('{"Authorization":"Basic YWRtaW46UEFTUw=="}', '{"Authorization":"***"}'),
        ("authorization: Bearer abc.def-ghi", "authorization: ***"),
        ("{'Authorization': 'Token xyz'}", "{'Authorization': '***'}"),
        ("sent Token abc123 and Bearer def456", "sent Token *** and Bearer ***"),
        ("/write?db=x&u=admin&p=PASS&precision=ns", "/write?db=x&u=admin&p=***&precision=ns"),
        ("configured hunter2 here", "configured *** here"),
        ("database not found: token required", "database not found: token required"),
    ],
)
def test_redact(text: str, shown: str) -> None:
    """URL userinfo, Authorization echoes, scheme credentials, query passwords and configured
    secrets are masked; ordinary text is left alone."""
    assert redact(text, ["hunter2"]) == shown


# --------------------------------------------------------------------------- encoded echoes

ECHO_PASSWORD = "S3cr3t-P@ss"
ECHO_TOKEN = "tok/9f+8e@7d=="


class EchoForm(http.server.BaseHTTPRequestHandler):
    """Answers 400 with a plain-text body that quotes ``form`` (an encoded credential), so the
    encoding reaches the error message unchanged (a JSON body would be decoded first)."""

    form: ClassVar[str] = ""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = f"unable to parse: login {EchoForm.form} refused".encode()
        self.send_response(400)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def echo_form(http_stub: Callable[..., HttpStub]) -> str:
    return http_stub(EchoForm).url


_PAIR = f"luna:{ECHO_PASSWORD}".encode()
PASSWORD_FORMS = {
    "base64 without padding": base64.b64encode(_PAIR).decode().rstrip("="),
    "base64 url-safe": base64.urlsafe_b64encode(_PAIR).decode(),
    "percent-encoded": "S3cr3t-P%40ss",
    "percent-encoded, lower-case hex, every symbol": "S3cr3t%2dP%40ss",
    "JSON \\u0040": "S3cr3t-P\\u0040ss",
    "JSON, every symbol": "S3cr3t\\u002DP\\u0040ss",
    "HTML reference": "S3cr3t-P&#64;ss",
}
TOKEN_FORMS = {
    "percent-encoded": "tok%2F9f%2B8e%407d%3D%3D",
    "form-encoded, lower-case": "tok%2f9f%2b8e%407d%3d%3d",
    "JSON with \\/": "tok\\/9f+8e@7d==",
    "JSON \\u0040": "tok/9f+8e\\u00407d==",
}


@pytest.mark.parametrize("form", PASSWORD_FORMS.values(), ids=PASSWORD_FORMS.keys())
def test_password_echoed_in_any_encoding_is_redacted(
    echo_form: str,
    tmp_path: Path,
    form: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A server quoting the password (or the basic-authentication base64) encoded: masked in
    the dead letter, the log and status, while the server's reason is kept."""
    EchoForm.form = form
    settings = Settings.load({}, endpoint=echo_form, username="luna", password=ECHO_PASSWORD)
    letters = tmp_path / "dead.jsonl"
    writer = echo_writer(settings, tmp_path, letters)
    try:
        with caplog.at_level(logging.DEBUG):
            writer.submit(["m x=1i"])
            assert writer.force_flush(10)
        output = status_output(tmp_path / "spool", capsys)
    finally:
        writer.shutdown(1)
    (letter,) = [json.loads(row) for row in letters.read_text().splitlines()]
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "login *** refused" in letter["reason"]
    for text in (letter["reason"], logged, output):
        assert form not in text and ECHO_PASSWORD not in text and "S3cr3t" not in text


@pytest.mark.parametrize("form", TOKEN_FORMS.values(), ids=TOKEN_FORMS.keys())
def test_token_echoed_in_any_encoding_is_redacted(echo_form: str, form: str) -> None:
    """The 2.x token quoted encoded by the server is masked in the sink's error."""
    EchoForm.form = form
    sink = InfluxV2Sink(Settings.load({}, endpoint=echo_form, org="o", token=ECHO_TOKEN))
    with pytest.raises(SinkError) as caught:
        sink.write(b"m x=1i 1\n")
    sink.close()
    assert "login *** refused" in str(caught.value)
    assert form not in str(caught.value) and "9f" not in str(caught.value)


def test_settings_secrets_hold_the_basic_authentication_forms() -> None:
    """Settings.secrets: password, tokens, each of them in base64, and user:password in base64
    padded, unpadded and URL-safe (what redact cannot derive from the password itself)."""
    settings = ServeSettings.load(
        {}, username="luna", password="p>?", token="t0k", serve_token="s3rve", api_version="1"
    )
    pair = b"luna:p>?"
    assert set(settings.secrets) == {
        "p>?",
        "t0k",
        "s3rve",
        base64.b64encode(pair).decode(),
        base64.b64encode(pair).decode().rstrip("="),
        base64.urlsafe_b64encode(pair).decode(),
        base64.urlsafe_b64encode(pair).decode().rstrip("="),
        # each secret base64-encoded on its own (unpadded: an echo with padding is masked too)
        *(base64.b64encode(value).decode().rstrip("=") for value in (b"p>?", b"t0k", b"s3rve")),
    }


@pytest.mark.parametrize(
    "text",
    [
        "S3cr3t-P@ss",
        "S3cr3t-P%40ss",
        "S3cr3t%2DP%40ss",
        "S3cr3t%2dP%40ss",
        "S3cr3t-P\\u0040ss",
        "S3cr3t\\u002dP\\u0040ss",
        "S3cr3t-P&#64;ss",
        "S3cr3t-P&#x40;ss",
    ],
)
def test_redact_masks_a_secret_with_any_of_its_symbols_encoded(text: str) -> None:
    """Each symbol of a secret may be literal, percent-encoded, JSON- or HTML-escaped, on its
    own: the whole is masked; a different secret is not."""
    assert redact(f"[{text}]", [ECHO_PASSWORD]) == "[***]"
    assert redact(f"[{text}]", ["S3cr3t-P@sz"]) == f"[{text}]"


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://admin:S3c/r3t@127.0.0.1:8086",  # a base64 password holds "/"
        "http://admin:S3c r3t@127.0.0.1:8086",
        "http://admin:S3c?r3t@127.0.0.1:8086",
        "http://admin:S3c#r3t@127.0.0.1:8086",
        "http:admin:S3cr3t@127.0.0.1:8086",
        "//admin:S3cr3t@127.0.0.1:8086",
        "admin:S3cr3t@127.0.0.1:8086",
    ],
)
def test_a_refused_endpoint_never_shows_its_password(endpoint: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.load({"OTEL_EXPORTER_LUNA_ENDPOINT": endpoint})
    assert "S3c" not in str(caught.value) and "r3t" not in str(caught.value)


def test_a_reply_is_redacted_before_it_is_shortened() -> None:
    """A secret straddling the length limit of a message is masked whole, never half shown."""
    error = SinkError("x" * 995 + " S3cr3t-P@ss", retryable=True, secrets=["S3cr3t-P@ss"])
    assert "S3c" not in str(error)


def test_echoes_in_another_case_or_in_base64_are_masked() -> None:
    settings = Settings.load({}, username="luna", password="S3cr3t-P@ss")
    assert redact("S3CR3T-P@SS", settings.secrets) == "***"
    echoed = base64.b64encode(b"S3cr3t-P@ss").decode()
    assert "UzNj" not in redact(f"bad password {echoed}", settings.secrets)


def test_a_dead_letter_path_that_is_a_hard_link_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    link = tmp_path / "dead-letter.jsonl"
    link.hardlink_to(victim)
    with pytest.raises(SettingsError, match="hard link"):
        DeadLetters(str(link))
    assert victim.read_text() == "keep me\n"


@pytest.mark.parametrize("name", ["token", "serve_token"])
@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("tok-admin-0123456789\n", "a line break"),  # a secret file's trailing newline
        ("SECRETHEAD\r\nSECRETTAIL123", "a line break"),
        ("SECRETHEAD\x00SECRETTAIL", "a control character"),
        ("SECRETHEAD\x7fSECRETTAIL", "a control character"),
    ],
)
def test_a_token_no_header_can_carry_is_refused_at_start_without_it(
    name: str, value: str, says: str
) -> None:
    """A token with a line break or another control character would fail every request (the
    report ended in a traceback showing it; serve logged it half-masked on every write): it is
    refused when the settings are read, naming the setting, never showing the value."""
    variable = f"OTEL_EXPORTER_LUNA_{name.upper()}"
    settings = ServeSettings if name.startswith("serve_") else Settings
    for loaded, named in (
        (lambda: settings.load({variable: value}), variable),
        (lambda: settings.load({}, **{name: value}), name),
    ):
        with pytest.raises(SettingsError) as raised:
            loaded()
        message = str(raised.value)
        assert message.startswith(f"{named}: bad value: contains {says}"), message
        assert all(part not in message for part in ("tok-admin", "SECRETHEAD", "SECRETTAIL"))
    good = "tok-0123456789_-.=~+/ Aa"
    assert getattr(settings.load({variable: good, "OTEL_EXPORTER_LUNA_ORG": "o"}), name) == good
