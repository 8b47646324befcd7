"""``otel-luna report watchdog`` against the example service's real events: InfluxDB 1.x (the
luna exporter) and a JSON-ping file (the same spans, sent over OTLP by the same process, written
by a luna exporter with a file sink), checked against numbers computed here from the raw
points."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode

from otel_luna import _cli as cli
from otel_luna._exporter import LunaSpanExporter
from otel_luna.encoding._jsonping import PingEncoder
from otel_luna.encoding._lineprotocol import LineProtocolEncoder
from otel_luna.report import _watchdog as report
from otel_luna.report import run_report
from otel_luna.schema._point import Point
from otel_luna.serve import ServeSettings
from otel_luna.serve import _otlp as otlp
from otel_luna.serve._receiver import Receiver
from otel_luna.settings import Settings
from tests.exporter.test_watchdog_service import SERVICE, submit, wait_for
from tests.support.apprunner import instrumented_app
from tests.support.httpstub import HttpStub
from tests.support.servers import InfluxDB1

ITEMS = 60
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MEASUREMENTS = ["new_item", "poller_heartbeat", "worker_works"]
TIMINGS = ["timing_sent", "timing_received", "timing_submitted"]
QUEUE = ["items_in_queue", "items_in_progress", "items_in_waiting"]
UNSET = StatusCode.UNSET


@dataclass
class Run:
    """One run of the example: where its events went and what was submitted."""

    influx: InfluxDB1
    database: str
    pings_file: Path
    serve_file: Path
    submitted: list[str]
    settings: Settings


def readable_spans(request: ExportTraceServiceRequest) -> list[ReadableSpan]:
    """OTLP spans back as SDK spans, every attribute kept."""
    spans = []
    for resource_spans in request.resource_spans:
        resource = Resource(otlp.attributes(resource_spans.resource.attributes))
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                trace_id = int.from_bytes(span.trace_id, "big")
                parent = int.from_bytes(span.parent_span_id, "big") if span.parent_span_id else 0
                spans.append(
                    ReadableSpan(
                        name=span.name,
                        context=SpanContext(trace_id, int.from_bytes(span.span_id, "big"), False),
                        parent=SpanContext(trace_id, parent, False) if parent else None,
                        resource=resource,
                        attributes=otlp.attributes(span.attributes),
                        kind=SpanKind(max(span.kind - 1, 0)),  # OTLP counts UNSPECIFIED as 0
                        status=Status(
                            StatusCode.ERROR if span.status.code == 2 else StatusCode.UNSET
                        ),
                        start_time=span.start_time_unix_nano,
                        end_time=span.end_time_unix_nano,
                    )
                )
    return spans


class OtlpTee:
    """An OTLP/HTTP traces endpoint on 127.0.0.1 that hands every request to (1) a luna exporter
    with a JSON-ping file sink, as ReadableSpans, and (2) the receiver ``otel-luna serve`` runs
    (:class:`~otel_luna.serve._receiver.Receiver`) writing another file."""

    def __init__(self, exporter: LunaSpanExporter, receiver: Receiver) -> None:
        tee = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request = ExportTraceServiceRequest.FromString(body)
                with tee.lock:
                    exporter.export(readable_spans(request))
                    receiver.accept_traces(request)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.lock = threading.Lock()
        self._stub = HttpStub(Handler)
        self.url = f"{self._stub.url}/v1/traces"

    def stop(self) -> None:
        self._stub.stop()


@pytest.fixture(scope="module")
def run(influxdb1: InfluxDB1, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """The example under opentelemetry-instrument with two trace exporters: ``luna`` (schema
    watchdog → InfluxDB 1.x) and ``otlp`` (→ :class:`OtlpTee`: the same spans to JSON-ping
    files through the luna exporter and through ``otel-luna serve``'s receiver)."""
    root = tmp_path_factory.mktemp("watchdog_report")
    database = influxdb1.fresh_database("watchdog")
    pings_file, serve_file = root / "pings.jsonl", root / "serve.jsonl"

    def file_settings(path: Path, name: str) -> ServeSettings:
        return ServeSettings.load(
            {},
            schema="watchdog",
            endpoint=path.as_uri(),
            flush_interval=0.05,
            spool_dir=str(root / f"{name}-spool"),
            dead_letter=str(root / f"{name}-dead.jsonl"),
        )

    exporter = LunaSpanExporter(file_settings(pings_file, "file"))
    receiver = Receiver(file_settings(serve_file, "serve"))
    tee = OtlpTee(exporter, receiver)
    env = {
        "OTEL_TRACES_EXPORTER": "luna,otlp",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_SERVICE_NAME": "watchdog-proxy",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": tee.url,
        "OTEL_EXPORTER_LUNA_SCHEMA": "watchdog",
        "OTEL_EXPORTER_LUNA_ENDPOINT": influxdb1.url,
        "OTEL_EXPORTER_LUNA_DATABASE": database,
        "OTEL_EXPORTER_LUNA_FLUSH_INTERVAL": "0.05",
        "OTEL_EXPORTER_LUNA_SPOOL_DIR": str(root / "app-spool"),
        "OTEL_EXPORTER_LUNA_DEAD_LETTER": str(root / "app-dead.jsonl"),
    }
    args = ["--port", "0", "--workers", "3", "--heartbeat-interval", "0.1"]
    args += ["--error-rate", "0.2", "--match-rate", "0.3", "--latency-ms", "1,30", "--seed", "5"]
    try:
        with instrumented_app(SERVICE, env, *args) as url:
            submitted = submit(url, ITEMS)

            def landed() -> bool:
                rows = influxdb1.select('SELECT count("worker_id") FROM "worker_works"', database)
                return bool(rows) and rows[0]["count"] == ITEMS

            wait_for("the worker_works points", landed, 60)
        tee.stop()  # the app exited: it exported everything, to both
        exporter.shutdown()
        receiver.shutdown()
        settings = Settings.load({}, endpoint=influxdb1.url, database=database)
        yield Run(influxdb1, database, pings_file, serve_file, submitted, settings)
    finally:
        tee.stop()
        exporter.shutdown()
        receiver.shutdown()
        influxdb1.drop_database(database)


# -- the independent computation ----------------------------------------------------------------


def percentile(values: Sequence[int], percent: int) -> int | None:
    """Nearest rank, by its definition: the smallest value with at least ``percent`` % of the
    values less than or equal to it."""
    for candidate in sorted(values):
        if 100 * sum(1 for value in values if value <= candidate) >= percent * len(values):
            return candidate
    return None


def stats(values: Sequence[int]) -> dict[str, Any]:
    return {
        "count": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "max": max(values) if values else None,
    }


def expected_breakdown(
    new_items: Sequence[Mapping[str, Any]], works: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    timings: dict[str, Any] = {
        name: stats([w[name] for w in works if w.get(name) is not None]) for name in TIMINGS
    }
    complete = [w for w in works if all(w.get(name) is not None for name in TIMINGS)]
    timings["total"] = stats([sum(w[name] for name in TIMINGS) for w in complete])
    positives = sum(1 for w in works if w.get("is_match") == "true")
    negatives = sum(1 for w in works if w.get("is_match") == "false")
    return {
        "new_items": len(new_items),
        "processed": len(works),
        "positives": positives,
        "negatives": negatives,
        "unanswered": len(works) - positives - negatives,
        "errors": sum(1 for w in works if w.get("is_error") == "true"),
        "timings": timings,
    }


def expected_report(influx: InfluxDB1, database: str) -> dict[str, Any]:
    """What the report must say, from ``SELECT *`` of each measurement (tags as strings)."""
    rows = {name: influx.select(f'SELECT * FROM "{name}"', database) for name in MEASUREMENTS}
    every = [row for name in MEASUREMENTS for row in rows[name]]
    consumers = sorted({row["consumer_name"] for row in rows["new_item"] + rows["worker_works"]})
    beats = sorted(rows["poller_heartbeat"], key=lambda row: row["time"])
    queue = {}
    for name in QUEUE:
        values = [row[name] for row in beats]
        queue[name] = {
            "count": len(values),
            "min": min(values),
            "mean": sum(values) / len(values),
            "max": max(values),
            "last": values[-1],
        }
    return {
        "first_ms": min(row["time"] for row in every) // 1_000_000,
        "last_ms": max(row["time"] for row in every) // 1_000_000,
        "pings": {name: len(rows[name]) for name in MEASUREMENTS},
        "overall": expected_breakdown(rows["new_item"], rows["worker_works"]),
        "consumers": {
            consumer: expected_breakdown(
                [row for row in rows["new_item"] if row["consumer_name"] == consumer],
                [row for row in rows["worker_works"] if row["consumer_name"] == consumer],
            )
            for consumer in consumers
        },
        "queue": queue,
        "skipped": {"lines": 0, "first": ""},  # InfluxDB answers points, not lines
    }


# -- the example's events in InfluxDB -----------------------------------------------------------


def test_events_land_one_measurement_per_event_with_the_documented_layout(run: Run) -> None:
    """One measurement per event, tags and field types as documented, every item landed."""
    influx, db = run.influx, run.database

    def names(query: str) -> dict[str, list[list[Any]]]:
        result = influx.query(query, db)["results"][0]
        return {series["name"]: series["values"] for series in result.get("series", [])}

    (measurements,) = names("SHOW MEASUREMENTS").values()
    assert [row[0] for row in measurements] == MEASUREMENTS
    tags = {name: sorted(row[0] for row in rows) for name, rows in names("SHOW TAG KEYS").items()}
    assert tags == {
        "new_item": ["consumer_name"],
        "worker_works": ["consumer_name", "is_error", "is_match"],
    }  # poller_heartbeat has no tags
    fields = {name: dict(map(tuple, rows)) for name, rows in names("SHOW FIELD KEYS").items()}
    assert fields == {
        "new_item": {"type": "string", "watchdog_id": "string"},
        "poller_heartbeat": {
            "items_in_progress": "integer",
            "items_in_queue": "integer",
            "items_in_waiting": "integer",
            "poller_id": "string",
        },
        "worker_works": {
            "photodna_tracking_id": "string",
            "timing_received": "integer",
            "timing_sent": "integer",
            "timing_submitted": "integer",
            "watchdog_id": "string",
            "worker_id": "string",
        },
    }
    values = names('SHOW TAG VALUES FROM "worker_works" WITH KEY IN ("is_match", "is_error")')
    assert sorted(map(tuple, values["worker_works"])) == [
        ("is_error", "false"),
        ("is_error", "true"),
        ("is_match", "false"),
        ("is_match", "true"),
    ]
    new_items = influx.select('SELECT "watchdog_id" FROM "new_item"', db)
    assert sorted(row["watchdog_id"] for row in new_items) == sorted(run.submitted)
    works = influx.select('SELECT "watchdog_id", "is_error" FROM "worker_works"', db)
    assert sorted(row["watchdog_id"] for row in works) == sorted(run.submitted)


def test_report_equals_the_numbers_computed_from_the_raw_points(run: Run) -> None:
    """The report from InfluxDB equals the numbers computed here from SELECT * of each event."""
    events = report.query_influxdb1(run.settings)
    computed = report.report_as_dict(report.summarize(events))
    expected = expected_report(run.influx, run.database)
    assert computed == expected
    overall = expected["overall"]
    assert overall["new_items"] == overall["processed"] == ITEMS
    assert overall["errors"] >= 1 and overall["positives"] >= 1 and overall["negatives"] >= 1
    assert len(expected["consumers"]) == 3 and expected["queue"]["items_in_queue"]["count"] >= 3


def test_the_file_sink_gives_the_same_report_as_influxdb(run: Run) -> None:
    """The same spans written as JSON pings (.jsonl) give the same report as InfluxDB."""
    from_file = report.summarize(report.read_file(run.pings_file))
    from_influx = report.summarize(report.query_influxdb1(run.settings))
    assert from_file == from_influx
    assert from_file.pings["worker_works"] == ITEMS


def test_otel_luna_serve_gives_the_same_report_as_influxdb(run: Run) -> None:
    """The same spans over OTLP through otel-luna serve's receiver give the same report."""
    from_serve = report.summarize(report.read_file(run.serve_file))
    from_influx = report.summarize(report.query_influxdb1(run.settings))
    assert from_serve.pings == from_influx.pings
    assert from_serve == from_influx


def test_cli_prints_the_same_text_for_both_sources(
    run: Run, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command prints the same report lines for InfluxDB and the file (--since 1h)."""
    for name in [key for key in os.environ if key.startswith("OTEL_EXPORTER_LUNA_")]:
        monkeypatch.delenv(name)
    source = ["--endpoint", run.influx.url, "--database", run.database]
    assert cli.main(["report", "watchdog", *source]) == cli.EXIT_OK
    from_influx = capsys.readouterr().out.splitlines()
    assert cli.main(["report", "watchdog", "--file", str(run.pings_file), "--since", "1h"]) == 0
    from_file = capsys.readouterr().out.splitlines()
    assert from_influx[0].startswith(f"watchdog report: InfluxDB {run.influx.url}")
    assert from_file[0].startswith(f"watchdog report: file {run.pings_file}, since ")
    assert from_influx[1:] == from_file[1:]
    expected = report.summarize(report.query_influxdb1(run.settings))
    assert "\n".join(from_influx[1:]) == report.format_report(expected)
    assert f"  total processed (worker_works)  {ITEMS}" in from_influx


def test_cli_subprocess_json_and_png(run: Run, tmp_path: Path) -> None:
    """The command in a subprocess prints the expected numbers as JSON and writes a PNG."""
    png = tmp_path / "charts" / "timings.png"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_EXPORTER_LUNA_")}
    env["OTEL_EXPORTER_LUNA_ENDPOINT"] = run.influx.url
    command = [str(Path(sys.executable).parent / "otel-luna"), "report", "watchdog"]
    command += ["--database", run.database, "--json", "--png", str(png)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document.pop("source") == f"InfluxDB {run.influx.url} database {run.database}"
    assert document.pop("png") == str(png)
    assert document == expected_report(run.influx, run.database)
    data = png.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > len(PNG_SIGNATURE)
    assert not [p for p in png.parent.iterdir() if p != png], "no temporary file left"


def test_cli_reports_an_unreachable_database_as_a_failure(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An InfluxDB that cannot be reached is one line on stderr and exit code 1."""
    from tests.support.servers import free_port

    url = f"http://127.0.0.1:{free_port()}"
    assert cli.main(["report", "watchdog", "--endpoint", url]) == cli.EXIT_FAILED
    assert capsys.readouterr().err.startswith(f"otel-luna report: cannot reach InfluxDB at {url}")


# -- pure parts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "percent", "expected"),
    [
        ([], 50, None),
        ([7], 95, 7),
        ([1, 2, 3, 4], 50, 2),
        ([1, 2, 3, 4, 5], 50, 3),
        (list(range(1, 21)), 95, 19),  # rank ceil(19.0) = 19, not 20
        (list(range(1, 12)), 95, 11),  # rank ceil(10.45) = 11 (InfluxQL's percentile(): 10)
        (list(range(1, 101)), 50, 50),
        ([5, 1, 4, 2, 3], 100, 5),
        ([5, 1, 4, 2, 3], 0, 1),
    ],
)
def test_nearest_rank(values: list[int], percent: int, expected: int | None) -> None:
    """Nearest-rank percentiles: the value at rank ceil(p/100 * n), exact for whole ranks."""
    assert report.nearest_rank(values, percent) == expected
    assert percentile(values, percent) == expected


def test_parse_duration() -> None:
    """Durations as InfluxQL writes them, combinable; anything else is refused."""
    second = 1_000_000_000
    assert report.parse_duration("90s") == 90 * second
    assert report.parse_duration("1h30m") == 5400 * second
    assert report.parse_duration("2d") == 2 * 86400 * second
    assert report.parse_duration("500ms") == second // 2
    for bad in ("", "1", "h", "1x", "-1h", "0s", "1 h"):
        with pytest.raises(ValueError):
            report.parse_duration(bad)


def seed_points() -> list[Point]:
    """The seed document's three examples, plus a failed worker and a second heartbeat."""
    t = 1_534_784_298_646_000_000
    return [
        Point(
            "new_item",
            (("consumer_name", "screenshots"),),
            {"watchdog_id": "9ad08ec4", "type": "image/png"},
            t,
        ),
        Point(
            "poller_heartbeat",
            (),
            {
                "poller_id": "31417de1",
                "items_in_queue": 1504,
                "items_in_progress": 22,
                "items_in_waiting": 38,
            },
            t + 1_000_000,
        ),
        Point(
            "worker_works",
            (("consumer_name", "screenshots"), ("is_error", "false"), ("is_match", "false")),
            {
                "worker_id": "8cdb1e6b",
                "watchdog_id": "9ad08ec4",
                "photodna_tracking_id": "1_photodna_a0e3d02b",
                "timing_sent": 89,
                "timing_received": 161,
                "timing_submitted": 35,
            },
            t + 2_000_000,
        ),
        Point(
            "worker_works",
            (("consumer_name", "send"), ("is_error", "true")),
            {"worker_id": "w2", "watchdog_id": "id2", "timing_sent": 12},
            t + 3_000_000,
        ),
        Point(
            "poller_heartbeat",
            (),
            {
                "poller_id": "31417de1",
                "items_in_queue": 1000,
                "items_in_progress": 20,
                "items_in_waiting": 3,
            },
            t + 4_000_000,
        ),
    ]


def test_line_protocol_and_json_files_give_the_same_report(tmp_path: Path) -> None:
    """The same points as a line-protocol file and as a JSON-ping file read back the same."""
    points = seed_points()
    lp, pings = tmp_path / "w.lp", tmp_path / "w.jsonl"
    lp.write_text("".join(LineProtocolEncoder().encode_point(p) + "\n" for p in points))
    pings.write_text("".join(PingEncoder().encode_point(p) + "\n" for p in points))
    from_lp = report.summarize(report.read_file(lp))
    assert from_lp == report.summarize(report.read_file(pings))
    assert from_lp.overall.timings["total"] == report.Distribution(1, 285, 285, 285)
    assert from_lp.overall.timings["timing_sent"] == report.Distribution(2, 12, 89, 89)
    assert (from_lp.overall.errors, from_lp.overall.negatives, from_lp.overall.unanswered) == (
        1,
        1,
        1,
    )
    assert from_lp.consumers["send"].new_items == 0 and from_lp.consumers["send"].processed == 1
    assert from_lp.queue["items_in_queue"] == report.Gauge(2, 1000, 1252.0, 1504, 1000)
    assert from_lp.first_ms == 1_534_784_298_646 and from_lp.last_ms == 1_534_784_298_650


def test_since_leaves_out_older_events(tmp_path: Path) -> None:
    """--since counts back from now: events older than the window are not read."""
    pings = tmp_path / "w.jsonl"
    pings.write_text("".join(PingEncoder().encode_point(p) + "\n" for p in seed_points()))
    now = 1_534_784_298_646_000_000 + 4_500_000  # 0.5 ms after the last event
    text = run_report(
        report.watchdog_report, file=pings, since_ns=2_000_000, now_ns=now, as_json=True, environ={}
    )
    document = json.loads(text)
    assert document["pings"] == {"new_item": 0, "poller_heartbeat": 1, "worker_works": 1}


def test_a_bad_json_line_names_the_file_and_line(tmp_path: Path) -> None:
    """A line that is not JSON is an error naming the file and the line number."""
    pings = tmp_path / "w.jsonl"
    pings.write_text('{"topic":"watchdog-proxy"}\n{not json\n')
    with pytest.raises(report.ReportError, match=r"w\.jsonl: line 2 is not JSON"):
        report.read_file(pings)


def test_a_line_protocol_file_cut_short_is_read_but_its_last_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file cut short by a crash: the events before it, the skipped line in the header (text
    and JSON), exit 0."""
    points = seed_points()
    whole = "".join(LineProtocolEncoder().encode_point(p) + "\n" for p in points).encode()
    cut = tmp_path / "w.lp"
    cut.write_bytes(whole[:-20])
    assert cli.main(["report", "watchdog", "--file", str(cut)]) == cli.EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].endswith("(1 new_item, 1 poller_heartbeat, 2 worker_works)")
    number = whole.count(b"\n")
    assert (
        lines[2]
        == f"skipped 1 unreadable line (first: line {number}: bad timestamp at character 101)"
    )
    expected = report.summarize(report.events_from_points(points[:-1]))
    assert lines[3:] == report.format_report(expected).splitlines()[1:]
    document = json.loads(run_report(report.watchdog_report, file=cut, as_json=True, environ={}))
    assert document["skipped"] == {
        "lines": 1,
        "first": lines[2][len("skipped 1 unreadable line (first: ") : -1],
    }


def test_an_unwritable_chart_prints_the_report_then_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--png`` that cannot be written: the report all the same, then one line, exit 1; a
    path not ending in .png is a usage error."""
    pings = tmp_path / "w.jsonl"
    pings.write_text("".join(PingEncoder().encode_point(p) + "\n" for p in seed_points()))
    assert cli.main(["report", "watchdog", "--file", str(pings)]) == cli.EXIT_OK
    text = capsys.readouterr().out
    taken = tmp_path / "taken.png"
    taken.mkdir()
    assert cli.main(["report", "watchdog", "--file", str(pings), "--png", str(taken)]) == 1
    assert capsys.readouterr() == (
        text,
        f"otel-luna report: cannot write the chart {taken}: Is a directory\n",
    )
    with pytest.raises(SystemExit) as stopped:
        cli.main(["report", "watchdog", "--file", str(pings), "--png", str(tmp_path)])
    assert stopped.value.code == cli.EXIT_USAGE
    assert "argument --png: the chart is PNG data" in capsys.readouterr().err
