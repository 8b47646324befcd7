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
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import dump

REPO = Path(__file__).resolve().parent.parent
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
TOKEN = "flood-token"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 60.0


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


class Serve:
    def __init__(self, root: Path, extra_env: dict[str, str]) -> None:
        from servers import _set_parent_death_signal

        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_EXPORTER_LUNA_")}
        env.update(
            {
                "OTEL_EXPORTER_LUNA_ENDPOINT": f"file://{root / 'points.lp'}",
                "OTEL_EXPORTER_LUNA_SPOOL_DIR": str(root / "spool"),
                "OTEL_EXPORTER_LUNA_SERVE_TOKEN": TOKEN,
                "XDG_STATE_HOME": str(root / "state"),
                **extra_env,
            }
        )
        self.log = root / "serve.log"
        argv = [sys.executable, "-m", "otel_luna.cli", "serve", "--grpc-port", "0"]
        with open(self.log, "wb") as log:
            self.popen = subprocess.Popen(
                [*argv, "--http-port", "0"],
                env=env,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_set_parent_death_signal,
            )
        self.port = 0
        deadline = time.monotonic() + START_TIMEOUT
        while not self.port:
            for line in self.log.read_text(errors="replace").splitlines():
                if line.startswith("otel-luna serve: OTLP/gRPC on "):
                    self.port = int(line.rsplit(":", 1)[1])
            if not self.port and (self.popen.poll() is not None or time.monotonic() > deadline):
                self.stop()
                raise RuntimeError(f"serve did not start:\n{self.output()}")
            time.sleep(0.05)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=STOP_TIMEOUT)
        return self.popen.returncode


def flood(options: Any, root: Path) -> dict[str, Any]:
    import grpc

    body = _body(options.mib)
    serve = Serve(root, {})
    target = f"127.0.0.1:{serve.port}"
    peak = {"VmRSS": 0.0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            rss = _status(serve.popen.pid).get("VmRSS", 0.0)
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
        before = _status(serve.popen.pid)
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
        after = _status(serve.popen.pid)
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
    sys.path.insert(0, str(REPO / "tests"))
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
