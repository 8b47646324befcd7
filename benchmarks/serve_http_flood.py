"""A good OTLP/HTTP client of ``otel-luna serve`` beside a flood of large unauthenticated bodies.

    .venv/bin/python benchmarks/serve_http_flood.py [--clients 64] [--mib 16] [--seconds 10]
        [--rounds 1] [--rate 50] [--compare PATH] [--json]

Setup: ``otel-luna serve`` as a child process on free ports of 127.0.0.1 with a bearer token
(``OTEL_EXPORTER_LUNA_SERVE_TOKEN``) and a file sink in a temporary directory, product defaults
otherwise. With ``--compare PATH`` (another checkout, e.g. a worktree of the commit before), each
round runs the same measurement against a serve of this checkout and one of ``PATH``, in an
order that rotates from round to round: a before/after in one run.

Flood: a separate process with ``--clients`` (64) threads; each connects, sends a
``POST /v1/traces`` head declaring ``--mib`` (16) MiB *without the token*, then the whole body
with ``sendall`` (as ``requests`` does: the body is written before the answer is read), then
reads the answer and closes; and again, until the flood ends. Counted per attempt: the answer
read (must be ``401``), or none (the connection reset or closed before the client could read
it: a real client would retry blindly).

Good client: this process, one keep-alive ``requests.Session`` with the token, posting a
one-span request every 1/``--rate`` s (50/s) for ``--seconds`` (10), first without the flood
(quiet), then beside it (the flood has one second to get going). Latency of each post: p50, p99,
max.

Reported per serve: the good client's latency quiet and under the flood, serve's peak RSS
(``VmRSS`` sampled every 20 ms during the flood, and ``VmHWM``), serve's CPU during the flood,
and the flood's attempts by outcome. Exit status 0 whatever the figures. serve and the flood
process are stopped by their PIDs.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import os
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import cpu_seconds, dump, machine_busy_seconds, table
from serve_throughput import REPO, Serve

TOKEN = "flood-token"
TRACES = "/v1/traces"
START_TIMEOUT = 30.0


def serve_env(root: Path) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_LUNA_ENDPOINT": f"file://{root / 'points.lp'}",
        "OTEL_EXPORTER_LUNA_SERVE_TOKEN": TOKEN,
    }


def _vm(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of ``pid`` in MB (empty once it is gone)."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as file:
        for line in file:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    return out


# -- the flood (a process of its own) --------------------------------------------------------


def _status_line(sock: socket.socket) -> str | None:
    """The status code of the answer on ``sock``, or None when there is none to read."""
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                return None
            data += chunk
    except OSError:
        return None
    parts = data.split(b"\r\n", 1)[0].split()
    return parts[1].decode() if len(parts) > 1 else "?"


def _flood_thread(
    port: int, size: int, stop_at: float, counts: collections.Counter[str], lock: threading.Lock
) -> None:
    head = (
        f"POST {TRACES} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-protobuf\r\n"
        f"Content-Length: {size}\r\n\r\n"
    ).encode()
    body = memoryview(bytes(size))
    while time.time() < stop_at:
        outcome = "no answer"
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        except OSError:
            outcome = "connect failed"
            time.sleep(0.01)
        else:
            with sock:
                sent_all = True
                try:
                    sock.sendall(head)
                    sock.sendall(body)
                except OSError:
                    sent_all = False  # then read: the answer may be there all the same
                status = _status_line(sock)
                if status is not None:
                    outcome = status + ("" if sent_all else " (body cut)")
        with lock:
            counts[outcome] += 1


def _flood(job: dict[str, Any], results: Any) -> None:
    counts: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    threads = [
        threading.Thread(
            target=_flood_thread,
            args=(job["port"], job["size"], job["stop_at"], counts, lock),
            daemon=True,
        )
        for _ in range(job["clients"])
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put(dict(counts))


# -- the good client -------------------------------------------------------------------------


def _good_body() -> bytes:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name, span.kind = b"\1" * 16, b"\2" * 8, "good", 2
    span.start_time_unix_nano = time.time_ns()
    span.end_time_unix_nano = span.start_time_unix_nano + 1000
    return request.SerializeToString()


def _good_client(url: str, seconds: float, rate: float) -> tuple[list[float], int]:
    """Latencies (s) of posts paced at ``rate``/s for ``seconds``, and how many failed."""
    import requests

    body = _good_body()
    headers = {"Content-Type": "application/x-protobuf", "Authorization": f"Bearer {TOKEN}"}
    times: list[float] = []
    failed = 0
    with requests.Session() as session:
        started = time.perf_counter()
        index = 0
        while time.perf_counter() - started < seconds:
            due = started + index / rate
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            index += 1
            begun = time.perf_counter()
            try:
                answer = session.post(url, data=body, headers=headers, timeout=30)
                if answer.status_code != 200:
                    failed += 1
            except requests.RequestException:
                failed += 1
                continue
            times.append(time.perf_counter() - begun)
    return times, failed


def _percentiles(times: list[float]) -> dict[str, float]:
    if not times:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan"), "n": 0}
    ordered = sorted(times)
    return {
        "p50_ms": round(statistics.median(ordered) * 1e3, 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3, 2),
        "max_ms": round(ordered[-1] * 1e3, 2),
        "n": len(ordered),
    }


# -- one measurement -------------------------------------------------------------------------


def measure(options: Any, repo: Path, root: Path) -> dict[str, Any]:
    serve = Serve(root, serve_env(root), repo=repo)
    url = f"http://127.0.0.1:{serve.http_port}{TRACES}"
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    flood: Any = None
    peak = {"VmRSS": 0.0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak["VmRSS"] = max(peak["VmRSS"], _vm(serve.pid).get("VmRSS", 0.0))
            time.sleep(0.02)

    try:
        quiet, quiet_failed = _good_client(url, min(options.seconds, 5.0), options.rate)
        before = _vm(serve.pid)
        job = {
            "port": serve.http_port,
            "size": options.mib << 20,
            "clients": options.clients,
            "stop_at": time.time() + 1.0 + options.seconds,
        }
        flood = context.Process(target=_flood, args=(job, results), daemon=True)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        flood.start()
        time.sleep(1.0)
        cpu_before = cpu_seconds(serve.pid)
        flood_before = cpu_seconds(flood.pid)
        machine_before = machine_busy_seconds()
        loaded, loaded_failed = _good_client(url, options.seconds, options.rate)
        cpu = cpu_seconds(serve.pid) - cpu_before
        flood_cpu = cpu_seconds(flood.pid) - flood_before
        machine = machine_busy_seconds() - machine_before
        outcomes = results.get(timeout=START_TIMEOUT + options.seconds + 60)
        flood.join(timeout=30)
        done.set()
        sampler.join()
        after = _vm(serve.pid)
    finally:
        done.set()
        if flood is not None and flood.is_alive() and flood.pid is not None:
            os.kill(flood.pid, signal.SIGKILL)  # only ours, by PID
            flood.join(timeout=10)
        exit_status = serve.stop()
    return {
        "serve_from": str(repo),
        "good_quiet": {**_percentiles(quiet), "failed": quiet_failed},
        "good_under_flood": {**_percentiles(loaded), "failed": loaded_failed},
        "rss_mb_before": round(before.get("VmRSS", 0.0), 1),
        "rss_mb_peak_sampled": round(peak["VmRSS"], 1),
        "rss_mb_peak_vmhwm": round(after.get("VmHWM", 0.0), 1),
        "serve_cpu_share_under_flood": round(cpu / options.seconds, 2),
        "flood_cpu_share": round(flood_cpu / options.seconds, 2),
        "machine_cpu_share": round(machine / options.seconds, 2),
        "flood_attempts": outcomes,
        "serve_exit_status": exit_status,
    }


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=64, help="flooding clients (64)")
    parser.add_argument("--mib", type=int, default=16, help="MiB per flooding body (16)")
    parser.add_argument("--seconds", type=float, default=10.0, help="flood duration (10)")
    parser.add_argument("--rate", type=float, default=50.0, help="good posts per second (50)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds (1)")
    parser.add_argument("--compare", type=Path, help="another checkout to measure in turn")
    parser.add_argument("--json", action="store_true", help="print JSON")
    options = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))  # for tests.support
    repos = [REPO] + ([options.compare.resolve()] if options.compare else [])
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="otel-luna-http-flood-") as tmp:
        for index in range(options.rounds):
            shift = index % len(repos)
            for number, repo in enumerate(repos[shift:] + repos[:shift]):
                run = measure(options, repo, Path(tmp) / f"r{index}-{number}")
                run["round"] = index
                runs.append(run)
                if not options.json:
                    print(f"round {index}, serve from {repo}: {run}", file=sys.stderr)
    if options.json:
        dump({"options": {k: str(v) for k, v in vars(options).items()}, "runs": runs})
        return 0
    rows = [
        [
            "serve from",
            "round",
            "quiet p50/p99 ms",
            "flood p50/p99/max ms",
            "RSS peak MB",
            "serve CPU",
            "flood attempts",
        ]
    ]
    for run in runs:
        quiet, loaded = run["good_quiet"], run["good_under_flood"]
        rows.append(
            [
                Path(run["serve_from"]).name,
                str(run["round"]),
                f"{quiet['p50_ms']:.1f} / {quiet['p99_ms']:.1f}",
                f"{loaded['p50_ms']:.1f} / {loaded['p99_ms']:.1f} / {loaded['max_ms']:.0f}"
                + (f" ({loaded['failed']} failed)" if loaded["failed"] else ""),
                f"{max(run['rss_mb_peak_sampled'], 0):.0f} (HWM {run['rss_mb_peak_vmhwm']:.0f})",
                f"{run['serve_cpu_share_under_flood']:.2f} / {run['flood_cpu_share']:.2f}"
                f" / {run['machine_cpu_share']:.2f}",
                ", ".join(f"{k}: {v}" for k, v in sorted(run["flood_attempts"].items())),
            ]
        )
    table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
