"""Helpers for the serve tests (``tests/serve/``): run ``otel-luna serve``, make OTLP, read
InfluxDB back.

:class:`Serve` starts ``otel-luna serve --grpc-port 0 --http-port 0`` as a child process (the
ports it picked are read from its stdout) and stops it by its PID with SIGTERM, the graceful
drain, expecting exit status 0. Everything else here builds OTLP requests from real SDK spans,
sends raw gRPC calls, runs the Node.js client in ``tests/node`` and polls InfluxDB with a
deadline.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common._internal.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.support.servers import InfluxDB1

VENV_BIN = Path(sys.executable).parent
NODE_DIR = Path(__file__).parent.parent / "node"
SERVE_START_TIMEOUT = 30.0
#: SIGTERM → exit: gRPC grace (5 s) + the spool's shutdown flush + interpreter exit.
SERVE_STOP_TIMEOUT = 30.0
RPC_TIMEOUT = 10.0
NODE_TIMEOUT = 60.0

TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
LOGS_EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
METRICS_EXPORT = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"

#: ``python -c`` that sets RLIMIT_NOFILE to argv[1:3] and becomes the command after them (the
#: same process: not a preexec_fn, see :class:`Serve`).
_WITH_LIMIT = (
    "import os, resource, sys; "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2]))); "
    "os.execv(sys.argv[3], sys.argv[3:])"
)
#: ``python -c`` that has the kernel SIGTERM it when the process that started it dies (kept
#: across ``execv``), then becomes the command in argv[1:].
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys; "
    "ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0); "  # 1: PR_SET_PDEATHSIG
    "os.execv(sys.argv[1], sys.argv[1:])"
)
_WORKERS_LINE = re.compile(r"^otel-luna serve: \d+ workers \(pids ([\d, ]+)\)$", re.M)
_PORT_LINE = re.compile(r"^otel-luna serve: OTLP/(gRPC|HTTP) on (\S+):(\d+)$")
#: Printed before the OTLP lines when ``--health-port`` is given.
_HEALTH_LINE = re.compile(r"^otel-luna serve: health and metrics on (\S+):(\d+)$")


def serve_env(influx_url: str, database: str, **extra: str) -> dict[str, str]:
    """Environment of a ``serve`` writing to ``database`` of the InfluxDB 1.x at ``influx_url``."""
    return {
        "OTEL_EXPORTER_LUNA_ENDPOINT": influx_url,
        "OTEL_EXPORTER_LUNA_DATABASE": database,
        "OTEL_EXPORTER_LUNA_API_VERSION": "1",
        "OTEL_EXPORTER_LUNA_FLUSH_INTERVAL": "0.2",
        **extra,
    }


class Serve:
    """``otel-luna serve`` on free ports of 127.0.0.1, as a child process of the test.

    ``env`` is added to the test's environment (so the per-test ``XDG_STATE_HOME`` holds its
    spool). Use as a context manager: leaving the block stops it with SIGTERM and, unless the
    block raised, asserts exit status 0.

    For the benchmarks (``benchmarks/serve_throughput.py``): ``repo`` runs ``python -m
    otel_luna`` in that checkout (another commit's code); ``clean_env`` leaves out the
    ``OTEL_EXPORTER_LUNA_*`` variables of this process; ``die_with_parent`` has the kernel
    SIGTERM serve if this process dies without stopping it.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        *args: str,
        open_files: tuple[int, int] | None = None,
        repo: Path | None = None,
        clean_env: bool = False,
        die_with_parent: bool = False,
        stop_timeout: float = SERVE_STOP_TIMEOUT,
    ) -> None:
        command = (
            [str(VENV_BIN / "otel-luna")] if repo is None else [sys.executable, "-m", "otel_luna"]
        )
        self.argv = [*command, "serve", "--grpc-port", "0", "--http-port", "0"]
        self.argv += args
        if open_files is not None:  # the soft and hard RLIMIT_NOFILE it starts with
            self.argv = [sys.executable, "-c", _WITH_LIMIT, *map(str, open_files), *self.argv]
        if die_with_parent:
            self.argv = [sys.executable, "-c", _DIE_WITH_PARENT, *self.argv]
        self.stop_timeout = stop_timeout
        inherited = {
            k: v
            for k, v in os.environ.items()
            if not (clean_env and k.startswith("OTEL_EXPORTER_LUNA_"))
        }
        self.popen = subprocess.Popen(
            self.argv,
            env={**inherited, **env},
            cwd=repo,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            # No preexec_fn: with one, subprocess forks and runs gRPC's fork handlers, which
            # crash the child (epoll EBADF, SIGABRT) or stall this process's own gRPC calls
            # while a channel is open (grpc/grpc#43055). Without it, subprocess uses vfork.
        )
        self._lines: list[str] = []
        self._ports: dict[str, int] = {}
        #: The address each protocol listens on, as serve printed it (``[::1]`` for IPv6).
        self.hosts: dict[str, str] = {}
        #: The port of /healthz, /readyz and /metrics, if serve was asked for them.
        self.health_port: int | None = None
        self.health_host = "127.0.0.1"
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(SERVE_START_TIMEOUT) or len(self._ports) < 2:
            self.kill()
            raise AssertionError(f"otel-luna serve did not start:\n{self.output}")
        self.grpc_port = self._ports["gRPC"]
        self.http_port = self._ports["HTTP"]

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._lines.append(line)
            health = _HEALTH_LINE.match(line.rstrip("\n"))
            if health:
                self.health_host, self.health_port = health[1], int(health[2])
            match = _PORT_LINE.match(line.rstrip("\n"))
            if match:
                self._ports[match[1]] = int(match[3])
                self.hosts[match[1]] = match[2]
                if len(self._ports) == 2:
                    self._ready.set()
        self._ready.set()  # exited: stop waiting

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def pids(self) -> list[int]:
        """Its process and, with ``--workers``, the workers it started (once it said so)."""
        match = _WORKERS_LINE.search(self.output)
        return [self.pid] + ([int(pid) for pid in match[1].split(", ")] if match else [])

    @property
    def output(self) -> str:
        """Everything the process printed so far (stdout and stderr)."""
        return "".join(self._lines)

    @property
    def grpc_target(self) -> str:
        return f"{self.hosts['gRPC']}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.hosts['HTTP']}:{self.http_port}"

    @property
    def health_url(self) -> str:
        assert self.health_port is not None, f"serve printed no health port:\n{self.output}"
        return f"http://{self.health_host}:{self.health_port}"

    def stop(self) -> int:
        """SIGTERM (graceful drain) and wait; the exit status. Killed if it does not stop."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            code = self.popen.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"otel-luna serve did not stop:\n{self.output}") from None
        self._reader.join(timeout=5)
        return code

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(timeout=self.stop_timeout)
        self._reader.join(timeout=5)

    def stop_ok(self) -> None:
        """Stop and assert a clean exit (0) after a graceful drain."""
        code = self.stop()
        assert code == 0, f"otel-luna serve exited {code}:\n{self.output}"
        assert "otel-luna serve: stopped" in self.output, self.output

    def __enter__(self) -> Serve:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.stop_ok()
        else:
            self.stop()


# --------------------------------------------------------------------------- OTLP


def server_spans(
    count: int,
    *,
    method: str = "POST",
    route: str = "/work",
    status: int = 200,
    service: str = "serve-test",
    attributes: Mapping[str, Any] | None = None,
    start_ns: int | None = None,
) -> tuple[list[ReadableSpan], list[str]]:
    """``count`` finished SERVER spans recorded through the SDK, and their request ids.

    Each has a unique ``luna.request_id`` and its own start nanosecond (points never collide),
    from ``start_ns`` on (default: a minute ago).
    """
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("serve-test")
    ids = [uuid.uuid4().hex for _ in range(count)]
    base = time.time_ns() - 60 * 10**9 if start_ns is None else start_ns
    for index, request_id in enumerate(ids):
        start = base + index * 1000
        span = tracer.start_span(
            f"{method} {route}",
            kind=trace.SpanKind.SERVER,
            start_time=start,
            attributes={
                "http.request.method": method,
                "http.route": route,
                "http.response.status_code": status,
                "luna.request_id": request_id,
                **(attributes or {}),
            },
        )
        span.end(end_time=start + 2_000_000)
    provider.shutdown()
    return list(memory.get_finished_spans()), ids


def trace_request(spans: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
    """The OTLP request the SDK's OTLP exporters would send for ``spans``."""
    return encode_spans(spans)


def grpc_call(
    target: str,
    body: bytes,
    *,
    method: str = TRACE_EXPORT,
    metadata: Sequence[tuple[str, str]] | None = None,
) -> tuple[grpc.StatusCode, str, dict[str, Any], bytes | None]:
    """One raw unary gRPC call: (status code, details, trailing metadata, response bytes)."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        try:
            response, state = call.with_call(body, timeout=RPC_TIMEOUT, metadata=metadata)
        except grpc.RpcError as error:
            trailing = dict(error.trailing_metadata() or ())
            return error.code(), error.details() or "", trailing, None
        return grpc.StatusCode.OK, "", dict(state.trailing_metadata() or ()), response


# --------------------------------------------------------------------------- InfluxDB


def stored_ids(influx: InfluxDB1, database: str, measurement: str = "requests") -> list[str]:
    """``request_id`` of every point of ``measurement``, duplicates kept."""
    rows = influx.select(f"SELECT request_id FROM {measurement}", database)
    return [row["request_id"] for row in rows]


# --------------------------------------------------------------------------- Node.js


def node_binary() -> str:
    """``node``, with ``tests/node`` installed; fails with the fix when either is missing."""
    node = shutil.which("node")
    hint = "run ./scripts/bootstrap (it installs Node.js and runs npm ci in tests/node)"
    assert node is not None, f"node is not on PATH: {hint}"
    installed = NODE_DIR / "node_modules" / "@opentelemetry" / "sdk-node"
    assert installed.is_dir(), f"{installed} is missing: {hint}"
    return node


def run_node_app(
    protocol: str,
    url: str,
    spans: Sequence[Mapping[str, Any]],
    env: Mapping[str, str],
    *,
    spans_file: Path | None = None,
) -> str:
    """Run ``tests/node/app.js`` (sdk-node with exporter-trace-otlp-grpc for ``grpc`` or
    exporter-trace-otlp-proto for ``http/protobuf``) sending ``spans`` (or the JSON array in
    ``spans_file``, for many) to ``url``; its output."""
    spec = f"@{spans_file}" if spans_file is not None else json.dumps(list(spans))
    result = subprocess.run(
        [node_binary(), str(NODE_DIR / "app.js"), protocol, url, spec],
        env={**os.environ, **env},
        cwd=NODE_DIR,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"node app.js exited {result.returncode}:\n{output}"
    return output
