"""influxdb-client against otel-luna's own InfluxDB 2.x writer and Flux reader, on a real 2.x.

    .venv/bin/python benchmarks/influxdb2_client.py [--rounds 7] [--n 50000] [--batches 4]
        [--batch 5000] [--import-rounds 7] [--json]

The question (should otel-luna talk to 2.x through ``influxdb-client``?) is answered with
figures from one run against one real InfluxDB OSS 2.x (``influxd`` from
``tests/support/servers.py``, in a temporary directory, stopped by its PID at the end). Four
things are measured or checked:

**Write path.** Bodies of ``--batch`` (5000) line-protocol lines, ~90 % ``requests`` and ~10 %
``errors`` made by our ``LineProtocolEncoder`` from the realistic points of ``encoder.py``
(every body gets new, unique timestamps). Each round writes ``--batches`` (4) bodies with each
of, in an order that rotates from round to round, each into a bucket of its own:

* ``ours``: ``InfluxV2Sink(Settings(api_version="2", ...)).write(body)`` (urllib3, one pooled
  connection), with ``gzip`` off and on (level 5);
* ``client``: ``InfluxDBClient(url, token, org).write_api(write_options=SYNCHRONOUS)
  .write(bucket, org, record=body)`` on the same bytes, with ``enable_gzip`` off and on.

Figures: wall time and CPU time of this process (``time.process_time``, all its threads) per
line, and the ratio client ÷ ours within each round (median, min, max over ``--rounds``).
InfluxDB's own time is in the wall figure, not in the CPU one. The gzipped size per line of
each side is printed too (the client compresses at level 9). Afterwards every bucket is counted
with Flux: each must hold every line written to it.

**Imports.** ``import otel_luna.sinks._influx_v2``, ``import influxdb_client``, and
``influxdb_client`` imported after the former (what the dependency would add to a process that
loads otel-luna), with and without numpy importable (the client imports numpy when it is
installed; this venv has it for matplotlib, a core install would not). Each in a fresh
interpreter, ``--import-rounds`` times: milliseconds, RSS added (``VmRSS``), modules added.

**Flux read path.** ``--n`` (50,000) points of ``requests``, ``errors``, ``usages_statistic``
and ``licensing`` (a quarter of the request times come from a millisecond clock, spread within
the millisecond as otel-luna's mapping does; licence checks without warnings carry an empty
``warnings`` string field) are written to a bucket, then read back each round with:

* ``ours``: ``otel_luna.report.query_flux(settings, measurements)``;
* ``client query()``: ``query_api().query(flux_select(...))``, its FluxRecords merged into the
  same ``Point`` s (tags: the columns not starting with ``_`` other than ``result`` and
  ``table``; fields merged per measurement, tags and time);
* ``client query_raw() + ours``: the client's transport, our ``points_from_flux_csv`` on the
  body (``query_csv()`` hands out rows already split by ``csv.reader`` over the same stream, so
  it would only move where the same parsing runs).

Figures: wall and CPU time per point, the ratios to ``ours`` within each round, and the peak
Python memory of one read (``tracemalloc``, measured once, untimed). Before timing, the three
answers are compared with each other and with the points written (as multisets of measurement,
tags, time, fields with their types); a difference is reported, not hidden: what differs, and
whether the answers agree once it is taken out.

**Errors.** Untimed probes of how each side reports a missing bucket (404), a refused token
(401), a malformed line (400), a closed port, and a stub server answering 503 or 429 with
``Retry-After`` (how many requests it saw: does the client retry by itself?), for writes, the
client's batching ``WriteApi`` and Flux queries: exception type, status, ``Retry-After``, body.

Exit status is 0 whatever the figures. Every process started here is stopped in ``finally``.
"""

from __future__ import annotations

import csv
import datetime as dt
import gc
import gzip
import http.server
import io
import json
import logging
import random
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from _common import arguments, dump, environment, fmt, run_rounds, summary, table
from encoder import raw_points
from influxdb_client import InfluxDBClient
from influxdb_client.client.flux_table import TableList
from influxdb_client.client.write_api import SYNCHRONOUS, WriteOptions

from otel_luna.encoding._lineprotocol import LineProtocolEncoder
from otel_luna.mapping._timestamps import spread
from otel_luna.report._answers import points_from_flux_csv
from otel_luna.report._query import flux_select, query_flux
from otel_luna.schema._point import FieldValue, Point
from otel_luna.schema.luna import ESTIMATORS, LICENSE_STATUSES
from otel_luna.settings import Settings
from otel_luna.sinks._influx_v2 import InfluxV2Sink

REPO = Path(__file__).resolve().parent.parent
MEASUREMENTS = ("requests", "errors", "usages_statistic", "licensing")
SERVICES = ("luna-handlers", "luna-backport3", "luna-remote-sdk")
BASE_NS = 1_763_798_400_000_000_000  # 2025-11-22T08:00:00Z
TIMEOUT_S = 120.0  # for both sides: a read of 50,000 points must not time out
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_MICROSECOND = dt.timedelta(microseconds=1)

Key = tuple[str, tuple[tuple[str, str], ...], int]


# -- data ---------------------------------------------------------------------------------------


def request_points(n: int, seed: int) -> list[Point]:
    """``requests`` (and ``errors``) points as ``encoder.py`` makes them; the times of a quarter
    of the requests (chosen by request id, so an ``errors`` point keeps its request's time) come
    from a millisecond clock, spread within the millisecond as the mapping does."""
    points = []
    for measurement, tags, fields, time_ns in raw_points(n, seed):
        salt = int(str(fields["request_id"]), 16)
        if salt % 4 == 0:
            time_ns = spread(time_ns - time_ns % 1_000_000, salt >> 2)
        points.append(Point(measurement, tuple(sorted(tags.items())), fields, time_ns))
    return points


def luna_points(n: int, seed: int) -> list[Point]:
    """``n`` points of the four LUNA series: 94 % requests/errors, 4 % usages_statistic (one
    per service and 60 s interval, 1-5 estimators), 2 % licensing (most with empty
    ``warnings`` and ``errors``, as the mapping writes a check without messages)."""
    rng = random.Random(seed)
    usages, licensing = n * 4 // 100, n * 2 // 100
    points = request_points(n - usages - licensing, seed)
    for index in range(usages):
        interval_end = BASE_NS + (index // len(SERVICES) + 1) * 60 * 10**9
        fields: dict[str, FieldValue] = {
            f"{name}_usages": rng.randrange(1, 500)
            for name in rng.sample(ESTIMATORS, rng.randrange(1, 6))
        }
        service = SERVICES[index % len(SERVICES)]
        points.append(
            Point(
                "usages_statistic",
                (("service", service),),
                fields,
                spread(interval_end, rng.getrandbits(64)),
            )
        )
    for index in range(licensing):
        status = rng.choices(LICENSE_STATUSES, (90, 6, 3, 1))[0]
        warnings = "" if status == "ok" else "liveness balance below 10 %; expires in 5 days"
        errors = "license server unreachable" if status in ("error", "exception") else ""
        points.append(
            Point(
                "licensing",
                (("license_status", status), ("service", rng.choice(SERVICES))),
                {
                    "liveness_balance": rng.randrange(0, 100_000),
                    "warnings": warnings,
                    "errors": errors,
                },
                BASE_NS + index * 30 * 10**9 + rng.randrange(10**9),
            )
        )
    return points


def body_of(points: Iterable[Point]) -> bytes:
    return ("\n".join(LineProtocolEncoder().encode(points)) + "\n").encode()


# -- measuring ----------------------------------------------------------------------------------


class Timed:
    """A workload for :func:`run_rounds` that keeps the CPU time of every call beside the wall
    time it returns. ``prepare`` runs untimed before each call and its result is passed to
    ``work``."""

    def __init__(self, prepare: Callable[[], Any], work: Callable[[Any], Any]) -> None:
        self.prepare = prepare
        self.work = work
        self.cpu_ns: list[int] = []
        self.wall_ns: list[int] = []

    def __call__(self) -> int:
        argument = self.prepare()
        wall, cpu = time.perf_counter_ns(), time.process_time_ns()
        self.work(argument)
        cpu, wall = time.process_time_ns() - cpu, time.perf_counter_ns() - wall
        self.cpu_ns.append(cpu)
        self.wall_ns.append(wall)
        return wall

    def timed(self, warmup: int) -> tuple[list[int], list[int]]:
        """(wall ns, CPU ns) of the timed rounds (the warm-up calls left out)."""
        return self.wall_ns[warmup:], self.cpu_ns[warmup:]


def figures(
    timed: Mapping[str, Timed], pairs: Mapping[str, tuple[str, str]], items: int, warmup: int
) -> dict[str, Any]:
    """µs per item of every workload, and the per-round ratios numerator ÷ denominator."""
    per_item = {
        name: {
            "wall_us": summary([t / items / 1000 for t in each.timed(warmup)[0]], 3),
            "cpu_us": summary([t / items / 1000 for t in each.timed(warmup)[1]], 3),
        }
        for name, each in timed.items()
    }
    ratios = {}
    for label, (numerator, denominator) in pairs.items():
        top, bottom = timed[numerator].timed(warmup), timed[denominator].timed(warmup)
        ratios[label] = {
            kind: summary([a / b for a, b in zip(top[i], bottom[i], strict=True)], 3)
            for i, kind in enumerate(("wall", "cpu"))
        }
    return {"per_item": per_item, "ratios": ratios}


# -- write path ---------------------------------------------------------------------------------


class WriteBench:
    """Bodies of ``batch`` lines with unique times, and the four writers, one bucket each."""

    def __init__(self, influx: Any, batch: int, seed: int) -> None:
        self.influx = influx
        lines = LineProtocolEncoder().encode(request_points(batch, seed))
        self.templates = [(head, int(stamp)) for head, stamp in (x.rsplit(" ", 1) for x in lines)]
        self.shift = max(stamp for _, stamp in self.templates) + 10**9 - BASE_NS
        self.made = 0
        self.written: Counter[str] = Counter()
        self.closers: list[Callable[[], None]] = []

    def body(self) -> bytes:
        """The next body: the template lines, moved past every body made before."""
        self.made += 1
        offset = self.made * self.shift
        return ("\n".join(f"{h} {t + offset}" for h, t in self.templates) + "\n").encode()

    def ours(self, bucket: str, gzip_on: bool) -> Callable[[bytes], None]:
        settings = Settings.load(
            {},
            endpoint=self.influx.url,
            org=self.influx.org,
            bucket=bucket,
            token=self.influx.token,
            api_version="2",
            gzip=gzip_on,
            timeout=TIMEOUT_S,
        )
        sink = InfluxV2Sink(settings)
        self.closers.append(sink.close)
        return sink.write

    def client(self, bucket: str, gzip_on: bool) -> Callable[[bytes], None]:
        client = InfluxDBClient(
            url=self.influx.url,
            token=self.influx.token,
            org=self.influx.org,
            enable_gzip=gzip_on,
            timeout=int(TIMEOUT_S * 1000),
        )
        self.closers.append(client.close)
        api = client.write_api(write_options=SYNCHRONOUS)
        org = self.influx.org

        def write(body: bytes) -> None:
            api.write(bucket, org, record=body)

        return write

    def workload(self, bucket: str, write: Callable[[bytes], None], batches: int) -> Timed:
        self.influx.create_bucket(bucket)

        def prepare() -> list[bytes]:
            bodies = [self.body() for _ in range(batches)]
            self.written[bucket] += len(bodies) * len(self.templates)
            return bodies

        def work(bodies: list[bytes]) -> None:
            for body in bodies:
                write(body)

        return Timed(prepare, work)

    def stored(self, bucket: str) -> int:
        """Points in ``bucket`` (every line has a ``request_id`` field)."""
        answer = self.influx.flux_csv(
            f'from(bucket: "{bucket}") |> range(start: 0)'
            ' |> filter(fn: (r) => r._field == "request_id") |> group() |> count()'
        )
        rows = [r for r in csv.reader(io.StringIO(answer)) if r and not r[0].startswith("#")]
        return int(rows[1][rows[0].index("_value")]) if len(rows) > 1 else 0

    def close(self) -> None:
        for close in self.closers:
            close()


def write_path(influx: Any, options: Any) -> dict[str, Any]:
    bench = WriteBench(influx, options.batch, options.seed)
    try:
        workloads = {
            "ours": bench.workload("w_ours", bench.ours("w_ours", False), options.batches),
            "client": bench.workload("w_client", bench.client("w_client", False), options.batches),
            "ours gzip": bench.workload(
                "w_ours_gz", bench.ours("w_ours_gz", True), options.batches
            ),
            "client gzip": bench.workload(
                "w_client_gz", bench.client("w_client_gz", True), options.batches
            ),
        }
        run_rounds(workloads, rounds=options.rounds, warmup=options.warmup)
        lines = options.batches * options.batch
        pairs = {"no gzip": ("client", "ours"), "gzip": ("client gzip", "ours gzip")}
        result = figures(workloads, pairs, lines, options.warmup)
        body = bench.body()
        result["bytes_per_line"] = {
            "plain": round(len(body) / options.batch, 1),
            "ours gzip (level 5)": round(len(gzip.compress(body, 5)) / options.batch, 1),
            "client gzip (level 9)": round(len(gzip.compress(body)) / options.batch, 1),
        }
        result["stored"] = {
            bucket: {"written": written, "stored": bench.stored(bucket)}
            for bucket, written in bench.written.items()
        }
        return result
    finally:
        bench.close()


# -- imports ------------------------------------------------------------------------------------

_IMPORT_PROBE = """
import importlib, json, sys, time
def rss_kb():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
if sys.argv[1] == "no-numpy":
    sys.modules["numpy"] = None  # as if numpy were not installed
out = []
for group in sys.argv[2:]:
    modules, kb, start = len(sys.modules), rss_kb(), time.perf_counter()
    for name in group.split(","):
        importlib.import_module(name)
    out.append([(time.perf_counter() - start) * 1000, (rss_kb() - kb) / 1024,
                len(sys.modules) - modules])
print(json.dumps(out))
"""

_IMPORT_CASES = {
    # label: (numpy?, the groups imported one after the other, the group measured)
    "otel_luna.sinks._influx_v2": ("numpy", ["otel_luna.sinks._influx_v2"], 0),
    "influxdb_client": ("numpy", ["influxdb_client"], 0),
    "influxdb_client after ours": (
        "numpy",
        ["otel_luna.sinks._influx_v2", "influxdb_client"],
        1,
    ),
    "influxdb_client after ours, no numpy": (
        "no-numpy",
        ["otel_luna.sinks._influx_v2", "influxdb_client"],
        1,
    ),
}


def import_costs(rounds: int) -> dict[str, Any]:
    samples: dict[str, list[list[float]]] = {label: [] for label in _IMPORT_CASES}
    for _ in range(rounds):
        for label, (numpy, groups, measured) in _IMPORT_CASES.items():
            answer = subprocess.run(
                [sys.executable, "-c", _IMPORT_PROBE, numpy, *groups],
                capture_output=True,
                text=True,
                check=True,
                cwd=REPO,
            )
            samples[label].append(json.loads(answer.stdout)[measured])
    return {
        label: {
            "ms": summary([s[0] for s in values], 1),
            "rss_mib": summary([s[1] for s in values], 1),
            "modules": int(values[0][2]),
        }
        for label, values in samples.items()
    }


# -- read path ----------------------------------------------------------------------------------


def _ns(stamp: dt.datetime) -> int:
    return (stamp - _EPOCH) // _MICROSECOND * 1000


def points_from_tables(tables: TableList) -> list[Point]:
    """otel-luna ``Point`` s from the client's FluxTables, merged as ``points_from_flux_csv``
    merges rows: one point per measurement, tags and time; a null ``_value`` is no field."""
    merged: dict[Key, dict[str, FieldValue]] = {}
    for flux_table in tables:
        for record in flux_table.records:
            values = record.values
            value, stamp = values.get("_value"), values.get("_time")
            if value is None or stamp is None:
                continue
            tags = tuple(
                sorted(
                    (name, cell)
                    for name, cell in values.items()
                    if not name.startswith("_")
                    and name not in ("result", "table")
                    and isinstance(cell, str)
                    and cell
                )
            )
            key = (values["_measurement"], tags, _ns(stamp))
            merged.setdefault(key, {})[values["_field"]] = value
    return [Point(m, tags, fields, stamp) for (m, tags, stamp), fields in merged.items()]


def _canonical(points: Iterable[Point]) -> Counter[tuple[Any, ...]]:
    """Points as a multiset; a field's type is part of it (``1 == 1.0 == True`` in Python)."""
    return Counter(
        (
            p.measurement,
            p.tags,
            p.time_ns,
            tuple(sorted((k, type(v).__name__, v) for k, v in p.fields.items())),
        )
        for p in points
    )


def _normalized(points: Iterable[Point]) -> list[Point]:
    """What the client's query() can give back of ``points``: times cut to the microsecond
    (Python's ``datetime``), empty strings read as nulls (no field), then merged again."""
    merged: dict[Key, dict[str, FieldValue]] = {}
    for p in points:
        fields = {k: v for k, v in p.fields.items() if v != "" or not isinstance(v, str)}
        merged.setdefault((p.measurement, p.tags, p.time_ns // 1000 * 1000), {}).update(fields)
    return [Point(m, t, f, s) for (m, t, s), f in merged.items() if f]


def compare(expected: Sequence[Point], got: Sequence[Point]) -> dict[str, Any]:
    """``same`` or how two lists of points differ (counts, and one example each way)."""
    a, b = _canonical(expected), _canonical(got)
    if a == b:
        return {"same": True, "points": len(got)}
    missing, extra = a - b, b - a
    return {
        "same": False,
        "points": [len(expected), len(got)],
        "only_in_expected": sum(missing.values()),
        "only_in_got": sum(extra.values()),
        "example_expected": repr(next(iter(missing)))[:400] if missing else None,
        "example_got": repr(next(iter(extra)))[:400] if extra else None,
    }


def how_client_differs(written: Sequence[Point], got: Sequence[Point]) -> dict[str, Any]:
    keys = Counter((p.measurement, p.tags, p.time_ns // 1000) for p in written)
    empty = sum(1 for p in written for v in p.fields.values() if isinstance(v, str) and v == "")
    return {
        "written_times_not_whole_us": sum(1 for p in written if p.time_ns % 1000),
        "written_empty_string_fields": empty,
        "written_points_sharing_a_us_with_another_of_their_series": sum(
            count for count in keys.values() if count > 1
        ),
        "equal_to_written_after_us_cut_and_empty_strings_dropped": compare(
            _normalized(written), got
        ),
    }


def peak_mib(read: Callable[[None], list[Point]]) -> float:
    """Peak Python memory (MiB, ``tracemalloc``) of one read, its answer included."""
    gc.collect()
    tracemalloc.start()
    try:
        read(None)
        return round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
    finally:
        tracemalloc.stop()


def read_path(influx: Any, options: Any) -> dict[str, Any]:
    influx.create_bucket("read")
    settings = Settings.load(
        {},
        endpoint=influx.url,
        org=influx.org,
        bucket="read",
        token=influx.token,
        api_version="2",
        timeout=TIMEOUT_S,
    )
    written = luna_points(options.n, options.seed)
    sink = InfluxV2Sink(settings)
    for start in range(0, len(written), 5000):
        sink.write(body_of(written[start : start + 5000]))
    sink.close()
    query = flux_select(settings, MEASUREMENTS)
    client = InfluxDBClient(
        url=influx.url, token=influx.token, org=influx.org, timeout=int(TIMEOUT_S * 1000)
    )
    try:
        query_api = client.query_api()

        def ours(_: None) -> list[Point]:
            return query_flux(settings, MEASUREMENTS)

        def client_query(_: None) -> list[Point]:
            return points_from_tables(query_api.query(query))

        def client_raw(_: None) -> list[Point]:
            response = query_api.query_raw(query)
            try:
                return points_from_flux_csv(response.data.decode("utf-8", errors="replace"))
            finally:
                response.release_conn()

        readers = {"ours": ours, "client query()": client_query, "client raw + ours": client_raw}
        answers = {name: read(None) for name, read in readers.items()}
        checks = {
            "ours vs written": compare(written, answers["ours"]),
            "client query() vs ours": compare(answers["ours"], answers["client query()"]),
            "client raw + ours vs ours": compare(answers["ours"], answers["client raw + ours"]),
            "client query() vs written": how_client_differs(written, answers["client query()"]),
        }
        del answers
        peaks = {name: peak_mib(read) for name, read in readers.items()}
        workloads = {name: Timed(lambda: None, read) for name, read in readers.items()}
        run_rounds(workloads, rounds=options.rounds, warmup=options.warmup)
        pairs = {
            "client query() ÷ ours": ("client query()", "ours"),
            "client raw + ours ÷ ours": ("client raw + ours", "ours"),
        }
        result = figures(workloads, pairs, len(written), options.warmup)
        result["points"] = len(written)
        result["rows"] = sum(len(p.fields) for p in written)
        result["checks"] = checks
        result["peak_mib"] = peaks
        return result
    finally:
        client.close()


# -- errors -------------------------------------------------------------------------------------


def error_stub(status: int, retry_after: str) -> Any:
    """An HTTP stub (``tests/support/httpstub.py``) that answers every request with ``status``,
    a ``Retry-After`` and an InfluxDB-like JSON error; its server counts the requests."""
    from tests.support.httpstub import HttpStub

    def setup(server: Any) -> None:
        server.status, server.retry_after, server.requests = status, retry_after, 0

    return HttpStub(_StubHandler, setup=setup)


class _StubHandler(http.server.BaseHTTPRequestHandler):
    server: Any

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.requests += 1
        body = json.dumps({"code": "unavailable", "message": "stub: come back later"}).encode()
        self.send_response(self.server.status)
        self.send_header("Retry-After", self.server.retry_after)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def described(error: BaseException | None) -> dict[str, Any]:
    """What a caller can get from an exception: type, message, status, Retry-After, body."""
    if error is None:
        return {"raised": None}
    body = getattr(error, "body", None)
    headers = getattr(error, "headers", None)
    return {
        "raised": f"{type(error).__module__}.{type(error).__qualname__}",
        "str": " | ".join(str(error).split("\n"))[:240],
        "message": getattr(error, "message", None),
        "status": getattr(error, "status", None),
        "retry_after": getattr(error, "retry_after", None),
        "failure": str(getattr(error, "failure", None) or "") or None,
        "body": (body.decode(errors="replace") if isinstance(body, bytes) else body),
        "headers_available": headers is not None,
    }


def caught(call: Callable[[], Any]) -> dict[str, Any]:
    try:
        call()
    except Exception as error:  # noqa: BLE001 - the probe reports whatever is raised
        return described(error)
    return described(None)


def error_probes(influx: Any) -> dict[str, Any]:
    sys.path.insert(0, str(REPO))  # for tests.support
    from tests.support.closedport import ClosedPort

    line = f'requests,service=probe request_id="x",execution_time=0.1 {BASE_NS}\n'.encode()
    probes: dict[str, Any] = {}
    closed = ClosedPort("127.0.0.1", 9)
    stub_503 = error_stub(503, "7")
    stub_429 = error_stub(429, "1")
    log = _Collect()
    logger = logging.getLogger("influxdb_client")
    logger.addHandler(log)
    logger.propagate = False
    try:
        cases = {
            "write, bucket missing": (influx.url, influx.token, "no_such_bucket", line),
            "write, token refused": (influx.url, "wrong-token", influx.bucket, line),
            "write, malformed line": (influx.url, influx.token, influx.bucket, b"requests x\n"),
            "write, closed port": (closed.url, influx.token, influx.bucket, line),
            "write, stub 503 + Retry-After: 7": (stub_503.url, influx.token, "b", line),
        }
        for case, (url, token, bucket, body) in cases.items():
            before = stub_503.server.requests
            settings = Settings.load(
                {}, endpoint=url, org=influx.org, bucket=bucket, token=token, api_version="2"
            )
            sink = InfluxV2Sink(settings)
            ours = caught(lambda sink=sink, body=body: sink.write(body))
            sink.close()
            ours_requests = stub_503.server.requests - before
            with InfluxDBClient(url=url, token=token, org=influx.org, timeout=5000) as client:
                api = client.write_api(write_options=SYNCHRONOUS)
                theirs = caught(
                    lambda api=api, bucket=bucket, body=body: api.write(bucket, record=body)
                )
            probes[case] = {"ours": ours, "client": theirs}
            if "stub" in case:
                probes[case]["requests_seen"] = {
                    "ours": ours_requests,
                    "client": stub_503.server.requests - before - ours_requests,
                }
        probes["write, stub 429 + Retry-After: 1, client batching WriteApi"] = batching_probe(
            stub_429, influx.org, line
        )
        for case, token, bucket in (
            ("query, bucket missing", influx.token, "no_such_bucket"),
            ("query, token refused", "wrong-token", influx.bucket),
        ):
            settings = Settings.load(
                {}, endpoint=influx.url, org=influx.org, bucket=bucket, token=token
            )
            query = flux_select(settings, MEASUREMENTS)
            ours = caught(lambda settings=settings: query_flux(settings, MEASUREMENTS))
            with InfluxDBClient(url=influx.url, token=token, org=influx.org) as client:
                api = client.query_api()
                theirs = caught(lambda api=api, query=query: api.query(query))
            probes[case] = {"ours": ours, "client": theirs}
        probes["client log records (influxdb_client loggers)"] = log.records[:6]
        return probes
    finally:
        logger.removeHandler(log)
        logger.propagate = True
        closed.close()
        stub_503.stop()
        stub_429.stop()


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = " | ".join(record.getMessage().split("\n"))
        self.records.append(f"{record.levelname} {record.name}: {message[:200]}")


def batching_probe(stub: Any, org: str, line: bytes) -> dict[str, Any]:
    """The client's default kind of WriteApi (batching, in a background thread), with its
    retries shortened: does write() raise, how many requests, where does the error go?"""
    errors: list[BaseException] = []
    retried: list[BaseException] = []
    options = WriteOptions(
        batch_size=1, flush_interval=100, retry_interval=100, max_retries=2, max_retry_time=20_000
    )
    started = time.perf_counter()
    with InfluxDBClient(url=stub.url, token="t", org=org, timeout=5000) as client:
        api = client.write_api(
            write_options=options,
            error_callback=lambda _conf, _data, error: errors.append(error),
            retry_callback=lambda _conf, _data, error: retried.append(error),
        )
        raised = caught(lambda: api.write("b", record=line))
        api.close()  # waits for the batch: its retries included
    return {
        "write() raised": raised["raised"],
        "requests_seen": stub.server.requests,
        "seconds": round(time.perf_counter() - started, 2),
        "retry_callback_calls": len(retried),
        "error_callback": described(errors[0]) if errors else None,
    }


# -- report -------------------------------------------------------------------------------------


def print_table(report: Mapping[str, Any]) -> None:
    options = report["parameters"]
    write = report["write"]
    print(
        f"influxdb-client {report['environment']['packages']['influxdb-client']} vs otel-luna, "
        f"InfluxDB {report['influxdb']}; {options['rounds']} rounds, medians [min-max]\n"
    )
    print(f"Write path: {options['batches']} bodies of {options['batch']} lines per round")
    rows = [["writer", "wall µs/line", "min", "max", "CPU µs/line", "min", "max"]]
    for name, each in write["per_item"].items():
        rows.append([name, *fmt(each["wall_us"]), *fmt(each["cpu_us"])])
    table(rows)
    print()
    rows = [["client ÷ ours", "wall", "min", "max", "CPU", "min", "max"]]
    for label, each in write["ratios"].items():
        rows.append([label, *fmt(each["wall"], ".2f"), *fmt(each["cpu"], ".2f")])
    table(rows)
    sizes = ", ".join(f"{k} {v}" for k, v in write["bytes_per_line"].items())
    print(f"bytes per line: {sizes}")
    lost = {b: c for b, c in write["stored"].items() if c["stored"] != c["written"]}
    print(f"stored = written in every bucket: {not lost}" + (f" {lost}" if lost else ""))
    print()
    print("Imports (fresh interpreter, added by the import)")
    rows = [["import", "ms", "min", "max", "RSS MiB", "min", "max", "modules"]]
    for label, each in report["imports"].items():
        rows.append(
            [label, *fmt(each["ms"], ".1f"), *fmt(each["rss_mib"], ".1f"), str(each["modules"])]
        )
    table(rows)
    print()
    read = report["read"]
    print(f"Flux read path: {read['points']} points ({read['rows']} rows) per read")
    rows = [["reader", "wall µs/point", "min", "max", "CPU µs/point", "min", "max"]]
    for name, each in read["per_item"].items():
        rows.append([name, *fmt(each["wall_us"]), *fmt(each["cpu_us"])])
    table(rows)
    print()
    rows = [["ratio", "wall", "min", "max", "CPU", "min", "max"]]
    for label, each in read["ratios"].items():
        rows.append([label, *fmt(each["wall"], ".2f"), *fmt(each["cpu"], ".2f")])
    table(rows)
    peaks = ", ".join(f"{name} {mib}" for name, mib in read["peak_mib"].items())
    print(f"peak Python memory of one read (MiB, tracemalloc): {peaks}")
    print()
    print("Checks (same: the answers are equal as multisets of points, field types included)")
    for label, check in read["checks"].items():
        print(f"  {label}: {json.dumps(check)}")
    if "errors" not in report:
        return
    print()
    print("Errors (untimed probes)")
    for case, probe in report["errors"].items():
        print(f"  {case}:")
        if isinstance(probe, list):
            for record in probe:
                print(f"    {record}")
            continue
        for side, what in probe.items():
            print(f"    {side}: {json.dumps(what, ensure_ascii=False)}")


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__.split("\n\n")[0], rounds=7, n=50_000, n_help="points read back")
    parser.add_argument("--batch", type=int, default=5000, help="lines per body (5000)")
    parser.add_argument("--batches", type=int, default=4, help="bodies per writer a round (4)")
    parser.add_argument("--import-rounds", type=int, default=7, help="fresh interpreters (7)")
    parser.add_argument("--no-errors", action="store_true", help="skip the error probes")
    options = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))  # for tests.support
    from tests.support.servers import start_influxdb2

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="otel-luna-influxdb2-bench-") as tmp:
        influx = start_influxdb2(Path(tmp))
        try:
            gc.collect()
            report: dict[str, Any] = {
                "environment": environment(),
                "influxdb": influx.version,
                "parameters": {
                    key: getattr(options, key)
                    for key in ("rounds", "warmup", "n", "batch", "batches", "seed")
                },
                "write": write_path(influx, options),
                "imports": import_costs(options.import_rounds),
                "read": read_path(influx, options),
            }
            if not options.no_errors:
                report["errors"] = error_probes(influx)
        finally:
            influx.stop()  # by its PID
    report["seconds"] = round(time.perf_counter() - started, 1)
    if options.json:
        dump(report)
    else:
        print_table(report)
        print(f"\n{report['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
