"""Sustained throughput of one ``otel-luna serve``: OTLP/gRPC in, real InfluxDB 1.x out.

    .venv/bin/python benchmarks/serve_throughput.py [--rounds 3] [--seconds 10] [--n 512]
        [--clients 2] [--threads 2] [--replicas 1] [--latency-seconds 10]
        [--spool disk|memory] [--no-py-spy] [--json]

Setup: a real InfluxDB 1.x (``influxd`` from ``tests/support/servers.py``, a temporary directory)
and ``otel-luna serve`` as a child process on free ports, writing to it with the 1.x ``/write`` API
and the product's defaults otherwise (disk spool, batches of 5000 lines, 1 s flush interval).

Requests: ``--templates`` (8) OTLP ``ExportTraceServiceRequest``s of ``--n`` (512) SERVER spans
each, made by the SDK's own OTLP encoder (``encode_spans``) from the realistic spans of
``exporter_overhead.py`` (15 attributes as the aiohttp instrumentation sets them plus
``luna.*`` ones, 10 % failed requests), about 700 bytes per span. Every request sent is a copy
of a template whose span start/end times are patched in the serialized bytes, so that every span
of a run is a distinct point in InfluxDB (InfluxDB keeps one point per series and timestamp: a
resent span would overwrite, and nothing could be counted).

Clients: ``--clients`` processes, each with ``--threads`` threads making blocking unary calls
of the raw bytes on one gRPC channel (``/opentelemetry.proto.collector.trace.v1.TraceService/
Export``): what an SDK or Collector exporter sends on the wire, without measuring a client SDK.
A ``RESOURCE_EXHAUSTED`` answer (spool full) makes the thread wait and resend, as a Collector
would.

Each of ``--rounds`` rounds runs, in an order that rotates from round to round:

* ``served``: a fresh database and a fresh ``serve``; the clients send as fast as it accepts
  for ``--seconds``. Figures: *accepted* spans/s (spans in Export calls answered OK ÷ time from
  the first call to the last answer) and *end-to-end* spans/s (the same spans ÷ time from the
  first call until InfluxDB holds every ``requests`` point, polled with ``count()``), and the CPU
  seconds ``serve``, ``influxd`` and the clients used over that time (``/proc``);
* ``decode floor``: in this process, ``ExportTraceServiceRequest.FromString`` +
  ``otel_luna.serve._otlp.span_records`` over copies of the same requests: the least work any
  receiver in Python must do per span; an upper bound for ``serve``;
* ``accept path``: in this process, ``FromString`` + ``Receiver.accept_traces`` (map, encode,
  hand-off to a spool of the same kind, sink that drops) over the same copies: ``serve`` minus
  gRPC and the writer thread's work.

``--replicas N`` runs N ``serve`` processes sharing the database in the ``served`` workload
(client process i sends to replica i mod N): the scale-out figure for one machine.

Then one more ``serve`` is paced (open loop, one process issuing asynchronous calls at fixed
intervals) at half the median end-to-end rate for ``--latency-seconds``; latency of each Export
call is measured from its scheduled start to its answer: p50, p90, p99, max. Last, unless
``--no-py-spy`` or py-spy is missing, an untimed load round runs with ``py-spy record`` attached
to ``serve`` to show where its time goes (inclusive and self shares of the samples).

Reported: spans/s (median, min, max over rounds), ratios to the decode floor and to the target
(100,000 spans/s), latency percentiles, CPU shares, CPU per span, and serve's CPU as spans per
core-second (spans ÷ serve's CPU seconds) beside the decode floor. Exit status is 0 whatever
the figures. Every process started here is stopped by its PID in ``finally``.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import (
    CpuSampler,
    NullSink,
    arguments,
    dump,
    environment,
    sdk_provider,
    summary,
    table,
)

TARGET = 100_000  # spans/s, issue 5
REPO = Path(__file__).resolve().parent.parent
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 60.0
STORE_TIMEOUT = 300.0
CALL_TIMEOUT = 60.0
_START, _END = b"\x39", b"\x41"  # Span field 7 / 8 (fixed64): start/end_time_unix_nano tags
_GRID_NS = 1000  # template spans start 1 µs apart


# -- requests -------------------------------------------------------------------------------


def make_templates(count: int, spans: int, seed: int) -> list[tuple[bytes, list[tuple[int, ...]]]]:
    """``count`` serialized requests of ``spans`` SERVER spans, and where their times are.

    Span j of template t starts at ``T0 + (t * spans + j) µs`` and lasts 2-300 ms, so copies
    shifted by whole multiples of ``count * spans`` µs never collide.
    """
    import random

    from exporter_overhead import SERVICE, record, requests
    from opentelemetry.exporter.otlp.proto.common._internal.trace_encoder import encode_spans
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    reqs = requests(count * spans, seed=seed, error_share=0.1, semconv="default")
    record(sdk_provider(memory, SERVICE).get_tracer("serve-benchmark"), reqs)
    finished = list(memory.get_finished_spans())
    rng = random.Random(seed)
    t0 = (time.time_ns() - 3600 * 10**9) // 10**9 * 10**9
    templates = []
    for t in range(count):
        message = encode_spans(finished[t * spans : (t + 1) * spans])
        times = []
        j = 0
        for resource_spans in message.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    start = t0 + (t * spans + j) * _GRID_NS
                    end = start + int(rng.uniform(0.002, 0.3) * 1e9)
                    span.start_time_unix_nano, span.end_time_unix_nano = start, end
                    times.append((start, end))
                    j += 1
        body = message.SerializeToString()
        places = []
        for start, end in times:
            at_start = body.find(_START + struct.pack("<Q", start))
            at_end = body.find(_END + struct.pack("<Q", end))
            assert at_start >= 0 and at_end >= 0, "span times not found in the serialized request"
            assert body.count(_START + struct.pack("<Q", start)) == 1
            places.append((at_start + 1, at_end + 1, start, end))
        templates.append((body, places))
    return templates


class Requests:
    """Copy ``k`` of the templates: template ``k % T``, times shifted past every earlier copy."""

    def __init__(self, templates: list[tuple[bytes, list[tuple[int, ...]]]], spans: int) -> None:
        self.templates = templates
        self.spans = spans
        self.window = len(templates) * spans * _GRID_NS

    def body(self, k: int) -> bytes:
        template, places = self.templates[k % len(self.templates)]
        shift = (k // len(self.templates)) * self.window
        buffer = bytearray(template)
        pack = struct.pack_into
        for at_start, at_end, start, end in places:
            pack("<Q", buffer, at_start, start + shift)
            pack("<Q", buffer, at_end, end + shift)
        return bytes(buffer)


# -- client processes -----------------------------------------------------------------------
# Each runs in a process of its own (spawned), so that client work never shares a GIL with the
# measuring process. A job says where to send, which copies, and when to start and stop
# (absolute wall-clock times fixed by the parent before it starts the processes).


def _retry_delay(error: Any) -> float:
    """The server's RetryInfo delay (``grpc-status-details-bin``), else 1 s."""
    from google.rpc import error_details_pb2, status_pb2

    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return 1.0


def _connect(job: dict[str, Any], own_connection: bool = False) -> tuple[Any, Any]:
    """A channel and its Export call; ``own_connection``: a connection no other channel of
    this process shares (``SO_REUSEPORT`` spreads connections, not calls, over workers)."""
    import grpc

    options = [("grpc.use_local_subchannel_pool", 1)] if own_connection else []
    channel = grpc.insecure_channel(job["target"], options=options)
    call = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
    call(b"", timeout=CALL_TIMEOUT)  # connect and warm up: an empty request maps to nothing
    return channel, call


def _sleep_until(moment: float) -> None:
    while (left := moment - time.time()) > 0:
        time.sleep(min(left, 0.05))


def _sender(job: dict[str, Any], results: Any) -> None:
    """``threads`` blocking callers, each sending copies k, k + stride, ... until ``stop_at``;
    RESOURCE_EXHAUSTED is retried after the delay the server asks for. With
    ``job["connection_per_thread"]`` each caller has a connection of its own, else they share
    one."""
    import grpc

    requests = Requests(job["templates"], job["spans"])
    if job.get("connection_per_thread"):
        connections = [_connect(job, own_connection=True) for _ in range(job["threads"])]
    else:
        connections = [_connect(job)] * job["threads"]
    results.put({"ready": job["index"]})
    _sleep_until(job["start_at"])
    cpu0 = os.times()
    stride = job["processes"] * job["threads"]
    tally: collections.Counter[str] = collections.Counter()
    ends: list[float] = []
    lock = threading.Lock()

    def caller(k: int, call: Any) -> None:
        counts: collections.Counter[str] = collections.Counter()
        last = time.time()
        while time.time() < job["stop_at"]:
            body = requests.body(k)
            while True:
                try:
                    call(body, timeout=CALL_TIMEOUT)
                except grpc.RpcError as error:
                    if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        counts["refused"] += 1
                        time.sleep(_retry_delay(error))
                        continue
                    counts[f"error_{error.code().name}"] += 1
                else:
                    counts["calls"] += 1
                    counts["spans"] += requests.spans
                break
            last = time.time()
            k += stride
        with lock:
            tally.update(counts)
            ends.append(last)

    first = job["index"] * job["threads"]
    threads = [
        threading.Thread(target=caller, args=(first + i, call))
        for i, (_, call) in enumerate(connections)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cpu1 = os.times()
    for channel in {id(channel): channel for channel, _ in connections}.values():
        channel.close()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    results.put({**tally, "last_answer": max(ends), "cpu_s": cpu})


def _pacer(job: dict[str, Any], results: Any) -> None:
    """Open loop: one asynchronous Export call every ``interval`` s from ``start_at``."""
    requests = Requests(job["templates"], job["spans"])
    channel, call = _connect(job)
    results.put({"ready": 0})
    start, interval, count = job["start_at"], job["interval"], job["calls"]
    done: list[tuple[float, float, str]] = []
    lock = threading.Lock()
    futures = []
    late = 0
    for i in range(count):
        body = requests.body(i)
        scheduled = start + i * interval
        if time.time() > scheduled + 0.001:
            late += 1
        _sleep_until(scheduled)
        submitted = time.time()
        future = call.future(body, timeout=CALL_TIMEOUT)

        def finished(f: Any, scheduled: float = scheduled, submitted: float = submitted) -> None:
            at = time.time()
            code = f.code()
            with lock:
                done.append((at - scheduled, at - submitted, code.name if code else "UNKNOWN"))

        future.add_done_callback(finished)
        futures.append(future)
    for future in futures:
        with contextlib.suppress(Exception):
            future.result()
    deadline = time.time() + CALL_TIMEOUT
    while len(done) < count and time.time() < deadline:
        time.sleep(0.01)
    channel.close()
    with lock:
        results.put({"done": list(done), "late_starts": late, "last_answer": time.time()})


def _run_clients(
    target: Any,
    jobs: list[dict[str, Any]],
    connect_seconds: float,
    at_start: Any = None,
) -> list[Any]:
    """One process per job; all start at the same moment, ``connect_seconds`` from now.

    ``at_start`` is called in this process at that moment (to read CPU counters).
    """
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    start_at = time.time() + connect_seconds
    for job in jobs:
        job["start_at"] = start_at
        if "seconds" in job:
            job["stop_at"] = start_at + job["seconds"]
    processes = [context.Process(target=target, args=(job, results), daemon=True) for job in jobs]
    try:
        for process in processes:
            process.start()
        for _ in processes:
            message = results.get(timeout=START_TIMEOUT + connect_seconds)
            assert "ready" in message, message
        if time.time() > start_at:
            raise RuntimeError(
                "client processes connected after the agreed start; raise --connect-seconds"
            )
        _sleep_until(start_at)
        if at_start is not None:
            at_start()
        out = [results.get(timeout=3600) for _ in processes]
        for process in processes:
            process.join(timeout=30)
        return out
    finally:
        for process in processes:  # only ours, by PID
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGKILL)
                process.join(timeout=10)


# -- the processes under test ---------------------------------------------------------------


def Serve(state: Path, env: dict[str, str], workers: int = 1, repo: Path = REPO) -> Any:
    """``otel-luna serve --grpc-port 0 --http-port 0 --workers N`` with ``env`` (where it writes
    and how) on top of a state directory of its own: the tests' :class:`Serve`
    (``tests/support/servehelpers.py``) running ``repo``'s code (another checkout to compare
    commits), with none of this process's ``OTEL_EXPORTER_LUNA_*``, SIGTERMed if this process
    dies. Its ``dead_letter`` is the dead-letter file; ``stop()`` gives the exit status, also
    when serve had to be killed."""
    sys.path.insert(0, str(REPO))  # for tests.support
    from tests.support import servehelpers
    from tests.support.waiting import wait_until

    class BenchServe(servehelpers.Serve):
        def stop(self) -> int:  # type: ignore[override]
            try:
                return super().stop()
            except AssertionError:  # killed after STOP_TIMEOUT
                return self.popen.returncode

    state.mkdir(parents=True, exist_ok=True)
    dead_letter = state / "dead-letter.jsonl"
    full = {
        "OTEL_EXPORTER_LUNA_SPOOL_DIR": str(state / "spool"),
        "OTEL_EXPORTER_LUNA_DEAD_LETTER": str(dead_letter),
        "XDG_STATE_HOME": str(state),
        **env,
    }
    try:
        serve = BenchServe(
            full,
            *("--workers", str(workers)),
            repo=repo,
            clean_env=True,
            die_with_parent=True,
            stop_timeout=STOP_TIMEOUT,
        )
    except AssertionError as error:
        raise RuntimeError(str(error)) from None
    serve.dead_letter = dead_letter
    if workers > 1:  # its workers' pids: printed after the ports
        wait_until(lambda: serve.pids[1:], timeout=START_TIMEOUT, what="serve's workers line")
    return serve


def influx_env(url: str, database: str, spool: str = "disk") -> dict[str, str]:
    """The settings of a serve writing to InfluxDB 1.x at ``url``."""
    return {
        "OTEL_EXPORTER_LUNA_ENDPOINT": url,
        "OTEL_EXPORTER_LUNA_API_VERSION": "1",
        "OTEL_EXPORTER_LUNA_DATABASE": database,
        "OTEL_EXPORTER_LUNA_SPOOL": spool,
    }


def _stored(influx: Any, database: str) -> int:
    """``requests`` points in ``database`` (one per SERVER span)."""
    rows = influx.select("SELECT count(execution_time) FROM requests", database)
    return int(rows[0]["count"]) if rows else 0


def wait_count(
    count: Callable[[], int], expected: int, interval: float = 0.2
) -> tuple[float | None, int]:
    """Poll ``count()`` until it reaches ``expected``, for at most STORE_TIMEOUT: (when it did,
    or None; the last count). The tests' ``wait_until`` (``tests/support/waiting.py``)."""
    sys.path.insert(0, str(REPO))  # for tests.support
    from tests.support.waiting import wait_until

    last = [0]

    def probe() -> int:
        last[0] = count()
        return last[0]

    try:
        wait_until(probe, lambda n: n >= expected, STORE_TIMEOUT, "stored", interval=interval)
    except AssertionError:
        return None, last[0]
    return time.time(), last[0]


def _wait_stored(influx: Any, database: str, expected: int) -> tuple[float | None, int]:
    """Poll until ``database`` holds ``expected`` requests points: (when, how many)."""
    return wait_count(lambda: _stored(influx, database), expected)


# -- the workloads --------------------------------------------------------------------------


class Bench:
    def __init__(self, options: Any, root: Path, influx: Any, templates: list[Any]) -> None:
        self.options = options
        self.root = root
        self.influx = influx
        self.templates = templates
        self.serves = 0
        requests = Requests(templates, options.n)
        self.bodies = [requests.body(k) for k in range(options.decode_requests)]
        self.decode_spans = len(self.bodies) * options.n

    def _serve(self, name: str, replicas: int = 1) -> tuple[list[Serve], str]:
        """``replicas`` fresh serve processes writing to one fresh database."""
        self.serves += 1
        database = f"bench_{self.serves}_{name}"
        self.influx.create_database(database)
        serves: list[Serve] = []
        try:
            for replica in range(replicas):
                state = self.root / f"{database}_{replica}"
                serves.append(
                    Serve(state, influx_env(self.influx.url, database, self.options.spool))
                )
        except BaseException:
            for serve in serves:
                self._finish(serve)
            raise
        return serves, database

    def _finish(self, serve: Serve) -> None:
        code = serve.stop()
        if code != 0:
            print(f"warning: serve exited {code}:\n{serve.output}", file=sys.stderr)
        if serve.dead_letter.exists() and serve.dead_letter.stat().st_size:
            print(f"warning: dead letters in {serve.dead_letter}", file=sys.stderr)

    def served(self, spy_output: Path | None = None) -> dict[str, Any]:
        """Send as fast as serve accepts for --seconds; then wait until InfluxDB has it all.

        With ``--replicas N``, N serve processes share the database and client process i
        sends to replica i mod N.
        """
        options = self.options
        replicas = 1 if spy_output else options.replicas
        serves, database = self._serve("profile" if spy_output else "load", replicas)
        spy = None
        try:
            clients = max(options.clients, replicas)
            jobs = [
                {
                    "templates": self.templates,
                    "spans": options.n,
                    "target": serves[index % replicas].grpc_target,
                    "processes": clients,
                    "threads": options.threads,
                    "index": index,
                    "seconds": options.seconds,
                }
                for index in range(clients)
            ]
            if spy_output is not None:
                spy = _start_py_spy(serves[0].pid, spy_output, options.connect_seconds, options)

            cpu = CpuSampler(
                lambda: {"serve": [serve.pid for serve in serves], "influxd": [self.influx.pid]}
            ).totals

            cpu0: dict[str, float] = {}
            results = _run_clients(
                _sender, jobs, options.connect_seconds, at_start=lambda: cpu0.update(cpu())
            )
            start_at = jobs[0]["start_at"]
            spans = sum(r.get("spans", 0) for r in results)
            last_answer = max(r["last_answer"] for r in results)
            stored_at, stored = _wait_stored(self.influx, database, spans)
            cpu1 = cpu()
            if spy is not None:
                spy.wait(timeout=options.seconds + 60)
            accepted_seconds = last_answer - start_at
            end_seconds = (stored_at or time.time()) - start_at
            errors: collections.Counter[str] = collections.Counter()
            for r in results:
                errors.update({k: v for k, v in r.items() if k.startswith("error_")})
            return {
                "replicas": replicas,
                "spans": spans,
                "calls": sum(r.get("calls", 0) for r in results),
                "refused_spool_full": sum(r.get("refused", 0) for r in results),
                "errors": dict(errors),
                "accepted_seconds": round(accepted_seconds, 3),
                "accepted_spans_per_s": spans / accepted_seconds,
                "stored_requests_points": stored,
                "all_stored": stored_at is not None,
                "end_to_end_seconds": round(end_seconds, 3),
                "end_to_end_spans_per_s": spans / end_seconds if stored_at else 0.0,
                # CPU from the clients' start until InfluxDB held everything (serve: every
                # thread of every replica, gRPC core ones included; influxd: writes,
                # compactions and our count() queries)
                "cpu_seconds": {
                    "serve": round(cpu1["serve"] - cpu0["serve"], 2),
                    "influxd": round(cpu1["influxd"] - cpu0["influxd"], 2),
                    "clients": round(sum(r["cpu_s"] for r in results), 2),
                    # everything else on the machine meanwhile (other sessions' work, the
                    # kernel, this process polling InfluxDB): the noise in this round
                    "others": round(
                        (cpu1["machine"] - cpu0["machine"])
                        - (cpu1["serve"] - cpu0["serve"])
                        - (cpu1["influxd"] - cpu0["influxd"])
                        - sum(r["cpu_s"] for r in results),
                        2,
                    ),
                },
            }
        finally:
            if spy is not None and spy.poll() is None:
                spy.terminate()
                spy.wait(timeout=30)
            for serve in serves:
                self._finish(serve)

    def latency(self, spans_per_s: float) -> dict[str, Any]:
        """Paced at ``spans_per_s``: per-call latency from the scheduled start to the answer."""
        options = self.options
        (serve,), database = self._serve("latency")
        try:
            interval = options.n / spans_per_s
            calls = max(1, int(options.latency_seconds / interval))
            job = {
                "templates": self.templates,
                "spans": options.n,
                "target": serve.grpc_target,
                "interval": interval,
                "calls": calls,
            }
            (result,) = _run_clients(_pacer, [job], options.connect_seconds)
            done = result["done"]
            ok = [d for d in done if d[2] == "OK"]
            stored_at, stored = _wait_stored(self.influx, database, len(ok) * options.n)
            latencies = sorted(d[0] * 1000 for d in ok)
            service = sorted(d[1] * 1000 for d in ok)
            return {
                "target_spans_per_s": round(spans_per_s),
                "calls_per_s": round(1 / interval, 2),
                "calls": calls,
                "answered_ok": len(ok),
                "other_answers": dict(collections.Counter(d[2] for d in done if d[2] != "OK")),
                "late_starts": result["late_starts"],
                "latency_ms": _percentiles(latencies),
                "latency_from_submit_ms": _percentiles(service),
                "all_stored": stored_at is not None,
                "stored_requests_points": stored,
            }
        finally:
            self._finish(serve)

    def decode_floor(self) -> int:
        """ns to decode every body: ``FromString`` + ``span_records``."""
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        from otel_luna.serve._otlp import span_records

        parse = ExportTraceServiceRequest.FromString
        begin = time.perf_counter_ns()
        for body in self.bodies:
            for _ in span_records(parse(body)):
                pass
        return time.perf_counter_ns() - begin

    def accept_path(self, profile: Any = None) -> int:
        """ns to decode and accept every body with a Receiver (sink that drops)."""
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        from otel_luna.serve import ServeSettings
        from otel_luna.serve._receiver import Receiver

        state = self.root / "accept-path"
        receiver = Receiver(
            ServeSettings.load(
                {},
                spool=self.options.spool,
                spool_dir=str(state / "spool"),
                dead_letter=str(state / "dead-letter.jsonl"),
                flush_interval=3600.0,
                batch_size=10**9,
            ),
            sink=NullSink(),
        )
        try:
            parse = ExportTraceServiceRequest.FromString
            accept = receiver.accept_traces
            if profile is not None:
                profile.enable()
            begin = time.perf_counter_ns()
            for body in self.bodies:
                accept(parse(body))
            elapsed = time.perf_counter_ns() - begin
            if profile is not None:
                profile.disable()
        finally:
            receiver.shutdown()
            shutil.rmtree(state, ignore_errors=True)
        return elapsed


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    cuts = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else []

    def at(p: int) -> float:
        return round(cuts[p - 1] if cuts else values[0], 2)

    return {"p50": at(50), "p90": at(90), "p99": at(99), "max": round(values[-1], 2)}


# -- where serve's time goes ----------------------------------------------------------------


def _py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def _start_py_spy(pid: int, output: Path, delay: float, options: Any) -> subprocess.Popen[bytes]:
    """``py-spy record`` of ``pid`` for the load part of a round (raw collapsed stacks)."""
    argv = [
        _py_spy() or "py-spy",
        "record",
        "--pid",
        str(pid),
        "--format",
        "raw",
        "--output",
        str(output),
        "--duration",
        str(int(delay + options.seconds)),
        "--rate",
        "100",
        "--nolineno",
        "--threads",
        "--nonblocking",
    ]
    with open(output.with_suffix(".log"), "wb") as log:  # the child keeps its own copy
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log
        )


def _frame_name(frame: str) -> str:
    """``function (module.py)`` from py-spy's ``function (path/module.py)``."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rstrip(')').rsplit('/', 1)[-1]})" if where else name


_ROLES = (  # (thread name prefix, what the thread does in serve)
    ("ThreadPoolExecutor", "gRPC Export handlers (decode, map, encode, spool append)"),
    ("otel-luna-writer", "writer threads (spool -> InfluxDB /write)"),
    ("otlp-http", "OTLP/HTTP server"),
    ("MainThread", "main thread"),
)


def _role(thread: str) -> str:
    """What a thread does, from py-spy's ``thread (tid): name`` root frame."""
    name = thread.partition(": ")[2]
    if not name:
        return "unnamed threads"
    if name.endswith("(_serve)"):  # Python names a thread after its target
        return "grpcio server loop (Python part)"
    for prefix, role in _ROLES:
        if name.startswith(prefix):
            return role
    return name.rstrip("0123456789-_") or "unnamed"


def _step(frames: list[str]) -> str:
    """The step of the accept path a sample is in: its innermost otel_luna frame."""
    for frame in reversed(frames):
        module = frame.rpartition("(")[2].rstrip(")")
        if module == "otlp.py":
            return "decode: span_records (OTLP attributes -> dicts)"
        if module == "requests.py":
            return "map: RequestMapper"
        if module == "lineprotocol.py":
            return "encode: line protocol"
        if module in ("spool.py", "writer.py", "deadletters.py"):
            return "spool / delivery"
        if module in ("influx_v1.py", "http.py"):
            return "sink: HTTP write to InfluxDB"
        if module == "__init__.py":
            return "ingest and receiver glue"
        if module == "serve.py":
            return "serve.py handler (FromString, response)"
    return "grpcio / threading / other (no otel_luna frame)"


def summarize_py_spy(path: Path, top: int = 12) -> dict[str, Any]:
    """Shares of py-spy's samples: per thread role, per accept-path step, per function."""
    inclusive: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    roles: collections.Counter[str] = collections.Counter()
    steps: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        thread, *rest = stack.split(";")
        frames = [_frame_name(frame) for frame in rest]
        if not frames:
            continue
        total += count
        roles[_role(thread)] += count
        steps[_step(frames)] += count
        for name in set(frames):
            inclusive[name] += count
        leaf[frames[-1]] += count

    def shares(counter: collections.Counter[str], limit: int = top) -> list[tuple[str, float]]:
        return [(name, round(count / total, 3)) for name, count in counter.most_common(limit)]

    return {
        "samples": total,
        "threads": shares(roles),
        "steps": shares(steps),
        "inclusive": shares(inclusive),
        "self": shares(leaf),
    }


def cprofile_accept_path(bench: Bench, top: int = 10) -> list[tuple[str, float]]:
    """cProfile of the in-process accept path: share of time per function (self time)."""
    import cProfile
    import pstats

    profile = cProfile.Profile()
    bench.accept_path(profile)
    stats = pstats.Stats(profile)
    total = sum(entry[2] for entry in stats.stats.values())  # type: ignore[attr-defined]
    rows = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)  # type: ignore[attr-defined]
    out = []
    for (filename, _line, function), entry in rows[:top]:
        module = filename.rsplit("/", 1)[-1] if filename != "~" else "builtin"
        out.append((f"{function} ({module})", round(entry[2] / total, 3)))
    return out


def _spin(n: int) -> float:
    begin = time.perf_counter()
    total = 0
    for i in range(n):
        total += i
    return time.perf_counter() - begin


def parallel_cores(n: int = 10_000_000) -> float:
    """How many cores' worth of CPU two busy processes get: 2 x (one alone ÷ two together).

    2.0 on two idle physical cores; less when the two CPUs are hyperthreads of one core, or
    the machine is shared (steal time).
    """
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        pool.map(_spin, [n // 10, n // 10])  # start and warm both workers
        alone = min(pool.apply(_spin, (n,)) for _ in range(2))
        begin = time.perf_counter()
        pool.map(_spin, [n, n])
        together = time.perf_counter() - begin
    return round(2 * alone / together, 2)


# -- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__.split("\n")[0], rounds=3, n=512, n_help="spans per OTLP request")
    parser.set_defaults(warmup=0)
    parser.add_argument("--seconds", type=float, default=10.0, help="sending per round (10)")
    parser.add_argument("--clients", type=int, default=2, help="client processes (2)")
    parser.add_argument(
        "--replicas", type=int, default=1, help="serve processes sharing the load (1)"
    )
    parser.add_argument("--threads", type=int, default=2, help="calls in flight per client (2)")
    parser.add_argument("--templates", type=int, default=8, help="distinct requests (8)")
    parser.add_argument(
        "--latency-seconds", type=float, default=10.0, help="paced phase length (10)"
    )
    parser.add_argument(
        "--decode-requests", type=int, default=64, help="requests decoded in-process (64)"
    )
    parser.add_argument(
        "--spool", choices=("disk", "memory"), default="disk", help="serve's spool (disk)"
    )
    parser.add_argument(
        "--connect-seconds", type=float, default=8.0, help="time given to clients to connect"
    )
    parser.add_argument("--no-py-spy", action="store_true", help="skip the profiled round")
    options = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))  # for tests.support
    from tests.support.servers import start_influxdb1

    with tempfile.TemporaryDirectory(prefix="otel-luna-serve-bench-") as tmp:
        root = Path(tmp)
        influx = start_influxdb1(root / "influxdb")
        try:
            return _run(options, root, influx)
        finally:
            influx.stop()  # by its PID


def _run(options: Any, root: Path, influx: Any) -> int:
    started = time.perf_counter()
    load_average = os.getloadavg()[0]
    cores = parallel_cores()
    templates = make_templates(options.templates, options.n, options.seed)
    bench = Bench(options, root, influx, templates)
    bench.decode_floor()  # warm caches and imports, untimed
    bench.accept_path()
    rounds: list[dict[str, Any]] = []
    names = ["served", "decode floor", "accept path"]
    for index in range(options.warmup + options.rounds):
        shift = index % len(names)
        figures: dict[str, Any] = {}
        for name in names[shift:] + names[:shift]:
            if name == "served":
                figures[name] = bench.served()
            elif name == "decode floor":
                figures[name] = bench.decode_spans / (bench.decode_floor() / 1e9)
            else:
                figures[name] = bench.decode_spans / (bench.accept_path() / 1e9)
        if index >= options.warmup:
            rounds.append(figures)

    def per_round(key: str) -> list[float]:
        return [r["served"][key] for r in rounds]

    floor = [r["decode floor"] for r in rounds]
    accept = [r["accept path"] for r in rounds]
    accepted = per_round("accepted_spans_per_s")
    end_to_end = per_round("end_to_end_spans_per_s")
    sustained = statistics.median(end_to_end)
    latency = bench.latency(sustained / 2) if sustained > 0 else {}
    profile = {"cprofile_accept_path_self": cprofile_accept_path(bench)}
    if not options.no_py_spy and _py_spy() is not None:
        output = root / "py-spy.raw"
        spied = bench.served(spy_output=output)
        profile["py_spy_round_end_to_end_spans_per_s"] = round(spied["end_to_end_spans_per_s"])
        if output.exists():
            profile["py_spy"] = summarize_py_spy(output)
        else:
            log = output.with_suffix(".log")
            profile["py_spy_error"] = log.read_text(errors="replace")[-2000:]
    elif not options.no_py_spy:
        profile["py_spy_error"] = "py-spy not found (pip install py-spy into the venv)"

    def ratio(values: list[float], to: list[float]) -> dict[str, float]:
        return summary([a / b for a, b in zip(values, to, strict=True)], 3)

    cpu = {
        who: summary([r["served"]["cpu_seconds"][who] for r in rounds], 2)
        for who in ("serve", "influxd", "clients", "others")
    }
    cpu_share = {
        who: summary(
            [r["served"]["cpu_seconds"][who] / r["served"]["end_to_end_seconds"] for r in rounds],
            2,
        )
        for who in ("serve", "influxd", "clients", "others")
    }
    cpu_per_span = {
        who: summary(
            [r["served"]["cpu_seconds"][who] / r["served"]["spans"] * 1e6 for r in rounds], 1
        )
        for who in ("serve", "influxd", "clients")
    }
    # serve's CPU as a rate (spans per second of one core, all its threads), beside the decode
    # floor (one thread in-process): how far serve is from the least work per span
    serve_per_core_second = [
        r["served"]["spans"] / max(r["served"]["cpu_seconds"]["serve"], 1e-9) for r in rounds
    ]
    report = {
        "benchmark": "serve_throughput",
        "what": "one otel-luna serve: OTLP/gRPC Export calls in, InfluxDB 1.x /write out",
        "target_spans_per_s": TARGET,
        "spans_per_s": {
            "decode_floor": summary(floor, 0),
            "accept_path_in_process": summary(accept, 0),
            "served_accepted": summary(accepted, 0),
            "served_end_to_end": summary(end_to_end, 0),
        },
        "serve_spans_per_cpu_second": summary(serve_per_core_second, 0),
        "ratio_to_decode_floor": {
            "accept_path_in_process": ratio(accept, floor),
            "served_accepted": ratio(accepted, floor),
            "served_end_to_end": ratio(end_to_end, floor),
            "serve_spans_per_cpu_second": ratio(serve_per_core_second, floor),
        },
        "ratio_to_target": {
            "decode_floor": summary([v / TARGET for v in floor], 3),
            "served_accepted": summary([v / TARGET for v in accepted], 3),
            "served_end_to_end": summary([v / TARGET for v in end_to_end], 3),
        },
        "within_target": sustained >= TARGET,
        "latency_at_half_sustained_rate": latency,
        "cpu_seconds_per_load_round": cpu,
        "cpu_share_of_wall_time": cpu_share,
        # CPU time per span (all threads): what a replica costs wherever it runs
        "cpu_us_per_span": cpu_per_span,
        "profile": profile,
        "rounds": rounds,
        "setup": {
            "spans_per_request": options.n,
            "bytes_per_request": round(statistics.mean(len(t[0]) for t in templates)),
            "templates": options.templates,
            "serve_replicas": options.replicas,
            "client_processes": max(options.clients, options.replicas),
            "calls_in_flight_per_client": options.threads,
            "seconds_per_round": options.seconds,
            "rounds": options.rounds,
            "spool": options.spool,
            "decode_spans_per_round": bench.decode_spans,
            "cpus": os.cpu_count(),
            "effective_parallel_cores": cores,  # probed at the start, others' load included
            "load_average_1min_at_start": round(load_average, 2),
            "influxdb": influx.version,
        },
        "seconds": round(time.perf_counter() - started, 1),
        "environment": _environment(),
    }
    if options.json:
        dump(report)
    else:
        _print(report)
    return 0


def _environment() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    env = environment()
    for name in ("grpcio", "protobuf", "opentelemetry-proto"):
        try:
            env["packages"][name] = version(name)
        except PackageNotFoundError:
            env["packages"][name] = None
    return env


def _print(report: dict[str, Any]) -> None:
    setup = report["setup"]
    print(
        f"serve throughput: {setup['serve_replicas']} `otel-luna serve` process(es), OTLP/gRPC "
        f"in ({setup['spans_per_request']} "
        f"SERVER spans, ~{setup['bytes_per_request'] // 1024} KiB per Export call; "
        f"{setup['client_processes']} client processes x {setup['calls_in_flight_per_client']} "
        f"calls in flight), InfluxDB {setup['influxdb']} out ({setup['spool']} spool); "
        f"{setup['rounds']} rounds x {setup['seconds_per_round']:g} s; {setup['cpus']} CPUs "
        f"(worth {setup['effective_parallel_cores']} cores in parallel); "
        f"{report['seconds']:.0f} s"
    )
    print()
    rows = [["spans/s", "median", "min", "max", "÷ decode floor", "÷ 100k target"]]
    labels = {
        "decode_floor": "decode floor (FromString + span_records)",
        "accept_path_in_process": "accept path in-process (decode+map+encode+spool)",
        "served_accepted": "serve: accepted (Export answered OK)",
        "served_end_to_end": "serve: end-to-end (all points in InfluxDB)",
    }
    for key, label in labels.items():
        stats = report["spans_per_s"][key]
        floor = report["ratio_to_decode_floor"].get(key, {"median": 1.0})
        goal = stats["median"] / TARGET
        rows.append(
            [
                label,
                f"{stats['median']:,.0f}",
                f"{stats['min']:,.0f}",
                f"{stats['max']:,.0f}",
                f"{floor['median']:.2f}",
                f"{goal:.2f}",
            ]
        )
    per_core = report["serve_spans_per_cpu_second"]
    rows.append(
        [
            "serve: spans per core-second of its CPU",
            f"{per_core['median']:,.0f}",
            f"{per_core['min']:,.0f}",
            f"{per_core['max']:,.0f}",
            f"{report['ratio_to_decode_floor']['serve_spans_per_cpu_second']['median']:.2f}",
            "",
        ]
    )
    table(rows)
    latency = report["latency_at_half_sustained_rate"]
    if latency:
        lat = latency["latency_ms"]
        print()
        print(
            f"latency at half the sustained rate ({latency['target_spans_per_s']:,} spans/s = "
            f"{latency['calls_per_s']} calls/s, {latency['answered_ok']}/{latency['calls']} "
            f"OK): p50 {lat.get('p50')} ms, p90 {lat.get('p90')} ms, p99 {lat.get('p99')} ms, "
            f"max {lat.get('max')} ms; all points stored: {latency['all_stored']}"
        )
    print()
    share = report["cpu_share_of_wall_time"]
    print(
        "CPU per load round, share of one core over the end-to-end time (median): "
        + ", ".join(f"{who} {share[who]['median']:.2f}" for who in share)
    )
    per_span = report["cpu_us_per_span"]
    print(
        "CPU time per span (median): "
        + ", ".join(f"{who} {per_span[who]['median']:.1f} µs" for who in per_span)
    )
    profile = report["profile"]
    print(
        "cProfile of the in-process accept path, self time: "
        + ", ".join(
            f"{name} {value:.0%}" for name, value in profile["cprofile_accept_path_self"][:6]
        )
    )
    spy = profile.get("py_spy")
    if spy:
        print(f"py-spy on serve under load ({spy['samples']} samples, non-idle threads):")
        print("  threads:   " + ", ".join(f"{n} {v:.0%}" for n, v in spy["threads"][:5]))
        print("  steps:     " + ", ".join(f"{n} {v:.0%}" for n, v in spy["steps"]))
        print("  inclusive: " + ", ".join(f"{n} {v:.0%}" for n, v in spy["inclusive"][:10]))
        print("  self:      " + ", ".join(f"{n} {v:.0%}" for n, v in spy["self"][:8]))
    elif "py_spy_error" in profile:
        print(f"py-spy: {profile['py_spy_error'].strip()[:300]}")
    print()
    e2e = report["spans_per_s"]["served_end_to_end"]["median"]
    print(
        f"target >= {TARGET:,} spans/s end-to-end: "
        f"{'met' if report['within_target'] else 'NOT met'} (median {e2e:,.0f} = "
        f"{e2e / TARGET:.2f} of the target; decode floor "
        f"{report['spans_per_s']['decode_floor']['median']:,.0f})"
    )


if __name__ == "__main__":
    sys.exit(main())
