"""The same OTLP/gRPC load through ``otel-luna serve`` and through a real OpenTelemetry Collector
into the same kind of real InfluxDB: CPU per span of every process, spans/s, memory, storage.

    .venv/bin/python benchmarks/beside_collector.py [--rounds 3] [--seconds 10] [--n 512]
        [--clients 2] [--threads 2] [--influxdb 1|2] [--tag-limits] [--json]

Pipelines, each run once per round in an order that rotates from round to round:

* (a) ``serve``: the clients → ``otel-luna serve`` → InfluxDB. The LUNA mapping: one
  ``requests`` point per SERVER span, one ``errors`` point more per failed one; tags of low
  cardinality (service, route, status, ...).
* (b) ``collector``: the clients → a real Collector (``otelcol-luna`` of
  ``tests/support/otelcol.py``, v0.161.0) on the configuration written in
  :func:`_collector_config`: ``otlp`` receiver →
  ``batch`` (5000 spans or 1 s, as serve batches its writes) → ``influxdb`` exporter (in-memory
  sending queue of 100,000 spans that holds the callers back when full, retries, 10 s per
  write as serve) → InfluxDB. The Collector's generic schema: measurement ``spans``, one point
  per span, tags ``trace_id``, ``span_id`` and the ``span_dimensions`` (``service.name``), the
  span's attributes as one JSON string field.
* (c) ``lb+2serve``: the clients → the Collector on ``collector-config/gateway-loadbalancing
  .yaml`` as the file stands (``load_balancing`` exporter, ``routing_key: traceID``, gzip; its
  queues as documented there) → two ``otel-luna serve`` replicas → InfluxDB.

Every run of a pipeline gets processes of its own: a fresh ``influxd`` (InfluxDB 1.6 from
``tests/support/servers.py``, or OSS 2.7 with ``--influxdb 2``; the same binary and settings for the
three), a fresh Collector and fresh ``serve`` processes; so each process's CPU, peak memory and
bytes on disk belong to one pipeline and one round. InfluxDB's settings differ from
``tests/support/servers.py`` in two ways: its cache is written to TSM files (and fully compacted)
1 s after the last write instead of 10 min / 4 h later, so that "bytes on disk" is the data at
rest; and (1.x) the limits of 100,000 values per tag key and 1,000,000 series per database are
lifted, which the Collector's schema meets after 100,000 spans: every later write of it then
fails for good and the exporter drops it (``--tag-limits`` keeps the limits, to see that).

Load: as ``serve_throughput.py`` (whose workload, client processes and ``Serve`` this script
imports): ``--templates`` (8) ``ExportTraceServiceRequest``s of ``--n`` (512) realistic SERVER
spans (aiohttp attributes + ``luna.*``, 10 % failed), ``--clients`` processes x ``--threads``
blocking unary Export calls of the raw bytes, as fast as they are accepted for ``--seconds``
(``RESOURCE_EXHAUSTED`` → wait and resend). One change: every copy of a template gets its own
trace and span ids as well as its own times (``DistinctRequests``), as real traffic has; with
the template ids repeated, the Collector's schema (ids as tags) would reuse 4096 series.

Figures (per pipeline; median, min and max over rounds; ratios taken within a round):

* spans/s end to end: spans in Export calls answered OK ÷ the time from the first call until
  InfluxDB holds a point for every one of them (``requests`` points for serve, ``spans`` points
  for the Collector; polled). A pipeline that loses spans is reported with how many (``lost``;
  the wait ends ``--stall-seconds`` after the count last moved) and its rate uses those landed.
  (c) loses one or two in 800,000: two replicas gave two spans the same series and time (each
  serve keeps its own points apart, not another process's; the workload's start times sit on
  a microsecond grid, which serve spreads as a coarse clock's), and InfluxDB kept one.
* CPU µs per span: user + system CPU (``/proc/<pid>/stat``, every thread) of each process over
  that same time (the Collector, every serve, ``influxd``) ÷ spans landed; ``total`` is their
  sum. Apart: the client processes (the same load for all), ``+flush`` (what influxd spent
  afterwards to write its cache to TSM files and compact them) and ``others`` (the rest of the
  machine meanwhile: the noise of the run).
* peak RSS: ``VmHWM`` of ``/proc/<pid>/status`` at the end of the run, per process (MiB).
* what reached InfluxDB, per span: points, series (cardinality), line-protocol bytes of the
  write requests (the server's own counters), spans per write request; and bytes on disk
  (``du``: allocated blocks) of the database's data and WAL directories once flushed and
  compacted: TSM files, series file + index, WAL.
* ratios: (a) ÷ (b), (c) ÷ (b) and (c) ÷ (a) of those, per round. The target: serve's CPU
  per span ≤ the Collector's on the influxdb-exporter path (the first ratio ≤ 1).

Exit status 0 whatever the figures. Every process started here is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import struct
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _common import CpuSampler, arguments, cpu_seconds, dump, environment, summary, table
from serve_throughput import (
    Requests,
    Serve,
    _run_clients,
    influx_env,
    make_templates,
)

REPO = Path(__file__).resolve().parent.parent
PIPELINES = ("serve", "collector", "lb+2serve")
LABELS = {
    "serve": "(a) serve -> InfluxDB",
    "collector": "(b) Collector influxdb exporter",
    "lb+2serve": "(c) Collector load_balancing -> 2 serve",
}
ROLES = ("otelcol", "serve", "influxd")
POLL_SECONDS = 0.2
FLUSH_TIMEOUT = 120.0
FLUSH_SETTLE = 3.0  # TSM files unchanged this long: compactions are over
MIB = 1024 * 1024
QUERY_TIMEOUT = 600.0
#: A field every point of the measurement has (what is counted as its points)
COUNTED_FIELD = {"requests": "request_id", "errors": "request_id", "spans": "duration_nano"}
# InfluxDB writes its cache to TSM files this long after the last write, and compacts fully
INFLUXDB1_FLUSH = (
    '  cache-snapshot-write-cold-duration = "1s"\n  compact-full-write-cold-duration = "1s"\n'
)
# 1.x refuses new tag values past 100,000 per tag key and new series past 1,000,000 per
# database by default; the Collector's schema (a trace_id and span_id tag value per span) meets
# them after 100,000 spans, and every write after that fails for good (--tag-limits keeps them)
INFLUXDB1_NO_LIMITS = "  max-values-per-tag = 0\n  max-series-per-database = 0\n"
INFLUXDB2_FLUSH = (
    'storage-cache-snapshot-write-cold-duration = "1s"\n'
    'storage-compact-full-write-cold-duration = "1s"\n'
)


# -- the load: distinct ids per copy ---------------------------------------------------------


def _id_places(body: bytes) -> list[tuple[int, int]]:
    """Where each span's trace id and span id are in a serialized request, and the value of
    their first 4 bytes."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    places = []
    message = ExportTraceServiceRequest.FromString(body)
    for resource_spans in message.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                for tag, value in ((b"\x0a\x10", span.trace_id), (b"\x12\x08", span.span_id)):
                    at = body.find(tag + value)
                    assert at >= 0 and body.count(tag + value) == 1, "id not found once"
                    places.append((at + 2, struct.unpack_from(">I", body, at + 2)[0]))
    return places


class DistinctRequests(Requests):
    """``Requests`` whose copy ``c`` of a template also has its own ids: the first 4 bytes of
    each trace id and span id XORed with ``c`` (the other 12 / 4 random bytes kept)."""

    def __init__(self, templates: list[tuple[bytes, list[tuple[int, ...]]]], spans: int) -> None:
        super().__init__(templates, spans)
        self.ids = [_id_places(body) for body, _ in templates]

    def body(self, k: int) -> bytes:
        buffer = bytearray(super().body(k))
        copy = k // len(self.templates)
        for at, first in self.ids[k % len(self.templates)]:
            struct.pack_into(">I", buffer, at, first ^ copy)
        return bytes(buffer)


def _distinct_sender(job: dict[str, Any], results: Any) -> None:
    """``serve_throughput._sender`` (in a client process of its own) with DistinctRequests."""
    import serve_throughput

    serve_throughput.Requests = DistinctRequests  # type: ignore[misc]
    serve_throughput._sender(job, results)


# -- InfluxDB: a fresh server per run --------------------------------------------------------


def _files(path: Path) -> list[tuple[Path, os.stat_result]]:
    """The files under ``path`` and their stat (a file removed meanwhile is left out)."""
    out = []
    for file in path.rglob("*") if path.exists() else ():
        with contextlib.suppress(FileNotFoundError):
            if file.is_file():
                out.append((file, file.stat()))
    return out


def _du(path: Path, suffix: str = "") -> int:
    """Allocated bytes (``du``) of the files under ``path`` whose names end with ``suffix``."""
    return sum(st.st_blocks * 512 for f, st in _files(path) if f.name.endswith(suffix))


class Store:
    """One fresh InfluxDB and the one database (bucket) the pipeline writes to."""

    name = "bench"
    data_dir: Path
    wal_dir: Path
    pid: int
    version: str | None

    def serve_env(self) -> dict[str, str]:
        raise NotImplementedError

    def exporter(self) -> dict[str, Any]:
        """Where the Collector's influxdb exporter writes."""
        raise NotImplementedError

    def requests_points(self) -> int:
        """``requests`` points (one per SERVER span serve took)."""
        raise NotImplementedError

    def points_written(self) -> int:
        """Points the server took so far (its own counter: cheap at any cardinality)."""
        raise NotImplementedError

    def points(self) -> dict[str, int]:
        """Points per measurement: the count of its COUNTED_FIELD (1.x: of another measurement,
        of its most frequent field)."""
        raise NotImplementedError

    def writes(self) -> dict[str, int]:
        """Write requests the server took so far and the bytes of their bodies."""
        raise NotImplementedError

    def series(self) -> int:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def disk(self) -> dict[str, int]:
        """Allocated bytes of the database: TSM files, series file + index, WAL."""
        data = _du(self.data_dir)
        tsm = _du(self.data_dir, ".tsm")
        wal = _du(self.wal_dir)
        return {"tsm": tsm, "series_and_index": data - tsm, "wal": wal, "total": data + wal}

    def flushed(self) -> tuple[bool, Any]:
        """Whether the WAL is empty and no compaction is under way; and a snapshot of the TSM
        files (settled when it stops changing)."""
        files = sorted(
            (str(f.relative_to(self.data_dir)), st.st_size)
            for f, st in _files(self.data_dir)
            if f.suffix == ".tsm" or ".tmp" in f.name
        )
        busy = any(".tmp" in name for name, _ in files)
        wal = sum(st.st_size for f, st in _files(self.wal_dir) if f.suffix == ".wal")
        return wal == 0 and not busy, files


@contextlib.contextmanager
def _influxdb1_config(settings: str) -> Iterator[None]:
    """``tests/support/servers.py``'s InfluxDB 1.x configuration with ``settings`` added to its
    ``[data]`` section (in this process only, while the server starts)."""
    from tests.support import servers

    original = servers.INFLUXDB1_CONFIG
    assert "[data]\n" in original
    servers.INFLUXDB1_CONFIG = original.replace("[data]\n", "[data]\n" + settings)
    try:
        yield
    finally:
        servers.INFLUXDB1_CONFIG = original


class Store1(Store):
    def __init__(self, root: Path, tag_limits: bool = False) -> None:
        from tests.support.servers import start_influxdb1

        settings = INFLUXDB1_FLUSH + ("" if tag_limits else INFLUXDB1_NO_LIMITS)
        with _influxdb1_config(settings):
            self.server = start_influxdb1(root)
        self.server.create_database(self.name)
        self.pid = self.server.pid
        self.version = self.server.version
        self.data_dir = self.server.root / "data" / self.name
        self.wal_dir = self.server.root / "wal" / self.name

    def serve_env(self) -> dict[str, str]:
        return influx_env(self.server.url, self.name)

    def exporter(self) -> dict[str, Any]:
        return {
            "endpoint": self.server.url,
            "v1_compatibility": {"enabled": True, "db": self.name},
        }

    def requests_points(self) -> int:
        rows = self.server.select("SELECT count(execution_time) FROM requests", self.name)
        return int(rows[0]["count"]) if rows else 0

    def _stats(self, name: str) -> list[dict[str, Any]]:
        """``/debug/vars``: the statistics named ``name`` (one per shard, listener, ...)."""
        from tests.support.servers import http_request

        _, _, raw = http_request("GET", f"{self.server.url}/debug/vars")
        return [
            stats
            for stats in json.loads(raw).values()
            if isinstance(stats, dict) and stats.get("name") == name
        ]

    def points_written(self) -> int:
        return sum(
            stats["values"].get("writePointsOk", 0)
            for stats in self._stats("shard")
            if stats.get("tags", {}).get("database") == self.name
        )

    def writes(self) -> dict[str, int]:
        httpd = self._stats("httpd")
        return {
            "requests": sum(stats["values"].get("writeReq", 0) for stats in httpd),
            "bytes": sum(stats["values"].get("writeReqBytes", 0) for stats in httpd),
        }

    def _query(self, q: str) -> dict[str, Any]:
        """``q`` with a long timeout: a count over a million series takes a while."""
        from tests.support.servers import http_request

        body = urllib.parse.urlencode({"q": q, "db": self.name}).encode()
        _, _, raw = http_request(
            "POST",
            f"{self.server.url}/query",
            data=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            timeout=QUERY_TIMEOUT,
        )
        result: dict[str, Any] = json.loads(raw)
        return result

    def points(self) -> dict[str, int]:
        out: dict[str, int] = {}
        names = self._query("SHOW MEASUREMENTS")["results"][0].get("series", [])
        for (measurement,) in names[0]["values"] if names else []:
            field = COUNTED_FIELD.get(measurement)
            if field is None:  # another measurement: its fields' largest count
                q = f'SELECT count(*) FROM "{measurement}"'
            else:
                q = f'SELECT count("{field}") FROM "{measurement}"'
            for statement in self._query(q)["results"]:
                for series in statement.get("series", []):
                    counts = [v for v in series["values"][0][1:] if isinstance(v, int)]
                    out[measurement] = max(counts, default=0)
        return out

    def series(self) -> int:
        result = self._query("SHOW SERIES EXACT CARDINALITY")
        return sum(
            row[0]
            for statement in result["results"]
            for series in statement.get("series", [])
            for row in series["values"]
        )

    def stop(self) -> None:
        self.server.stop()


def _flux_rows(text: str) -> list[dict[str, str]]:
    """The rows of an annotated CSV answer (every table; annotations skipped)."""
    rows: list[dict[str, str]] = []
    header: list[str] | None = None
    for row in csv.reader(io.StringIO(text)):
        if not row or not any(row):
            header = None
        elif row[0].startswith("#"):
            continue
        elif header is None:
            header = row
        else:
            rows.append(dict(zip(header, row, strict=False)))
    return rows


class Store2(Store):
    def __init__(self, root: Path) -> None:
        from tests.support.servers import InfluxDB2

        root.mkdir(parents=True)
        (root / "config.toml").write_text(INFLUXDB2_FLUSH)  # INFLUXD_CONFIG_PATH is root
        self.server = InfluxDB2(root)
        self.bucket_id = self.server.create_bucket(self.name)
        self.pid = self.server.pid
        self.version = self.server.version
        self.data_dir = root / "engine" / "data" / self.bucket_id
        self.wal_dir = root / "engine" / "wal" / self.bucket_id

    def serve_env(self) -> dict[str, str]:
        return {
            "OTEL_EXPORTER_LUNA_ENDPOINT": self.server.url,
            "OTEL_EXPORTER_LUNA_API_VERSION": "2",
            "OTEL_EXPORTER_LUNA_ORG": self.server.org,
            "OTEL_EXPORTER_LUNA_BUCKET": self.name,
            "OTEL_EXPORTER_LUNA_TOKEN": self.server.token,
            "OTEL_EXPORTER_LUNA_SPOOL": "disk",
        }

    def exporter(self) -> dict[str, Any]:
        server = self.server
        return {
            "endpoint": server.url,
            "org": server.org,
            "bucket": self.name,
            "token": server.token,
        }

    def _flux(self, query: str) -> list[dict[str, str]]:
        """The rows of a Flux query, with a long timeout (a million series take a while)."""
        from tests.support.servers import http_request

        _, _, raw = http_request(
            "POST",
            f"{self.server.url}/api/v2/query",
            params={"org": self.server.org},
            data=json.dumps({"query": query, "type": "flux"}).encode(),
            headers={
                "Authorization": f"Token {self.server.token}",
                "Content-Type": "application/json",
                "Accept": "application/csv",
            },
            timeout=QUERY_TIMEOUT,
        )
        return _flux_rows(raw.decode())

    def _from(self, body: str) -> list[dict[str, str]]:
        start = f'from(bucket: "{self.name}") |> range(start: 1970-01-01T00:00:00Z)'
        return self._flux(start + body)

    def requests_points(self) -> int:
        rows = self._from(
            ' |> filter(fn: (r) => r._measurement == "requests" and r._field == "execution_time")'
            " |> group() |> count()"
        )
        return sum(int(row["_value"]) for row in rows)

    def _metrics(self, name: str) -> float:
        """The sum of the Prometheus samples ``name`` (over their labels) of ``/metrics``."""
        from tests.support.servers import http_request

        _, _, raw = http_request("GET", f"{self.server.url}/metrics")
        return sum(
            float(line.rpartition(" ")[2])
            for line in raw.decode().splitlines()
            if line.partition("{")[0].partition(" ")[0] == name
        )

    def points_written(self) -> int:
        return int(self._metrics("storage_writer_ok_points_sum"))

    def writes(self) -> dict[str, int]:
        return {
            "requests": int(self._metrics("http_write_request_count")),
            "bytes": int(self._metrics("http_write_request_bytes")),
        }

    def points(self) -> dict[str, int]:
        fields = " or ".join(
            f'(r._measurement == "{measurement}" and r._field == "{field}")'
            for measurement, field in COUNTED_FIELD.items()
        )
        rows = self._from(
            f' |> filter(fn: (r) => {fields}) |> group(columns: ["_measurement"]) |> count()'
        )
        return {row["_measurement"]: int(row["_value"]) for row in rows}

    def series(self) -> int:
        rows = self._flux(
            'import "influxdata/influxdb"\n'
            f'influxdb.cardinality(bucket: "{self.name}", start: 1970-01-01T00:00:00Z)'
        )
        return sum(int(row["_value"]) for row in rows)

    def stop(self) -> None:
        self.server.stop()


# -- one run of one pipeline ------------------------------------------------------------------


def _peak_rss(pid: int) -> int:
    """``VmHWM`` of ``pid`` in bytes (0 if it is gone)."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as file:
        for line in file:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _collector_config(kind: str, store: Store, ports: dict[str, str], root: Path) -> dict:
    """(c): ``collector-config/gateway-loadbalancing.yaml`` as it is, made local. (b): the
    config below, written here; it writes batches and bounds its time per write like serve."""
    from tests.support import otelcol

    if kind == "lb+2serve":
        queue = otelcol.QUEUE_DIRECTORY
        return dict(
            otelcol.localize(
                otelcol.load_config("gateway-loadbalancing.yaml"),
                {
                    "0.0.0.0:14317": ports["grpc"],
                    "0.0.0.0:14318": ports["http"],
                    "127.0.0.1:4317": ports["replica0"],
                    "127.0.0.1:5317": ports["replica1"],
                    queue: str(root / "queue"),  # a persistent queue's directory, if any
                },
            )
        )
    return {
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": ports["grpc"]}}}},
        # serve's defaults: writes of up to 5000 lines, at least once a second
        "processors": {
            "batch": {"send_batch_size": 5000, "send_batch_max_size": 5000, "timeout": "1s"}
        },
        "exporters": {
            "influxdb": {
                **store.exporter(),
                # tags besides trace_id and span_id (v0.161.0 writes the span name as a field
                # whatever this says)
                "span_dimensions": ["service.name", "span.name"],
                "timeout": "10s",
                "sending_queue": {
                    "enabled": True,
                    "num_consumers": 2,
                    # at most 100,000 spans in memory; when full, hold the caller back: the
                    # default (drop) makes the batch processor lose spans while the receiver
                    # still answers OK
                    "sizer": "items",
                    "queue_size": 100_000,
                    "block_on_overflow": True,
                },
                "retry_on_failure": {
                    "enabled": True,
                    "initial_interval": "1s",
                    "max_interval": "30s",
                    "max_elapsed_time": "300s",
                },
            }
        },
        "service": {
            "pipelines": {
                "traces": {
                    "receivers": ["otlp"],
                    "processors": ["batch"],
                    "exporters": ["influxdb"],
                }
            }
        },
    }


#: The Collector's own counters reported per run (summed over their labels).
COLLECTOR_COUNTERS = (
    "otelcol_receiver_accepted_spans",
    "otelcol_receiver_refused_spans",
    "otelcol_exporter_sent_spans",
    "otelcol_exporter_send_failed_spans",
    "otelcol_exporter_enqueue_failed_spans",
)


def _collector_counts(collector: Any) -> dict[str, dict[str, float]]:
    """Each counter of COLLECTOR_COUNTERS per exporter / receiver (``_total`` or not)."""
    out: dict[str, dict[str, float]] = {}
    for key, value in collector.metrics().items():
        name, _, labels = key.partition("{")
        name = name.removesuffix("_total")
        if name not in COLLECTOR_COUNTERS:
            continue
        who = "?"
        for label in labels.rstrip("}").split(","):
            label_name, _, label_value = label.partition("=")
            if label_name in ("exporter", "receiver"):
                who = label_value.strip('"')
        per = out.setdefault(name.removeprefix("otelcol_"), {})
        per[who] = per.get(who, 0) + value
    return out


def _wait(
    count: Callable[[], int], expected: int, stall: float, snapshot: Callable[[], Any]
) -> tuple[float, Any, bool]:
    """Poll ``count`` until ``expected``. Returns when it got there, or when it last moved if
    it stops moving for ``stall`` seconds; ``snapshot()`` taken at that moment; and whether it
    got there."""
    last, moved, taken = -1, time.time(), snapshot()
    while True:
        now, value = time.time(), count()
        if value >= expected:
            return now, snapshot(), True
        if value != last:
            last, moved, taken = value, now, snapshot()
        elif now - moved > stall:
            return moved, taken, False
        time.sleep(POLL_SECONDS)


class Pipeline:
    """The processes of one run of one pipeline, all fresh: InfluxDB, ``serve`` replicas and
    the Collector. Stopped by their PIDs, Collector first (it has nobody to drain to later)."""

    def __init__(self, kind: str, store: Store, root: Path) -> None:
        from tests.support.otelcol import Collector
        from tests.support.servers import HOST, free_port

        self.store = store
        self.serves: list[Serve] = []
        self.collector: Any = None
        try:
            for index in range({"serve": 1, "collector": 0, "lb+2serve": 2}[kind]):
                self.serves.append(Serve(root / f"serve{index}", store.serve_env()))
            if kind == "serve":
                self.target = self.serves[0].grpc_target
                return
            ports = {"grpc": f"{HOST}:{free_port()}", "http": f"{HOST}:{free_port()}"}
            ports.update({f"replica{i}": serve.grpc_target for i, serve in enumerate(self.serves)})
            config = _collector_config(kind, store, ports, root)
            self.collector = Collector(config, root / "otelcol", name="otelcol")
            self.target = ports["grpc"]
        except BaseException:
            self.stop()
            raise

    @property
    def pids(self) -> dict[str, list[int]]:
        return {
            "otelcol": [self.collector.pid] if self.collector else [],
            "serve": [pid for serve in self.serves for pid in serve.pids],
            "influxd": [self.store.pid],
        }

    def cpu(self) -> dict[str, list[float]]:
        """CPU seconds so far of each process per role, and of the whole machine."""
        return CpuSampler(lambda: self.pids).per_process()

    def stop(self) -> None:
        try:
            if self.collector is not None:
                self.collector.stop()
            for serve in self.serves:
                code = serve.stop()
                if code != 0:
                    print(f"warning: serve exited {code}:\n{serve.output}", file=sys.stderr)
                if serve.dead_letter.exists() and serve.dead_letter.stat().st_size:
                    print(f"warning: dead letters in {serve.dead_letter}", file=sys.stderr)
        finally:
            self.store.stop()


class Bench:
    def __init__(self, options: Any, root: Path, templates: list[Any]) -> None:
        self.options = options
        self.root = root
        self.templates = templates
        self.runs = 0

    def _store(self, root: Path) -> Store:
        if self.options.influxdb == "2":
            return Store2(root)
        return Store1(root, tag_limits=self.options.tag_limits)

    def run(self, kind: str) -> dict[str, Any]:
        """One run of pipeline ``kind`` on fresh processes; its figures."""
        self.runs += 1
        root = self.root / f"{self.runs:02d}-{kind.replace('+', '-')}"
        pipeline = Pipeline(kind, self._store(root / "influxdb"), root)
        try:
            return self._measure(kind, pipeline)
        finally:
            pipeline.stop()

    def _measure(self, kind: str, pipeline: Pipeline) -> dict[str, Any]:
        options, store = self.options, pipeline.store
        jobs = [
            {
                "templates": self.templates,
                "spans": options.n,
                "target": pipeline.target,
                "processes": options.clients,
                "threads": options.threads,
                "index": index,
                "seconds": options.seconds,
            }
            for index in range(options.clients)
        ]
        cpu0: dict[str, float] = {}
        results = _run_clients(
            _distinct_sender,
            jobs,
            options.connect_seconds,
            at_start=lambda: cpu0.update(pipeline.cpu()),
        )
        start_at = jobs[0]["start_at"]
        spans = sum(r.get("spans", 0) for r in results)
        # landed: a requests point per span (serve), a spans point per span (Collector: the
        # server's own counter of points written while waiting, the exact count after)
        gate = store.points_written if kind == "collector" else store.requests_points
        landed_at, cpu1, _ = _wait(gate, spans, options.stall_seconds, pipeline.cpu)
        flush = _wait_flushed(store)
        flush["influxd_cpu_seconds"] = round(cpu_seconds(store.pid) - cpu1["influxd"][0], 3)
        points = store.points()
        landed = points.get("spans" if kind == "collector" else "requests", 0)
        errors: dict[str, int] = {}
        for r in results:
            for key, value in r.items():
                if key.startswith("error_"):
                    errors[key[6:]] = errors.get(key[6:], 0) + value
        elapsed = landed_at - start_at
        each = {
            role: [round(b - a, 3) for a, b in zip(cpu0[role], cpu1[role], strict=True)]
            for role in cpu0
        }
        used = {role: sum(each[role]) for role in ROLES}
        clients = sum(r["cpu_s"] for r in results)
        others = each["machine"][0] - sum(used.values()) - clients
        collector = pipeline.collector
        return {
            "spans_sent": spans,
            "spans_landed": landed,
            "all_landed": landed >= spans,
            "calls": sum(r.get("calls", 0) for r in results),
            "refused_and_resent": sum(r.get("refused", 0) for r in results),
            "client_errors": errors,
            "end_to_end_seconds": round(elapsed, 3),
            "spans_per_s": landed / elapsed if elapsed > 0 else 0.0,
            "cpu_seconds": {
                **{role: round(used[role], 3) for role in ROLES},
                "clients": round(clients, 3),
                # everything else the machine did meanwhile (other work, the kernel, this
                # process polling): the noise of this run
                "others": round(others, 3),
            },
            "cpu_seconds_per_process": {role: each[role] for role in ROLES},
            "flush": flush,
            "peak_rss_bytes": {
                role: [_peak_rss(pid) for pid in pids] for role, pids in pipeline.pids.items()
            },
            "points": points,
            "series": store.series(),
            "disk_bytes": store.disk(),
            "writes": store.writes(),
            "collector": _collector_counts(collector) if collector else {},
            "collector_config": collector.config if collector else None,
            "influxdb": store.version,
        }


def _wait_flushed(store: Store) -> dict[str, Any]:
    """Wait until InfluxDB has written its cache to TSM files and compacted them: the WAL is
    empty and the TSM files have not changed for FLUSH_SETTLE seconds."""
    started = time.time()
    settled_at, previous = started, None
    while time.time() - started < FLUSH_TIMEOUT:
        idle, files = store.flushed()
        if files != previous:
            settled_at, previous = time.time(), files
        elif idle and files and time.time() - settled_at >= FLUSH_SETTLE:
            return {"flushed": True, "seconds": round(time.time() - started, 1)}
        time.sleep(0.5)
    return {"flushed": False, "seconds": round(time.time() - started, 1)}


# -- figures ---------------------------------------------------------------------------------


def per_span(run: dict[str, Any]) -> dict[str, float]:
    """A run's figures per span landed: CPU µs per process role, what reached InfluxDB and
    what it stored (and spans per write request)."""
    landed = max(run["spans_landed"], 1)
    cpu = run["cpu_seconds"]
    present = [role for role in ROLES if run["cpu_seconds_per_process"][role]]
    out = {f"cpu_us_{role}": cpu[role] / landed * 1e6 for role in (*present, "clients", "others")}
    out["cpu_us_total"] = sum(cpu[role] for role in ROLES) / landed * 1e6
    out["cpu_us_influxd_flush"] = run["flush"]["influxd_cpu_seconds"] / landed * 1e6
    out["points"] = sum(run["points"].values()) / landed
    out["series"] = run["series"] / landed
    for part, value in run["disk_bytes"].items():
        out[f"bytes_{part}"] = value / landed
    # what reached InfluxDB's /write: line protocol bytes per span, spans per write request
    out["write_bytes"] = run["writes"]["bytes"] / landed
    out["spans_per_write"] = landed / max(run["writes"]["requests"], 1)
    return out


#: (name, numerator (pipeline, figure), denominator (pipeline, figure)); figures of per_span
#: or "spans_per_s"
RATIOS = (
    ("serve CPU/span (a) / Collector CPU/span (b)", ("serve", "cpu_us_serve"),
     ("collector", "cpu_us_otelcol")),
    ("all processes CPU/span (a) / (b)", ("serve", "cpu_us_total"),
     ("collector", "cpu_us_total")),
    ("influxd CPU/span (a) / (b)", ("serve", "cpu_us_influxd"),
     ("collector", "cpu_us_influxd")),
    ("influxd flush CPU/span (a) / (b)", ("serve", "cpu_us_influxd_flush"),
     ("collector", "cpu_us_influxd_flush")),
    ("all processes CPU/span (c) / (b)", ("lb+2serve", "cpu_us_total"),
     ("collector", "cpu_us_total")),
    ("all processes CPU/span (c) / (a)", ("lb+2serve", "cpu_us_total"),
     ("serve", "cpu_us_total")),
    ("Collector CPU/span (c) / (b)", ("lb+2serve", "cpu_us_otelcol"),
     ("collector", "cpu_us_otelcol")),
    ("serve CPU/span (c, 2 replicas) / (a)", ("lb+2serve", "cpu_us_serve"),
     ("serve", "cpu_us_serve")),
    ("spans/s end to end (a) / (b)", ("serve", "spans_per_s"), ("collector", "spans_per_s")),
    ("spans/s end to end (c) / (b)", ("lb+2serve", "spans_per_s"),
     ("collector", "spans_per_s")),
    ("line-protocol bytes/span (a) / (b)", ("serve", "write_bytes"),
     ("collector", "write_bytes")),
    ("bytes on disk/span (a) / (b)", ("serve", "bytes_total"), ("collector", "bytes_total")),
    ("series/span (a) / (b)", ("serve", "series"), ("collector", "series")),
)  # fmt: skip


def _figure(run: dict[str, Any], name: str) -> float:
    return float(run["spans_per_s"]) if name == "spans_per_s" else per_span(run)[name]


def report(
    options: Any, rounds: list[dict[str, Any]], started: float, machine: dict[str, float]
) -> dict[str, Any]:
    pipelines: dict[str, Any] = {}
    for kind in PIPELINES:
        runs = [r[kind] for r in rounds]
        figures = {
            name: summary([per_span(run)[name] for run in runs], 3) for name in per_span(runs[0])
        }
        pipelines[kind] = {
            "label": LABELS[kind],
            "spans_per_s": summary([run["spans_per_s"] for run in runs], 0),
            "spans_landed_of_sent": [[run["spans_landed"], run["spans_sent"]] for run in runs],
            "all_landed": all(run["all_landed"] for run in runs),
            "per_span": figures,
            "peak_rss_mib": {
                role: summary([max(run["peak_rss_bytes"][role]) / MIB for run in runs], 1)
                for role in ROLES
                if runs[0]["peak_rss_bytes"][role]
            },
        }
    configs = {}
    for r in rounds:
        for kind, run in r.items():
            configs[kind] = run.pop("collector_config", None)  # the same in every round
    ratios = {}
    for name, (top_kind, top), (bottom_kind, bottom) in RATIOS:
        values = []
        for r in rounds:
            denominator = _figure(r[bottom_kind], bottom)
            if denominator > 0:
                values.append(_figure(r[top_kind], top) / denominator)
        if values:
            ratios[name] = summary(values, 3)
    target = ratios.get(RATIOS[0][0], {}).get("median")
    return {
        "benchmark": "beside_collector",
        "what": "the same OTLP/gRPC load: serve, the Collector's influxdb exporter, and the "
        "Collector's load_balancing exporter in front of 2 serve, each into a fresh InfluxDB",
        "target": "serve CPU per span <= the Collector's influxdb-exporter path CPU per span",
        "target_met": target is not None and target <= 1.0,
        "pipelines": pipelines,
        "ratios": ratios,
        "rounds": rounds,
        "setup": {
            "influxdb": rounds[0]["serve"]["influxdb"],
            "spans_per_request": options.n,
            "templates": options.templates,
            "client_processes": options.clients,
            "calls_in_flight_per_client": options.threads,
            "seconds_per_round": options.seconds,
            "rounds": options.rounds,
            "cpus": os.cpu_count(),
            **machine,
            "collector_configs": configs,
        },
        "seconds": round(time.perf_counter() - started, 1),
        "environment": environment(),
    }


def _print(result: dict[str, Any]) -> None:
    setup = result["setup"]
    print(
        f"beside the Collector: {setup['client_processes']} client processes x "
        f"{setup['calls_in_flight_per_client']} calls in flight, {setup['spans_per_request']} "
        f"SERVER spans per Export call, {setup['seconds_per_round']:g} s per run; InfluxDB "
        f"{setup['influxdb']} (fresh per run); {setup['rounds']} rounds; {setup['cpus']} CPUs "
        f"(worth {setup['effective_parallel_cores']} in parallel); {result['seconds']:.0f} s"
    )
    print()
    pipelines = result["pipelines"]
    rows = [
        [
            "median per pipeline",
            "spans/s",
            "lost",
            "otelcol",
            "serve",
            "influxd",
            "total",
            "+flush",
            "clients",
            "others",
        ]
    ]
    for figures in pipelines.values():
        each = figures["per_span"]
        landed = sum(a for a, _ in figures["spans_landed_of_sent"])
        sent = sum(b for _, b in figures["spans_landed_of_sent"])

        def us(name: str, each: dict[str, Any] = each) -> str:
            stats = each.get(f"cpu_us_{name}")  # none: the pipeline has no such process
            return f"{stats['median']:.1f}" if stats else "-"

        rows.append(
            [
                figures["label"],
                f"{figures['spans_per_s']['median']:,.0f}",
                f"{sent - landed:,}",
                us("otelcol"),
                us("serve"),
                us("influxd"),
                us("total"),
                us("influxd_flush"),
                us("clients"),
                us("others"),
            ]
        )
    print(
        "CPU µs per span landed (user+system, every thread), median over rounds; total: "
        "otelcol + serve + influxd; +flush: influxd afterwards; others: the rest of the machine;"
        " lost: spans answered OK that never became a point (all rounds)"
    )
    table(rows)
    print()
    rows = [
        [
            "median per pipeline",
            "RSS otelcol",
            "serve",
            "influxd",
            "points",
            "series",
            "LP bytes",
            "spans/write",
            "disk bytes",
            "TSM",
            "series+idx",
            "WAL",
        ]
    ]
    for figures in pipelines.values():
        each = {name: stats["median"] for name, stats in figures["per_span"].items()}
        rss = figures["peak_rss_mib"]

        def mib(role: str, rss: dict[str, Any] = rss) -> str:
            return f"{rss[role]['median']:.0f}" if role in rss else "-"

        rows.append(
            [
                figures["label"],
                mib("otelcol"),
                mib("serve"),
                mib("influxd"),
                f"{each['points']:.2f}",
                f"{each['series']:.4f}",
                f"{each['write_bytes']:.0f}",
                f"{each['spans_per_write']:,.0f}",
                f"{each['bytes_total']:.1f}",
                f"{each['bytes_tsm']:.1f}",
                f"{each['bytes_series_and_index']:.1f}",
                f"{each['bytes_wal']:.1f}",
            ]
        )
    print(
        "peak RSS MiB per process (serve: the larger replica); per span landed: points, series, "
        "line-protocol bytes InfluxDB received (LP bytes), spans per write request, bytes on "
        "disk once flushed and compacted (du: TSM files, series file + index, WAL):"
    )
    table(rows)
    print()
    rows = [["ratio, per round", "median", "min", "max"]]
    for name, stats in result["ratios"].items():
        rows.append([name, f"{stats['median']:.2f}", f"{stats['min']:.2f}", f"{stats['max']:.2f}"])
    table(rows)
    print()
    for kind, figures in pipelines.items():
        notes = []
        for number, run in enumerate(r[kind] for r in result["rounds"]):
            if not run["all_landed"]:
                notes.append(
                    f"round {number + 1}: {run['spans_landed']:,} of {run['spans_sent']:,} "
                    "spans landed"
                )
            if run["client_errors"]:
                notes.append(f"round {number + 1}: client errors {run['client_errors']}")
            lost = {
                name: per
                for name, per in run["collector"].items()
                if name.endswith(("failed_spans", "refused_spans")) and any(per.values())
            }
            if lost:
                notes.append(f"round {number + 1}: Collector {lost}")
            if not run["flush"]["flushed"]:
                notes.append(f"round {number + 1}: InfluxDB not flushed after {FLUSH_TIMEOUT} s")
        if notes:
            print(f"{figures['label']}: " + "; ".join(notes))
    ratio = result["ratios"].get(RATIOS[0][0])
    if ratio:
        print(
            f"target serve CPU/span <= Collector influxdb-path CPU/span: "
            f"{'met' if result['target_met'] else 'NOT met'} (ratio {ratio['median']:.2f}, "
            f"{ratio['min']:.2f}-{ratio['max']:.2f})"
        )


# -- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__.split("\n")[0], rounds=3, n=512, n_help="spans per OTLP request")
    parser.set_defaults(warmup=0)
    parser.add_argument("--seconds", type=float, default=10.0, help="sending per run (10)")
    parser.add_argument("--clients", type=int, default=2, help="client processes (2)")
    parser.add_argument("--threads", type=int, default=2, help="calls in flight per client (2)")
    parser.add_argument("--templates", type=int, default=8, help="distinct requests (8)")
    parser.add_argument(
        "--influxdb", choices=("1", "2"), default="1", help="InfluxDB 1.x (default) or 2.x"
    )
    parser.add_argument(
        "--connect-seconds", type=float, default=6.0, help="time given to clients to connect (6)"
    )
    parser.add_argument(
        "--stall-seconds",
        type=float,
        default=10.0,
        help="stop waiting for spans to land when the count has not moved this long (10)",
    )
    parser.add_argument(
        "--tag-limits",
        action="store_true",
        help="keep InfluxDB 1.x's default max-values-per-tag / max-series-per-database",
    )
    parser.add_argument(
        "--pipelines",
        default=",".join(PIPELINES),
        help=f"which, comma-separated (default {','.join(PIPELINES)})",
    )
    options = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))  # for tests.support
    from serve_throughput import parallel_cores

    started = time.perf_counter()
    machine = {
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        "effective_parallel_cores": parallel_cores(),  # others' load included
    }
    templates = make_templates(options.templates, options.n, options.seed)
    names = [name for name in options.pipelines.split(",") if name]
    assert set(names) <= set(PIPELINES), f"pipelines are {PIPELINES}"
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="otel-luna-beside-collector-") as tmp:
        bench = Bench(options, Path(tmp), templates)
        for index in range(options.warmup + options.rounds):
            shift = index % len(names)
            figures = {}
            for name in names[shift:] + names[:shift]:
                figures[name] = bench.run(name)
                if not options.json:
                    run = figures[name]
                    print(
                        f"  round {index + 1} {name}: {run['spans_per_s']:,.0f} spans/s, "
                        f"{run['spans_landed']:,}/{run['spans_sent']:,} landed, CPU s "
                        f"{run['cpu_seconds']}",
                        file=sys.stderr,
                    )
            if index >= options.warmup:
                rounds.append(figures)
    if set(names) != set(PIPELINES):
        dump({"rounds": rounds})  # a partial run: the raw figures only
        return 0
    result = report(options, rounds, started, machine)
    if options.json:
        dump(result)
    else:
        _print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
