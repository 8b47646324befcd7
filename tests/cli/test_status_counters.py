"""`otel-luna status` shows what mapping and encoding rejected, by reason — not only the
writer's counters: an operator sees hostile input without reading the application's logs.

The exporter writes to a real InfluxDB 1.x through a disk spool; the stats are the ones its
writer thread leaves in the spool directory, read by the command as an operator runs it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from otel_luna import LunaSpanExporter, Settings
from otel_luna._cli import main
from otel_luna.schema._keys import MAX_TAG_VALUE_BYTES
from otel_luna.serve import ServeSettings
from tests.support.servers import InfluxDB1

#: (attributes beyond a good request's, the reason status must show).
HOSTILE: list[tuple[dict[str, Any], str]] = [
    ({"luna.tag.client": "a\nb"}, "attribute_newline_in_tag_value"),
    ({"luna.tag.name": "caf\udce9"}, "attribute_invalid_utf8"),  # surrogateescape'd bytes
    ({"luna.field.route": "/elsewhere"}, "attribute_shadows_schema"),
    ({"luna.field.score_seconds": float("nan")}, "nonfinite_field"),
    ({f"luna.tag.t{n}": "x" * MAX_TAG_VALUE_BYTES for n in range(5)}, "key_too_long"),
    ({"http.route": None, "url.path": "/scan/1"}, ""),  # the one route the limit allows
    ({"http.route": None, "url.path": "/scan/2"}, "route_overflow"),
]


def spans(count: int, extra: dict[str, Any]) -> list[ReadableSpan]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "status"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("status")
    for _ in range(count):
        attributes = {
            "http.request.method": "GET",
            "http.route": "/ok",
            "http.response.status_code": 200,
            "luna.request_id": uuid.uuid4().hex,
            **extra,
        }
        span = tracer.start_span("GET", kind=SpanKind.SERVER)
        span.set_attributes({k: v for k, v in attributes.items() if v is not None})
        span.end()
    provider.shutdown()
    return list(memory.get_finished_spans())


def status_json(spool_dir: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["status", str(spool_dir), "--json"]) == 0
    document: dict[str, Any] = json.loads(capsys.readouterr().out)
    return document


def poll(probe: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return value


def test_status_shows_mapping_and_encoder_rejections_by_reason(
    influxdb1: InfluxDB1,
    influxdb1_database: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Hostile spans (a newline or lone surrogate in a tag, a field shadowing the route tag, a
    NaN field, a series key over 64 KiB, routes past the limit): `otel-luna status --json`
    shows each reason with its count beside the writer's counters, each counted once."""
    spool_dir = tmp_path / "spool"
    exporter = LunaSpanExporter(
        Settings.load(
            {},
            endpoint=influxdb1.url,
            database=influxdb1_database,
            api_version="1",
            flush_interval=0.05,
            route_limit=1,  # /scan/1; a templated route (/ok) does not count
            spool_dir=str(spool_dir),
            dead_letter=str(tmp_path / "dead.jsonl"),
        )
    )
    try:
        sent = [span for extra, _ in HOSTILE for span in spans(2, extra)]
        assert exporter.export(sent).name == "SUCCESS"
        assert exporter.force_flush(30_000)
        expected = exporter.counts
        assert all(expected[reason] == 2 for _, reason in HOSTILE if reason)

        def settled() -> dict[str, Any] | None:
            (entry,) = status_json(spool_dir, capsys)["processes"]
            counts: dict[str, Any] = entry["counts"]
            return counts if counts.get("written") == expected["written"] else None

        counts = poll(settled)
    finally:
        exporter.shutdown()
    for _, reason in HOSTILE:
        if reason:
            assert counts[reason] == 2, reason
    # the pipeline's counters once, the writer's once: as the exporter itself counts them
    for key in ("mapped", "server_spans", "spooled", "written", *(r for _, r in HOSTILE if r)):
        assert counts[key] == expected[key], key
    stored = influxdb1.select("SELECT * FROM requests", influxdb1_database)
    assert len(stored) == expected["written"] == counts["written"]


def test_status_shows_what_serve_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """serve's answers are counted where an operator looks: `otel-luna status` shows the
    requests serve took and refused by why (they were only in the receiver's own counters)."""
    import requests

    from otel_luna.serve._http_server import start_http
    from otel_luna.serve._receiver import Receiver

    spool_dir = tmp_path / "spool"
    settings = ServeSettings.load(
        {},
        endpoint=(tmp_path / "out.lp").as_uri(),
        flush_interval=0.05,
        spool_dir=str(spool_dir),
        dead_letter=str(tmp_path / "dead.jsonl"),
        serve_token="s3cret",
    )
    receiver = Receiver(settings)
    server, port = start_http(receiver, settings, 0)
    try:
        url = f"http://127.0.0.1:{port}/v1/traces"
        headers = {"Content-Type": "application/x-protobuf"}
        assert requests.post(url, data=b"", headers=headers, timeout=30).status_code == 401
        headers["Authorization"] = "Bearer s3cret"
        assert requests.post(url, data=b"\xff", headers=headers, timeout=30).status_code == 400
        assert requests.post(url, data=b"", headers=headers, timeout=30).status_code == 200

        def settled() -> dict[str, Any] | None:
            entries = status_json(spool_dir, capsys)["processes"]
            counts: dict[str, Any] = entries[0]["counts"] if entries else {}
            return counts if counts.get("requests_traces") == 1 else None

        counts = poll(settled)
    finally:
        server.stop(1)
        receiver.shutdown()
    assert counts["requests_refused_unauthenticated"] == 1
    assert counts["requests_refused_malformed"] == 1
