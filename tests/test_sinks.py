"""Sinks: what goes over the wire, how failures are classified, and that secrets never leak.

The HTTP peer here is a stub that records requests (a fake, for headers and status codes we
choose); the real servers are exercised in test_influxdb1_* and test_victoria_metrics.
"""

from __future__ import annotations

import gzip
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest

from otel_luna.settings import Settings, SettingsError
from otel_luna.sinks import SinkError, load_sink
from otel_luna.sinks.console import ConsoleSink
from otel_luna.sinks.file import FileSink
from otel_luna.sinks.influx_v1 import InfluxV1Sink


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
def stub() -> Iterator[str]:
    Recorder.requests, Recorder.status, Recorder.body = [], 204, b""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


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


@pytest.mark.parametrize(
    ("status", "retryable"), [(400, False), (404, False), (429, True), (500, True), (503, True)]
)
def test_v1_status_classification(stub: str, status: int, retryable: bool) -> None:
    """408, 429 and 5xx are retryable; other 4xx are not; the server's reason is kept."""
    Recorder.status, Recorder.body = status, b'{"error":"partial write: field type conflict"}'
    sink = InfluxV1Sink(Settings.load({}, endpoint=stub, username="u", password="pw-XYZ"))
    with pytest.raises(SinkError) as caught:
        sink.write(b"m x=1i 1\n")
    assert caught.value.retryable is retryable
    assert caught.value.status == status
    assert "field type conflict" in str(caught.value)
    assert "pw-XYZ" not in str(caught.value)


def test_connection_refused_is_retryable() -> None:
    """A destination that is down gives a retryable error, quickly."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sink = InfluxV1Sink(Settings.load({}, endpoint=f"http://127.0.0.1:{port}", timeout=2))
    with pytest.raises(SinkError) as caught:
        sink.write(b"m x=1i 1\n")
    assert caught.value.retryable


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
