"""Pings per second one process delivers to a local receiver with Ping Centre's contract.

Rows, interleaved in rounds (see ``_common.py``), each sending the same ``--n`` worker_works
pings (PingEncoder output, ~400 bytes each):

* ``naive requests.post`` — the baseline: one ``requests.post(url, data=ping)`` per ping, one
  after the other, a new connection each time (what a script without a session does);
* ``PingCentreSink, max_in_flight K`` (K = 1, 8, 32) — the real delivery path: the pings are
  handed to a ``BatchWriter`` (``submit``, disk spool as the product default; ``--spool memory``
  for the in-memory one) and timed until ``force_flush()`` returns, i.e. every ping was POSTed
  by ``PingCentreSink`` (one request per ping, at most K at once, reused connections) and
  answered 200.

The figure is pings/s per row and its ratio to the naive row **within each round** (median,
min, max over rounds).

The receiver is *not* the test stub (``tests/support/pingcentre_stub.py``, a ``ThreadingHTTPServer``
with a thread per connection): it is a stdlib ``asyncio`` HTTP/1.1 server (no uvloop) in a
separate process (this script with ``--receiver``), keep-alive, answering Ping Centre's way: 400
with an empty body when ``topic`` is missing, else 200 with an empty body. It reports the CPU
time it used, so the run can show it was not the bottleneck (its busy share of the timed wall
time is printed), and how many pings it took (checked against what was sent).

``--server-latency-ms MS`` makes the receiver wait before each answer, as a Ping Centre across a
network would: the case ``max_in_flight`` is for (on localhost the sender's CPU is the limit).

Usage: python benchmarks/pings.py [--rounds 5] [--n 1000] [--in-flight 1,8,32]
       [--server-latency-ms 0] [--spool disk|memory] [--json]
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import arguments, dump, environment, fmt, ratios, run_rounds, summary, table

# -- the receiver (a separate process) ----------------------------------------------------------

_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
_BAD = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"


class _Receiver(asyncio.Protocol):
    pings = 0
    rejected = 0
    latency = 0.0  # seconds before each answer (a far-away Ping Centre)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1").split("\r\n")
            length = 0
            close = False
            for line in head[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            answer = self._answer(head[0], body)
            if _Receiver.latency and not head[0].startswith("GET"):
                # Clients send the next request on a connection only after the answer.
                asyncio.get_running_loop().call_later(_Receiver.latency, self._send, answer, close)
            else:
                self._send(answer, close)
            if close:
                return

    def _send(self, answer: bytes, close: bool) -> None:
        if self.transport.is_closing():
            return
        self.transport.write(answer)
        if close:
            self.transport.close()

    def _answer(self, request_line: str, body: bytes) -> bytes:
        if request_line.startswith("GET /stats"):
            stats = json.dumps(
                {
                    "pings": _Receiver.pings,
                    "rejected": _Receiver.rejected,
                    "cpu_s": time.process_time(),
                }
            ).encode()
            return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(stats), stats)
        try:
            ping = json.loads(body)
        except ValueError:
            ping = None
        if isinstance(ping, dict) and "topic" in ping:
            _Receiver.pings += 1
            return _OK
        _Receiver.rejected += 1
        return _BAD


async def _serve(latency_ms: float) -> None:
    _Receiver.latency = latency_ms / 1000
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Receiver, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()


class ReceiverProcess:
    """This script with ``--receiver``, on a free port; stopped by its PID."""

    def __init__(self, latency_ms: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--receiver", str(latency_ms)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"the receiver did not start: {line!r}")
        self.url = f"http://127.0.0.1:{int(line)}/v3/links/ping-centre"
        self.stats_url = f"http://127.0.0.1:{int(line)}/stats"

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.stats_url, timeout=10) as response:
            result: dict[str, Any] = json.loads(response.read())
        return result

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# -- the workloads ------------------------------------------------------------------------------


def make_pings(n: int, seed: int) -> list[str]:
    """``n`` worker_works pings as the exporter encodes them."""
    from otel_luna.encoding._jsonping import PingEncoder
    from otel_luna.schema._point import Point

    rng = random.Random(seed)
    encoder = PingEncoder()
    now = time.time_ns()
    pings = []
    for index in range(n):
        error = rng.random() < 0.05
        tags = [("consumer_name", rng.choice(["screenshots", "send", "notes"]))]
        tags.append(("is_error", "true" if error else "false"))
        fields: dict[str, Any] = {
            "worker_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "watchdog_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "timing_sent": rng.randint(1, 400),
        }
        if not error:
            tags.append(("is_match", "true" if rng.random() < 0.1 else "false"))
            fields["photodna_tracking_id"] = f"1_photodna_{uuid.UUID(int=rng.getrandbits(128))}"
            fields["timing_received"] = rng.randint(50, 900)
            fields["timing_submitted"] = rng.randint(5, 200)
        point = Point("worker_works", tuple(sorted(tags)), fields, now + index * 1000)
        pings.append(encoder.encode_point(point))
    return pings


def naive_workload(url: str, pings: list[str]) -> Callable[[], int]:
    import requests

    bodies = [ping.encode() for ping in pings]
    headers = {"Content-Type": "application/json"}

    def run() -> int:
        start = time.perf_counter_ns()
        for body in bodies:
            response = requests.post(url, data=body, headers=headers, timeout=10)
            if response.status_code != 200:
                raise RuntimeError(f"receiver answered {response.status_code}")
        return time.perf_counter_ns() - start

    return run


class SinkWorkload:
    """A BatchWriter around a PingCentreSink with ``max_in_flight``; kept for the whole run."""

    def __init__(self, url: str, pings: list[str], in_flight: int, spool: str, root: str) -> None:
        from otel_luna.delivery._fallback_spool import open_spool
        from otel_luna.delivery._writer import BatchWriter
        from otel_luna.settings import Settings
        from otel_luna.sinks._pingcentre import PingCentreSink

        settings = Settings.load(
            {}, endpoint=url, schema="watchdog", sink="pingcentre", max_in_flight=in_flight
        )
        self.pings = pings
        self.writer = BatchWriter(
            PingCentreSink(settings),
            open_spool(spool, os.path.join(root, f"spool-{in_flight}"), 1 << 30),
            flush_interval=3600.0,  # only force_flush() writes: the timing covers one hand-off
            batch_size=settings.batch_size,
        )

    def __call__(self) -> int:
        start = time.perf_counter_ns()
        self.writer.submit(self.pings)
        if not self.writer.force_flush(120):
            raise RuntimeError("force_flush timed out")
        return time.perf_counter_ns() - start

    def close(self) -> dict[str, int]:
        self.writer.shutdown(10)
        return dict(self.writer.counts)


def main() -> None:
    if sys.argv[1:2] == ["--receiver"]:
        asyncio.run(_serve(float(sys.argv[2])))
        return
    parser = arguments(__doc__.partition("\n")[0], rounds=5, n=1000, n_help="pings per round")
    parser.add_argument(
        "--in-flight", default="1,8,32", help="max_in_flight settings (default 1,8,32)"
    )
    parser.add_argument("--spool", choices=["disk", "memory"], default="disk")
    parser.add_argument(
        "--server-latency-ms",
        type=float,
        default=0.0,
        help="the receiver waits this long before each answer (default 0: local)",
    )
    options = parser.parse_args()
    in_flight = [int(value) for value in options.in_flight.split(",")]

    receiver = ReceiverProcess(options.server_latency_ms)
    root = tempfile.mkdtemp(prefix="otel-luna-bench-pings-")
    sinks: dict[int, SinkWorkload] = {}
    try:
        pings = make_pings(options.n, options.seed)
        workloads: dict[str, Callable[[], int]] = {"naive": naive_workload(receiver.url, pings)}
        for k in in_flight:
            sinks[k] = SinkWorkload(receiver.url, pings, k, options.spool, root)
            workloads[f"sink{k}"] = sinks[k]
        before = receiver.stats()
        wall_start = time.perf_counter()
        times = run_rounds(workloads, rounds=options.rounds, warmup=options.warmup)
        wall = time.perf_counter() - wall_start
        after = receiver.stats()
        counts = {k: sink.close() for k, sink in sinks.items()}
    finally:
        receiver.stop()
    sent = options.n * len(workloads) * (options.rounds + options.warmup)
    received = after["pings"] - before["pings"]
    busy = (after["cpu_s"] - before["cpu_s"]) / wall

    names = {"naive": "naive requests.post, new connection per ping"}
    names.update({f"sink{k}": f"PingCentreSink, max_in_flight {k}" for k in in_flight})
    rates = {
        name: summary([options.n / (t / 1e9) for t in values], 1) for name, values in times.items()
    }
    versus = {name: summary(ratios(times["naive"], values), 2) for name, values in times.items()}
    result = {
        "benchmark": "pings",
        "receiver": "stdlib asyncio HTTP/1.1 server in a separate process",
        "n": options.n,
        "rounds": options.rounds,
        "spool": options.spool,
        "server_latency_ms": options.server_latency_ms,
        "pings_per_second": {names[name]: stats for name, stats in rates.items()},
        "ratio_to_naive": {names[name]: stats for name, stats in versus.items()},
        "check": {
            "sent": sent,
            "received": received,
            "rejected": after["rejected"] - before["rejected"],
            "receiver_busy_share": round(busy, 3),
            "writer_counts": {str(k): v for k, v in counts.items()},
        },
        "environment": environment(),
    }
    if options.json:
        dump(result)
        return
    rows = [["row", "pings/s", "min", "max", "x naive", "min", "max"]]
    for name in times:
        rows.append([names[name], *fmt(rates[name], ".0f"), *fmt(versus[name], ".2f")])
    table(rows)
    print(
        f"\n{options.n} pings per row and round, {options.rounds} rounds (+{options.warmup} "
        f"warm-up), {options.spool} spool; receiver: stdlib asyncio, separate process, "
        f"answering after {options.server_latency_ms:g} ms, busy "
        f"{busy:.0%} of the wall time; it took {received} of {sent} pings"
        + ("" if received == sent else "  <-- MISMATCH")
    )


if __name__ == "__main__":
    main()
