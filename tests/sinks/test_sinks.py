"""Sinks: what goes over the wire, how failures are classified, that secrets never leak, and
that a forked child gets connections of its own.

The HTTP peer here is a stub that records requests (a fake, for headers and status codes we
choose, and for InfluxDB 2.x, which cannot be had here); the real servers are exercised in
test_influxdb1_*, test_destination_errors and test_victoria_metrics.
"""

from __future__ import annotations

import gzip
import http.server
import json
import logging
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest

from otel_luna.settings import Settings, SettingsError
from otel_luna.sinks import Failure, Sink, SinkError, load_sink, server_reason
from otel_luna.sinks._console import ConsoleSink
from otel_luna.sinks._file import FileSink
from otel_luna.sinks._influx_v1 import InfluxV1Sink
from otel_luna.sinks._influx_v2 import InfluxV2Sink
from tests.support.httpstub import HttpStub


class Recorder(http.server.BaseHTTPRequestHandler):
    requests: ClassVar[list[dict[str, Any]]] = []
    status = 204
    body = b""

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        Recorder.requests.append(
            {"path": self.path, "headers": dict(self.headers), "body": self.rfile.read(length)}
        )
        self.send_response(Recorder.status)
        self.send_header("Content-Length", str(len(Recorder.body)))
        self.end_headers()
        self.wfile.write(Recorder.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def stub(http_stub: Callable[..., HttpStub]) -> str:
    Recorder.requests, Recorder.status, Recorder.body = [], 204, b""
    return http_stub(Recorder).url


def test_v1_write_request(stub: str) -> None:
    """db, rp and ns precision in the query, basic auth, gzip body."""
    settings = Settings.load(
        {},
        endpoint=stub,
        database="luna db",
        retention_policy="week",
        username="luna",
        password="s3cret",
        gzip=True,
    )
    sink = load_sink(settings)
    assert isinstance(sink, InfluxV1Sink)
    sink.write(b"requests x=1i 1\n")
    sink.close()
    (request,) = Recorder.requests
    parts = urlsplit(request["path"])
    assert parts.path == "/write"
    assert parse_qs(parts.query) == {"db": ["luna db"], "rp": ["week"], "precision": ["ns"]}
    assert request["headers"]["Authorization"] == "Basic bHVuYTpzM2NyZXQ="
    assert request["headers"]["Content-Encoding"] == "gzip"
    assert gzip.decompress(request["body"]) == b"requests x=1i 1\n"


#: (status, body) of real InfluxDB 1.6.7 replies (see tests/sinks/test_destination_errors.py for the
#: real server) and of the classes the brief names, with the failure each must give.
_V1_REPLIES = [
    (400, '{"error":"partial write: field type conflict: ... dropped=1"}', Failure.PER_LINE),
    (400, '{"error":"unable to parse \'garbage\': invalid field format"}', Failure.PER_LINE),
    (400, '{"error":"database is required"}', Failure.BLOCKED),
    (401, '{"error":"authorization failed"}', Failure.BLOCKED),
    (403, '{"error":"\\"bob\\" user is not authorized to write to database"}', Failure.BLOCKED),
    (404, '{"error":"database not found: \\"luna\\""}', Failure.BLOCKED),
    (404, "404 page not found", Failure.BLOCKED),
    (405, "Method Not Allowed", Failure.BLOCKED),
    (411, "Length Required", Failure.BLOCKED),
    (415, "Unsupported Media Type", Failure.BLOCKED),
    (301, "", Failure.BLOCKED),
    (408, "", Failure.RETRY),
    (413, '{"error":"Request Entity Too Large"}', Failure.TOO_LARGE),
    (422, '{"error":"points beyond retention policy dropped=1"}', Failure.PER_LINE),
    (429, "", Failure.RETRY),
    (500, '{"error":"retention policy not found: week"}', Failure.BLOCKED),
    (500, '{"error":"timeout"}', Failure.RETRY),
    (503, "", Failure.RETRY),
]


@pytest.mark.parametrize(("status", "body", "failure"), _V1_REPLIES)
def test_v1_status_classification(stub: str, status: int, body: str, failure: Failure) -> None:
    """Each reply gets its failure class; the server's reason is kept, the password is not."""
    Recorder.status, Recorder.body = status, body.encode()
    sink = InfluxV1Sink(Settings.load({}, endpoint=stub, username="u", password="pw-XYZ"))
    with pytest.raises(SinkError) as caught:
        sink.write(b"m x=1i 1\n")
    assert caught.value.failure is failure
    assert caught.value.retryable is (failure in (Failure.RETRY, Failure.BLOCKED))
    assert caught.value.status == status
    assert f"HTTP {status}" in str(caught.value)
    assert server_reason(body) in str(caught.value)
    assert "pw-XYZ" not in str(caught.value)


class V2Recorder(http.server.BaseHTTPRequestHandler):
    """Answers ``/api/v2/write`` like InfluxDB 2.x: ``{"code", "message"}`` JSON errors."""

    status = 204
    message = ""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps({"code": "error", "message": V2Recorder.message}).encode()
        self.send_response(V2Recorder.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize(
    ("status", "message", "failure"),
    [
        (400, "unable to parse 'garbage': missing fields", Failure.PER_LINE),
        (401, "unauthorized access", Failure.BLOCKED),
        (403, "insufficient permissions for write", Failure.BLOCKED),
        (404, 'bucket "luna" not found', Failure.BLOCKED),
        (413, "request too large", Failure.TOO_LARGE),
        (422, "partial write: points beyond retention policy dropped=1", Failure.PER_LINE),
        (429, "too many requests", Failure.RETRY),
        (503, "unavailable", Failure.RETRY),
    ],
)
def test_v2_status_classification(status: int, message: str, failure: Failure) -> None:
    """The 2.x sink classifies like the 1.x one and keeps the server's message, not the token.

    A fake server stands in for InfluxDB 2.x: none can be had here."""
    V2Recorder.status, V2Recorder.message = status, message
    server = HttpStub(V2Recorder)
    try:
        settings = Settings.load({}, endpoint=server.url, org="o", token="tok-SECRET")
        sink = InfluxV2Sink(settings)
        with pytest.raises(SinkError) as caught:
            sink.write(b"m x=1i 1\n")
        sink.close()
    finally:
        server.stop()
    assert caught.value.failure is failure
    assert caught.value.status == status
    assert message in str(caught.value)
    assert "tok-SECRET" not in str(caught.value)


def test_connection_refused_is_retryable() -> None:
    """A destination that is down gives a RETRY error, quickly."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sink = InfluxV1Sink(Settings.load({}, endpoint=f"http://127.0.0.1:{port}", timeout=2))
    with pytest.raises(SinkError) as caught:
        sink.write(b"m x=1i 1\n")
    assert caught.value.failure is Failure.RETRY


@pytest.mark.slow  # openssl
def test_certificate_error_blocks_the_destination(tmp_path: Path) -> None:
    """A TLS server whose certificate does not verify: BLOCKED (it will not start to verify)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    def tls(server: Any) -> None:
        server.socket = context.wrap_socket(server.socket, server_side=True)

    server = HttpStub(Recorder, setup=tls, scheme="https")
    try:
        endpoint = server.url
        sink = InfluxV1Sink(Settings.load({}, endpoint=endpoint, timeout=5))
        with pytest.raises(SinkError) as caught:
            sink.write(b"m x=1i 1\n")
        sink.close()
    finally:
        server.stop()
    assert caught.value.failure is Failure.BLOCKED
    assert "SSLError" in str(caught.value)


def test_legacy_retryable_flag_maps_to_a_failure() -> None:
    """Third-party sinks' retryable=True/False still work: RETRY and PER_LINE."""
    assert SinkError("x", retryable=True).failure is Failure.RETRY
    assert SinkError("x", retryable=False).failure is Failure.PER_LINE
    assert SinkError("x", failure=Failure.BLOCKED).retryable
    assert not SinkError("x", failure=Failure.TOO_LARGE).retryable
    with pytest.raises(TypeError):
        SinkError("x")


def test_file_sink_appends(tmp_path: Path) -> None:
    """file:// endpoints append bodies to the file, creating its directory."""
    target = tmp_path / "sub" / "out.lp"
    sink = load_sink(Settings.load({}, endpoint=f"file://{target}"))
    assert isinstance(sink, FileSink)
    sink.write(b"a x=1i 1\n")
    sink.write(b"b x=2i 2\n")
    sink.close()
    assert target.read_bytes() == b"a x=1i 1\nb x=2i 2\n"


def test_console_sink_prints(capsys: pytest.CaptureFixture[str]) -> None:
    """console prints the line protocol to standard output."""
    sink = load_sink(Settings.load({}, endpoint="console"))
    assert isinstance(sink, ConsoleSink)
    sink.write(b"a x=1i 1\n")
    assert capsys.readouterr().out == "a x=1i 1\n"


def test_unknown_sink_names_the_setting() -> None:
    """An unknown sink name fails at start-up listing the installed ones."""
    with pytest.raises(SettingsError, match=r"OTEL_EXPORTER_LUNA_SINK.*influxdb-v1"):
        load_sink(Settings.load({}, sink="kafka"))


def test_endpoint_with_a_path_prefix_is_kept_in_the_write_url(stub: str) -> None:
    """Behind a reverse proxy (http://host/influx/): the 1.x sink posts to /influx/write?…,
    the 2.x sink to /influx/api/v2/write?… — the prefix once, the query after it."""
    for settings in (
        Settings.load({}, endpoint=f"{stub}/influx/", database="luna"),
        Settings.load({}, endpoint=f"{stub}/influx/", org="o", bucket="b", token="t"),
    ):
        sink = load_sink(settings)
        sink.write(b"m x=1i 1\n")
        sink.close()
    v1, v2 = (urlsplit(request["path"]) for request in Recorder.requests)
    assert (v1.path, parse_qs(v1.query)) == ("/influx/write", {"db": ["luna"], "precision": ["ns"]})
    assert v2.path == "/influx/api/v2/write"
    assert parse_qs(v2.query) == {"org": ["o"], "bucket": ["b"], "precision": ["ns"]}


def test_built_in_sinks_are_sinks() -> None:
    """Every sink of the package subclasses Sink: its optional parts are methods, not probes."""
    from otel_luna.sinks import Sink
    from otel_luna.sinks._pingcentre import PingCentreSink

    for each in (ConsoleSink, FileSink, InfluxV1Sink, InfluxV2Sink, PingCentreSink):
        assert issubclass(each, Sink), each
    assert PingCentreSink.format == "json"
    assert InfluxV1Sink.format_for(Settings.load({})) == "line-protocol"
    assert FileSink.format_for(Settings.load({}, endpoint="file:///tmp/x.jsonl")) == "json"


def test_a_sink_splits_a_body_by_its_format(tmp_path: Path) -> None:
    """The writer asks the sink how a refused batch splits: line protocol keeps a newline
    escaped in a string field inside its line; JSON lines split at every newline."""
    lp = FileSink(Settings.load({}, endpoint=f"file://{tmp_path}/out.lp"))
    body = b'm,t=a f="x\\\ny" 1\nm,t=b f=2i 2\n'
    assert lp.split_body(body) == [b'm,t=a f="x\\\ny" 1\n', b"m,t=b f=2i 2\n"]
    pings = FileSink(Settings.load({}, endpoint=f"file://{tmp_path}/out.jsonl"))
    assert pings.split_body(b'{"a":1}\n{"b":2}\n') == [b'{"a":1}\n', b'{"b":2}\n']
    lp.close()
    pings.close()


class _PlainSink:
    """A third-party sink that does not subclass Sink."""

    format = "json"

    def __init__(self, settings: Settings | None = None) -> None:
        self.bodies: list[bytes] = []
        self.renewed = self.closed = 0

    def write(self, body: bytes) -> None:
        self.bodies.append(body)

    def after_fork_in_child(self) -> None:
        self.renewed += 1

    def close(self) -> None:
        self.closed += 1


def test_a_plain_sink_is_adapted_once() -> None:
    """A sink with only write/close (and optionally format, after_fork_in_child) works: it is
    adapted once, its parts read then, and its own attributes stay reachable."""
    from otel_luna.sinks import Sink
    from otel_luna.sinks._base import as_sink, wire_format

    plain = _PlainSink()
    sink = as_sink(plain)
    assert isinstance(sink, Sink) and as_sink(sink) is sink
    assert sink.format == "json" and wire_format(plain, Settings.load({})) == "json"
    sink.write(b'{"a":1}\n')
    sink.after_fork_in_child()
    sink.close()
    assert (plain.bodies, plain.renewed, plain.closed) == ([b'{"a":1}\n'], 1, 1)
    assert sink.bodies is plain.bodies  # what the plugin keeps, through the adapter
    assert repr(sink) == repr(plain)

    class Minimal:  # no format, no after_fork_in_child
        def write(self, body: bytes) -> None: ...

        def close(self) -> None: ...

    minimal = as_sink(Minimal())
    assert minimal.format == "line-protocol"
    minimal.after_fork_in_child()  # nothing to renew: the default

    class ChosenBySettings(Minimal):
        @staticmethod
        def format_for(settings: Settings) -> str:
            return "json" if settings.endpoint.endswith(".jsonl") else "line-protocol"

    settings = Settings.load({}, endpoint="file:///tmp/pings.jsonl")
    assert as_sink(ChosenBySettings(), settings).format == "json"
    assert wire_format(ChosenBySettings, settings) == "json"


def test_a_plain_sink_plugin_is_loaded_adapted(monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry point that builds a plain sink: sink_factory wraps it, the sink it builds is a
    Sink, and its format is known before it is built."""
    from otel_luna.sinks import Sink, _base
    from otel_luna.sinks._base import sink_factory

    class Entry:
        name = "plain"

        @staticmethod
        def load() -> type[_PlainSink]:
            return _PlainSink

    monkeypatch.setattr(_base, "entry_points", lambda **kw: [Entry()])
    settings = Settings.load({})
    factory = sink_factory(settings)
    assert _base.wire_format(factory, settings) == "json"
    sink = factory(settings)
    assert isinstance(sink, Sink) and isinstance(sink.adapted, _PlainSink)  # type: ignore[attr-defined]


class _Forgetful(Sink):
    """A Sink subclass that left out write()."""

    def __init__(self, settings: object) -> None:
        pass


class _Refusing:
    """A plain plugin whose constructor fails (its server is down at start)."""

    def __init__(self, settings: object) -> None:
        raise ConnectionError("connection refused")

    def write(self, body: bytes) -> None:  # pragma: no cover - never built
        pass

    def close(self) -> None:  # pragma: no cover - never built
        pass


class _BadFormat:
    """A plain plugin whose format cannot be read."""

    @property
    def format(self) -> str:
        raise RuntimeError("no format")

    def write(self, body: bytes) -> None:  # pragma: no cover - never built
        pass

    def close(self) -> None:  # pragma: no cover - never built
        pass


def _failing_load() -> object:
    raise ImportError("No module named 'kafka_sink_deps'")


@pytest.mark.parametrize(
    ("load", "why"),
    [
        (lambda: _Forgetful, "TypeError: Can't instantiate abstract class _Forgetful"),
        (lambda: _Refusing, "ConnectionError: connection refused"),
        (lambda: lambda settings: _BadFormat(), "RuntimeError: no format"),
        (_failing_load, "ImportError: No module named 'kafka_sink_deps'"),
    ],
    ids=["abstract", "constructor", "format", "import"],
)
def test_a_plugin_sink_that_cannot_be_built_is_a_bad_setting_not_an_exception(
    load: Any, why: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A plugin that fails while it is found, asked its format or built: an exporter built from
    the environment logs one line naming OTEL_EXPORTER_LUNA_SINK and why, and the app runs
    without it (never an exception into the app)."""
    from otel_luna import LunaSpanExporter
    from otel_luna.sinks import _base

    class Entry:
        name = "plugin"

        @staticmethod
        def load() -> object:
            return load()

    monkeypatch.setattr(_base, "entry_points", lambda **kw: [Entry()])
    monkeypatch.setenv("OTEL_EXPORTER_LUNA_SINK", "plugin")
    with caplog.at_level(logging.ERROR):
        exporter = LunaSpanExporter()
    try:
        assert exporter.settings_error is not None
        assert exporter.settings_error.setting == "OTEL_EXPORTER_LUNA_SINK"
        assert why in str(exporter.settings_error)
        assert [r.getMessage().count("OTEL_EXPORTER_LUNA_SINK") for r in caplog.records] == [1]
    finally:
        exporter.shutdown()


def test_an_object_without_write_and_close_is_no_sink() -> None:
    """A sink handed in code must have write() and close(): a TypeError at once, naming what
    is missing, instead of points spooled for a sink that can never take them."""
    from otel_luna import LunaSpanExporter

    with pytest.raises(TypeError, match="has no write and no close"):
        LunaSpanExporter(Settings.load({}), sink=object())  # type: ignore[arg-type]


def test_an_add_on_secret_is_masked_in_an_apps_messages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """serve's token, set in the environment an app shares, is a secret in the app's messages
    too (the app's Settings do not declare it)."""
    from otel_luna import LunaSpanExporter

    monkeypatch.setenv("OTEL_EXPORTER_LUNA_SERVE_TOKEN", "s3kr1tt0ken")
    monkeypatch.setenv("OTEL_EXPORTER_LUNA_SINK", "s3kr1tt0ken")
    exporter = LunaSpanExporter()
    try:
        assert exporter.settings_error is not None
        assert "s3kr1tt0ken" not in str(exporter.settings_error)
        assert "***" in str(exporter.settings_error)
    finally:
        exporter.shutdown()
