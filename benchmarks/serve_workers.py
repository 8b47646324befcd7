"""``otel-luna serve --workers 2`` against one worker: OTLP/gRPC in, a file sink or InfluxDB out.

    .venv/bin/python benchmarks/serve_workers.py [--rounds 3] [--seconds 10] [--n 512]
        [--workers 2] [--clients 4] [--threads 2] [--sinks file,influxdb] [--json]

The requests, clients and InfluxDB are those of ``serve_throughput.py`` (Export calls of
``--n`` realistic SERVER spans, ~350 KiB each, every span a distinct point), with one
difference: each client thread has a gRPC channel of its own, with its own connection
(``grpc.use_local_subchannel_pool``), because the kernel spreads *connections* over the workers
that share the port (``SO_REUSEPORT``), not calls: ``--clients`` processes x ``--threads``
threads = 8 connections, each with one call in flight.

Each of ``--rounds`` rounds runs, in an order that rotates from round to round, one load run per
(sink, worker count): ``--workers`` (2) and 1 worker, into a **file sink** (line protocol
appended to a file in the temporary directory) and into **InfluxDB** 1.x (the 1.x ``/write``
API, a fresh database per run), product defaults otherwise (disk spool, batches of 5000 lines,
1 s flush). A run: a fresh ``otel-luna serve --workers N``, the clients send as fast as it
accepts for ``--seconds``; then the run waits until the sink holds every span's ``requests``
point (the file is read as it grows; InfluxDB is polled with ``count()``).

Figures per run: *accepted* spans/s (spans in calls answered OK ÷ time from the first call to
the last answer), *end-to-end* spans/s (the same spans ÷ time until the sink holds them all),
and serve's CPU (supervisor and every worker, all threads, from ``/proc``) as **spans per
core-second** (spans ÷ serve CPU seconds; the inverse of CPU time per span). Per round, the
ratio of ``--workers`` to 1 worker for each sink; reported: median, min and max over rounds.
Also the machine's parallel capacity (how many cores two busy processes get; the development
machine's 2 vCPUs are shared). Exit status 0 whatever the figures; every process started is
stopped by its PID.
"""

from __future__ import annotations

import collections
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import CpuSampler, arguments, dump, summary, table
from serve_throughput import (
    REPO,
    Serve,
    _environment,
    _run_clients,
    _sender,
    _stored,
    influx_env,
    make_templates,
    parallel_cores,
    wait_count,
)


class _FileCount:
    """``requests`` lines in a growing line-protocol file, read incrementally."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._offset = 0
        self._tail = b"\n"  # the start of the file begins a line

    def __call__(self) -> int:
        try:
            with open(self.path, "rb") as file:
                file.seek(self._offset)
                data = file.read()
        except FileNotFoundError:
            return 0
        self._offset += len(data)
        text = self._tail + data
        cut = text.rfind(b"\n")
        if cut < 0:
            self._tail = text
            return self.count
        # Count the lines that start within text[:cut + 1]; keep the partial last line.
        self.count += text[: cut + 1].count(b"\nrequests,")
        self._tail = text[cut:]
        return self.count


class Bench:
    def __init__(self, options: Any, root: Path, influx: Any, templates: list[Any]) -> None:
        self.options = options
        self.root = root
        self.influx = influx
        self.templates = templates
        self.runs = 0

    def run(self, sink: str, workers: int) -> dict[str, Any]:
        options = self.options
        self.runs += 1
        name = f"run{self.runs}_{sink}_{workers}"
        state = self.root / name
        if sink == "file":
            points = state / "points.lp"
            env = {"OTEL_EXPORTER_LUNA_ENDPOINT": f"file://{points}"}
            count: Any = _FileCount(points)
        else:
            database = f"bench_{name}"
            self.influx.create_database(database)
            env = influx_env(self.influx.url, database)

            def count() -> int:
                return _stored(self.influx, database)

        serve = Serve(state, env, workers)
        try:
            clients = options.clients
            jobs = [
                {
                    "templates": self.templates,
                    "spans": options.n,
                    "target": serve.grpc_target,
                    "processes": clients,
                    "threads": options.threads,
                    "index": index,
                    "seconds": options.seconds,
                    "connection_per_thread": True,  # SO_REUSEPORT spreads connections
                }
                for index in range(clients)
            ]
            cpu0: dict[str, float] = {}

            cpu = CpuSampler(lambda: {"serve": serve.pids, "influxd": [self.influx.pid]}).totals

            results = _run_clients(
                _sender, jobs, options.connect_seconds, at_start=lambda: cpu0.update(cpu())
            )
            start_at = jobs[0]["start_at"]
            spans = sum(r.get("spans", 0) for r in results)
            last_answer = max(r["last_answer"] for r in results)
            stored_at, stored = wait_count(count, spans, interval=0.1)
            cpu1 = cpu()
        finally:
            code = serve.stop()
            if code != 0:
                print(f"warning: serve exited {code}:\n{serve.output}", file=sys.stderr)
        errors: collections.Counter[str] = collections.Counter()
        for r in results:
            errors.update({k: v for k, v in r.items() if k.startswith("error_")})
        accepted_seconds = last_answer - start_at
        end_seconds = (stored_at or time.time()) - start_at
        serve_cpu = cpu1["serve"] - cpu0["serve"]
        clients_cpu = sum(r["cpu_s"] for r in results)
        influxd_cpu = cpu1["influxd"] - cpu0["influxd"]
        return {
            "sink": sink,
            "workers": workers,
            "spans": spans,
            "calls": sum(r.get("calls", 0) for r in results),
            "refused": sum(r.get("refused", 0) for r in results),
            "errors": dict(errors),
            "accepted_spans_per_s": spans / accepted_seconds,
            "all_stored": stored_at is not None,
            "stored_requests_points": stored,
            "end_to_end_spans_per_s": spans / end_seconds if stored_at else 0.0,
            "serve_spans_per_core_second": spans / serve_cpu if serve_cpu else 0.0,
            "cpu_seconds": {
                "serve": round(serve_cpu, 2),
                "influxd": round(influxd_cpu, 2),
                "clients": round(clients_cpu, 2),
                "others": round(
                    cpu1["machine"] - cpu0["machine"] - serve_cpu - influxd_cpu - clients_cpu, 2
                ),
            },
            "cpu_share_of_wall_time": {
                "serve": round(serve_cpu / end_seconds, 2),
                "influxd": round(influxd_cpu / end_seconds, 2),
                # everything else on the machine (other sessions' work, this process): noise
                "others": round(
                    (cpu1["machine"] - cpu0["machine"] - serve_cpu - influxd_cpu - clients_cpu)
                    / end_seconds,
                    2,
                ),
            },
            "end_to_end_seconds": round(end_seconds, 2),
        }


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__.split("\n")[0], rounds=3, n=512, n_help="spans per OTLP request")
    parser.set_defaults(warmup=0)
    parser.add_argument("--seconds", type=float, default=10.0, help="sending per run (10)")
    parser.add_argument("--workers", type=int, default=2, help="workers compared with 1 (2)")
    parser.add_argument("--clients", type=int, default=4, help="client processes (4)")
    parser.add_argument("--threads", type=int, default=2, help="connections per client (2)")
    parser.add_argument("--templates", type=int, default=8, help="distinct requests (8)")
    parser.add_argument("--sinks", default="file,influxdb", help="file,influxdb (both)")
    parser.add_argument(
        "--connect-seconds", type=float, default=8.0, help="time given to clients to connect"
    )
    options = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))  # for tests.support
    from tests.support.servers import start_influxdb1

    with tempfile.TemporaryDirectory(prefix="otel-luna-serve-workers-") as tmp:
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
    sinks = [s for s in options.sinks.split(",") if s]
    names = [(sink, workers) for sink in sinks for workers in (options.workers, 1)]
    rounds: list[dict[str, Any]] = []
    for index in range(options.warmup + options.rounds):
        shift = index % len(names)
        figures = {}
        for sink, workers in names[shift:] + names[:shift]:
            figures[f"{sink}/{workers}"] = bench.run(sink, workers)
        if index >= options.warmup:
            rounds.append(figures)
    many = options.workers
    report: dict[str, Any] = {
        "benchmark": "serve_workers",
        "what": f"otel-luna serve --workers {many} vs 1: OTLP/gRPC in, file sink / InfluxDB out",
        "spans_per_s": {},
        "ratio_workers_to_one": {},
        "serve_spans_per_core_second": {},
        "cpu_share_of_wall_time": {},
    }
    for sink in sinks:
        for workers in (many, 1):
            key = f"{sink}/{workers}"
            runs = [r[key] for r in rounds]
            report["spans_per_s"][key] = {
                "accepted": summary([r["accepted_spans_per_s"] for r in runs], 0),
                "end_to_end": summary([r["end_to_end_spans_per_s"] for r in runs], 0),
            }
            report["serve_spans_per_core_second"][key] = summary(
                [r["serve_spans_per_core_second"] for r in runs], 0
            )
            report["cpu_share_of_wall_time"][key] = {
                who: summary([r["cpu_share_of_wall_time"][who] for r in runs], 2)
                for who in ("serve", "influxd", "others")
            }
        report["ratio_workers_to_one"][sink] = {
            what: summary([r[f"{sink}/{many}"][field] / r[f"{sink}/1"][field] for r in rounds], 3)
            for what, field in (
                ("accepted", "accepted_spans_per_s"),
                ("end_to_end", "end_to_end_spans_per_s"),
            )
        }
    report["all_stored"] = all(run["all_stored"] for r in rounds for run in r.values())
    report["errors"] = [run["errors"] for r in rounds for run in r.values() if run["errors"]]
    report["rounds"] = rounds
    report["setup"] = {
        "workers": many,
        "spans_per_request": options.n,
        "client_processes": options.clients,
        "connections_per_client": options.threads,
        "seconds_per_run": options.seconds,
        "rounds": options.rounds,
        "cpus": os.cpu_count(),
        "effective_parallel_cores": cores,
        "load_average_1min_at_start": round(load_average, 2),
        "influxdb": influx.version,
    }
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["environment"] = _environment()
    if options.json:
        dump(report)
    else:
        _print(report, sinks, many)
    return 0


def _print(report: dict[str, Any], sinks: list[str], many: int) -> None:
    setup = report["setup"]
    print(
        f"serve --workers {many} vs 1: OTLP/gRPC in ({setup['spans_per_request']} spans per "
        f"call, {setup['client_processes']} client processes x "
        f"{setup['connections_per_client']} connections), {setup['rounds']} rounds x "
        f"{setup['seconds_per_run']:g} s per run; {setup['cpus']} CPUs (worth "
        f"{setup['effective_parallel_cores']} cores in parallel); {report['seconds']:.0f} s"
    )
    print()
    rows = [
        [
            "spans/s (median, min-max)",
            "accepted",
            "end-to-end",
            "spans per serve core-s",
            "serve cores",
            "other load (cores)",
        ]
    ]
    for sink in sinks:
        for workers in (many, 1):
            key = f"{sink}/{workers}"
            spans = report["spans_per_s"][key]
            per_core = report["serve_spans_per_core_second"][key]
            rows.append(
                [
                    f"{sink}, {workers} worker{'s' if workers > 1 else ''}",
                    _range(spans["accepted"], ",.0f"),
                    _range(spans["end_to_end"], ",.0f"),
                    _range(per_core, ",.0f"),
                    _range(report["cpu_share_of_wall_time"][key]["serve"], ".2f"),
                    _range(report["cpu_share_of_wall_time"][key]["others"], ".2f"),
                ]
            )
    table(rows)
    print()
    for sink in sinks:
        ratio = report["ratio_workers_to_one"][sink]
        print(
            f"{sink}: {many} workers ÷ 1 (per round): accepted "
            f"{_range(ratio['accepted'], '.2f')}, end-to-end {_range(ratio['end_to_end'], '.2f')}"
        )
    print(f"every span stored: {report['all_stored']}; errors: {report['errors'] or 'none'}")


def _range(stats: dict[str, float], spec: str) -> str:
    return (
        f"{format(stats['median'], spec)} ({format(stats['min'], spec)}-"
        f"{format(stats['max'], spec)})"
    )


if __name__ == "__main__":
    sys.exit(main())
