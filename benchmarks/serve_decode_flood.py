"""Memory of one ``otel-luna serve`` under authenticated bodies that decode to far more than
their size (issue 11: the in-flight budget counted wire bytes, not decoded ones).

    .venv/bin/python benchmarks/serve_decode_flood.py [--calls 20] [--mb 15]
        [--kinds http-resource-spans,http-spans,http-gzip,http-json,grpc-spans,grpc-attributes]
        [--json]

Setup, per kind: a fresh ``otel-luna serve`` as a child process on free ports of 127.0.0.1 with
a bearer token and a file sink in a temporary directory, product defaults otherwise
(``SERVE_MAX_INFLIGHT_BYTES`` 64 MiB, ``SERVE_MAX_DECODED_BYTES`` 128 MiB, messages up to
16 MiB).

Flood: ``--calls`` (20) requests at once, each with the right token, of ``--mb`` (15) MB of
empty messages, which upb would decode to 30-90 times that:

* ``http-resource-spans``: OTLP/HTTP protobuf, 7.5M empty ``ResourceSpans`` (the issue's body);
* ``http-spans``: OTLP/HTTP protobuf, one scope of 7.5M empty spans (177 bytes each decoded);
* ``http-gzip``: the same gzip-compressed (15 KB on the wire, inflating to the size cap);
* ``http-json``: OTLP/JSON, one scope of 5M empty span objects ``{}``;
* ``grpc-spans``, ``grpc-attributes``: OTLP/gRPC, 7.5M empty spans, or one span of 7.5M empty
  attributes.

While the flood runs, a good client sends a 3-span request over HTTP every 50 ms.

Reported per kind: serve's peak RSS (``VmHWM``; ``VmRSS`` sampled every 20 ms), the answers
the flood got, the good client's answers during the flood and one good call after it. serve is
stopped by its PID. Exit status 0 whatever the figures.
"""

from __future__ import annotations

import collections
import gzip
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _common import dump
from serve_grpc_flood import TOKEN, _status, serve_env
from serve_throughput import REPO, Serve

TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
KINDS = (
    "http-resource-spans",
    "http-spans",
    "http-gzip",
    "http-json",
    "grpc-spans",
    "grpc-attributes",
)


def body_of(kind: str, size: int) -> tuple[bytes, dict[str, str]]:
    """The hostile body of ``kind`` and its HTTP headers (besides the token)."""
    from tests.support.otlpwire import empties as _empties  # tests.support, on the path from main()

    pb = {"Content-Type": "application/x-protobuf"}
    if kind == "http-resource-spans":
        return _empties(size, 1), pb
    if kind in ("http-spans", "grpc-spans"):
        return _empties(size, 2, 1, 2), pb
    if kind == "http-gzip":
        return gzip.compress(_empties(size, 2, 1, 2)), {**pb, "Content-Encoding": "gzip"}
    if kind == "http-json":
        spans = b"{}," * (size // 3 - 20) + b"{}"
        body = b'{"resourceSpans":[{"scopeSpans":[{"spans":[' + spans + b"]}]}]}"
        return body, {"Content-Type": "application/json"}
    if kind == "grpc-attributes":
        return _empties(size, 9, 1, 2, 2), pb
    raise ValueError(kind)


def _good_body() -> bytes:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for index in range(3):
        span = scope.spans.add(trace_id=b"\1" * 16, span_id=bytes([index + 1]) * 8, kind=2)
        span.start_time_unix_nano = span.end_time_unix_nano = time.time_ns()
        span.attributes.add(key="http.route").value.string_value = "/good"
    return request.SerializeToString()


def _http_port(serve: Serve) -> int:
    for line in serve.output.splitlines():
        if line.startswith("otel-luna serve: OTLP/HTTP on "):
            return int(line.rsplit(":", 1)[1])
    raise RuntimeError(f"no HTTP port in serve's output:\n{serve.output}")


def flood(kind: str, options: Any, root: Path) -> dict[str, Any]:
    import grpc
    import requests

    body, headers = body_of(kind, options.mb * 1000 * 1000)
    headers = {**headers, "Authorization": f"Bearer {TOKEN}"}
    metadata = (("authorization", f"Bearer {TOKEN}"),)
    serve = Serve(root / kind, serve_env(root / kind))
    url = f"http://127.0.0.1:{_http_port(serve)}/v1/traces"
    good = _good_body()
    good_headers = {"Content-Type": "application/x-protobuf", **headers}
    good_headers.pop("Content-Encoding", None)
    good_headers["Content-Type"] = "application/x-protobuf"
    peak = {"VmRSS": 0.0}
    done = threading.Event()
    good_codes: collections.Counter[str] = collections.Counter()

    def sample() -> None:
        while not done.is_set():
            peak["VmRSS"] = max(peak["VmRSS"], _status(serve.pid).get("VmRSS", 0.0))
            time.sleep(0.02)

    def good_client() -> None:
        with requests.Session() as session:
            while not done.is_set():
                try:
                    answer = session.post(url, data=good, headers=good_headers, timeout=60)
                    good_codes[str(answer.status_code)] += 1
                except requests.RequestException as error:
                    good_codes[type(error).__name__] += 1
                time.sleep(0.05)

    def send_http(_: int) -> str:
        try:
            return str(requests.post(url, data=body, headers=headers, timeout=120).status_code)
        except requests.RequestException as error:
            return type(error).__name__

    channel = grpc.insecure_channel(serve.grpc_target)
    call = channel.unary_unary(TRACE_EXPORT, request_serializer=None)

    def send_grpc(_: int) -> str:
        try:
            call(body, timeout=120, metadata=metadata)
            return "OK"
        except grpc.RpcError as error:
            return str(error.code().name)

    threads = [threading.Thread(target=sample), threading.Thread(target=good_client)]
    try:
        before = _status(serve.pid)
        for thread in threads:
            thread.start()
        started = time.monotonic()
        send = send_grpc if kind.startswith("grpc") else send_http
        with ThreadPoolExecutor(options.calls) as pool:
            codes = collections.Counter(pool.map(send, range(options.calls)))
        seconds = time.monotonic() - started
        done.set()
        for thread in threads:
            thread.join()
        after_status = _status(serve.pid)
        after = requests.post(url, data=good, headers=good_headers, timeout=60).status_code
    finally:
        done.set()
        channel.close()
        exit_status = serve.stop()
    return {
        "kind": kind,
        "calls": options.calls,
        "bytes_per_call": len(body),
        "codes": dict(codes),
        "flood_seconds": round(seconds, 2),
        "rss_mb_before": round(before.get("VmRSS", 0.0), 1),
        "rss_mb_peak_sampled": round(peak["VmRSS"], 1),
        "rss_mb_peak_vmhwm": round(after_status.get("VmHWM", 0.0), 1),
        "good_client_during": dict(good_codes),
        "good_request_after": after,
        "serve_exit_status": exit_status,
    }


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20, help="requests at once (20)")
    parser.add_argument("--mb", type=int, default=15, help="MB per request (15)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated kinds")
    parser.add_argument("--json", action="store_true", help="print JSON")
    options = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))  # for tests.support
    reports = []
    with tempfile.TemporaryDirectory(prefix="otel-luna-decode-flood-") as tmp:
        for kind in options.kinds.split(","):
            reports.append(flood(kind, options, Path(tmp)))
            if not options.json:
                print(" ".join(f"{key}={value}" for key, value in reports[-1].items()))
    if options.json:
        dump(reports)
    return 0


if __name__ == "__main__":
    sys.exit(main())
