"""Memory of one ``otel-luna serve`` under a flood of large concurrent OTLP/gRPC calls.

    .venv/bin/python benchmarks/serve_grpc_flood.py [--calls 300] [--mib 15] [--channels 10]
        [--auth none|good] [--json]

Setup: ``otel-luna serve`` as a child process on free ports of 127.0.0.1 with a bearer token
(``OTEL_EXPORTER_LUNA_SERVE_TOKEN``) and a file sink in a temporary directory, product defaults
otherwise (``SERVE_MAX_CONNECTIONS`` 256, ``SERVE_MAX_INFLIGHT_BYTES`` 64 MiB, messages up to
16 MiB).

Flood: ``--calls`` (300) unary ``TraceService/Export`` calls of ``--mib`` (15) MiB each, all
started at once as asynchronous calls spread over ``--channels`` (10) gRPC channels (so as many
TCP connections), each with a 60 s deadline. The body is one valid ``ExportTraceServiceRequest``
holding one INTERNAL span whose attribute is a string of that size (decoded, it maps to
nothing). ``--auth none`` sends no token (the attack: every call must be refused
``UNAUTHENTICATED``); ``--auth good`` sends the right one (the calls are read, decoded and
accepted or refused ``RESOURCE_EXHAUSTED`` past the caps).

Reported: serve's peak RSS (``VmHWM``, and ``VmRSS`` sampled every 20 ms), its RSS before and
after, the status codes the calls got, the flood's duration, and whether a small good call is
answered ``OK`` afterwards. Exit status 0 whatever the figures. serve is stopped by its PID.
"""

from __future__ import annotations

import collections
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import dump
from serve_throughput import EXPORT, REPO, Serve

TOKEN = "flood-token"


def serve_env(root: Path) -> dict[str, str]:
    """serve writing to a file, with a bearer token (the flood has none, or the right one)."""
    return {
        "OTEL_EXPORTER_LUNA_ENDPOINT": f"file://{root / 'points.lp'}",
        "OTEL_EXPORTER_LUNA_SERVE_TOKEN": TOKEN,
    }


def _status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of ``pid`` in MB (empty once it is gone)."""
    out: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/status") as file:
            for line in file:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return out


def _body(mib: int) -> bytes:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name, span.kind = b"\1" * 16, b"\2" * 8, "flood", 1
    span.start_time_unix_nano = span.end_time_unix_nano = time.time_ns()
    attribute = span.attributes.add()
    attribute.key = "payload"
    attribute.value.string_value = "x" * (mib * 1024 * 1024 - 200)
    return request.SerializeToString()


def flood(options: Any, root: Path) -> dict[str, Any]:
    import grpc

    body = _body(options.mib)
    serve = Serve(root, serve_env(root))
    target = serve.grpc_target
    peak = {"VmRSS": 0.0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            rss = _status(serve.pid).get("VmRSS", 0.0)
            peak["VmRSS"] = max(peak["VmRSS"], rss)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    metadata = (("authorization", f"Bearer {TOKEN}"),) if options.auth == "good" else None
    channels = [grpc.insecure_channel(target) for _ in range(options.channels)]
    try:
        calls = [c.unary_unary(EXPORT, request_serializer=None) for c in channels]
        for call in calls:  # connected before the flood starts
            call(b"", timeout=30, metadata=(("authorization", f"Bearer {TOKEN}"),))
        time.sleep(0.5)
        before = _status(serve.pid)
        sampler.start()
        started = time.monotonic()
        futures = [
            calls[i % len(calls)].future(body, timeout=60, metadata=metadata)
            for i in range(options.calls)
        ]
        codes: collections.Counter[str] = collections.Counter()
        details: dict[str, str] = {}
        for future in futures:
            try:
                future.result()
                codes["OK"] += 1
            except grpc.RpcError as error:
                codes[error.code().name] += 1
                details.setdefault(error.code().name, error.details() or "")
        seconds = time.monotonic() - started
        time.sleep(1.0)
        after = _status(serve.pid)
        done.set()
        sampler.join()
        good = (
            calls[0]
            .with_call(b"", timeout=30, metadata=(("authorization", f"Bearer {TOKEN}"),))[1]
            .code()
        )
    finally:
        done.set()
        for channel in channels:
            channel.close()
        code = serve.stop()
    return {
        "calls": options.calls,
        "mib_per_call": options.mib,
        "channels": options.channels,
        "auth": options.auth,
        "codes": dict(codes),
        "details": details,
        "flood_seconds": round(seconds, 2),
        "rss_mb_before": round(before.get("VmRSS", 0.0), 1),
        "rss_mb_peak_sampled": round(peak["VmRSS"], 1),
        "rss_mb_peak_vmhwm": round(after.get("VmHWM", 0.0), 1),
        "rss_mb_after": round(after.get("VmRSS", 0.0), 1),
        "good_call_after": good.name,
        "serve_exit_status": code,
    }


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=300, help="concurrent calls (300)")
    parser.add_argument("--mib", type=int, default=15, help="MiB per call (15)")
    parser.add_argument("--channels", type=int, default=10, help="gRPC channels (10)")
    parser.add_argument("--auth", choices=("none", "good"), default="none", help="token (none)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    options = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))  # for tests.support
    with tempfile.TemporaryDirectory(prefix="otel-luna-grpc-flood-") as tmp:
        report = flood(options, Path(tmp))
    if options.json:
        dump(report)
    else:
        for key, value in report.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
