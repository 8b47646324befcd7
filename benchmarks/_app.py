"""Shared by ``app_cpu.py`` and ``saturation.py``: a four-line FastAPI app under uvicorn, run
plain or under ``opentelemetry-instrument`` with no exporter, the luna exporter (file sink) or
the OTLP gRPC exporter (to a receiver in this process that answers and drops), and ``wrk``
driving it over 8 connections with random paths (a share of them 404s).

``wrk`` (Debian: ``apt-get install -y wrk``) is installed on first use when missing and this
runs as root. Every process started here is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # for tests.support
from tests.support.waiting import wait_until  # noqa: E402

VENV_BIN = Path(sys.executable).parent
SERVICE = "bench-app"

#: The app: four lines that matter. Unknown paths answer 404 (FastAPI's own).
APP = """\
from fastapi import FastAPI
app = FastAPI()
@app.get("/items/{item}")
async def item(item: int) -> dict[str, int]:
    return {"item": item}
"""

#: wrk's request generator: random item numbers, ``share404`` of the paths unknown (404).
WRK_SCRIPT = """\
math.randomseed(os.time())
local share404 = %(share404)f
request = function()
  local n = math.random(1, 1000000)
  if math.random() < share404 then
    return wrk.format("GET", "/missing/" .. n)
  end
  return wrk.format("GET", "/items/" .. n)
end
"""

#: The configurations compared (name → what runs the app).
MODES = ("plain", "instrumented", "luna-off", "luna", "otlp")
RUNNING = re.compile(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found is None and os.geteuid() == 0:
        subprocess.run(
            ["apt-get", "install", "-y", "wrk"], check=True, capture_output=True, timeout=600
        )
        found = shutil.which("wrk")
    if found is None:
        raise SystemExit("wrk is needed: apt-get install -y wrk")
    return found


@dataclass
class App:
    """A running app: its PID, URL, log file and (luna) the file its points go to."""

    mode: str
    process: subprocess.Popen[bytes]
    url: str
    log: Path
    points: Path | None
    spool: Path | None
    extra_env: Mapping[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> int:
        """SIGTERM, as a deployment stops it; the exit status."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(30)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def requests_lines(self) -> int:
        if self.points is None or not self.points.exists():
            return 0
        with self.points.open("rb") as file:
            return sum(1 for line in file if line.startswith(b"requests,"))

    def sdk_queue_full(self) -> int | None:
        """``sdk_queue_full`` of the app's spool directories (``otel-luna status``), if any."""
        if self.spool is None:
            return None
        out = subprocess.run(
            [str(VENV_BIN / "otel-luna"), "status", "--json", str(self.spool)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        try:
            entries = json.loads(out.stdout)
        except ValueError:
            return None
        found = [
            e.get("counts", {}).get("sdk_queue_full", 0)
            for e in (entries if isinstance(entries, list) else entries.get("processes", []))
            if isinstance(e, dict) and isinstance(e.get("counts"), dict)
        ]
        return sum(found) if found else None


class NullOtlpReceiver:
    """An OTLP/gRPC trace receiver in this process that answers every Export and keeps
    nothing (the app's exporter pays its full cost; this process's CPU is not measured)."""

    def __init__(self) -> None:
        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

        class Servicer(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
            def Export(self, request: Any, context: Any) -> Any:
                return trace_service_pb2.ExportTraceServiceResponse()

        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    def close(self) -> None:
        self._server.stop(grace=1).wait()


def environment(mode: str, work: Path, otlp_port: int | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.update(
        OTEL_SERVICE_NAME=SERVICE,
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_TRACES_EXPORTER="none",
    )
    if mode == "luna-off":  # the BatchSpanProcessor and its thread, export() a no-op
        env.update(OTEL_TRACES_EXPORTER="luna", OTEL_EXPORTER_LUNA_ENABLED="false")
    elif mode == "luna":
        env.update(
            OTEL_TRACES_EXPORTER="luna",
            OTEL_EXPORTER_LUNA_ENDPOINT=f"file://{work / 'points.lp'}",
            OTEL_EXPORTER_LUNA_SPOOL_DIR=str(work / "spool"),
            OTEL_EXPORTER_LUNA_DEAD_LETTER=str(work / "dead-letter.jsonl"),
        )
    elif mode == "otlp":
        env.update(
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_TRACES_PROTOCOL="grpc",
            OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"http://127.0.0.1:{otlp_port}",
            OTEL_EXPORTER_OTLP_TRACES_INSECURE="true",
        )
    env.update(extra)
    return env


@contextlib.contextmanager
def running_app(
    mode: str,
    work: Path,
    *,
    otlp_port: int | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[App]:
    """The app in ``mode``, its files in the directory ``work`` (the caller's, read after the
    block: the points the app flushed at exit, its log), answering; stopped (SIGTERM) when the
    block ends."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "bench_app.py").write_text(APP)
    uvicorn = [
        str(VENV_BIN / "uvicorn"),
        "bench_app:app",
        "--app-dir",
        str(work),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--no-access-log",
    ]
    argv = uvicorn if mode == "plain" else [str(VENV_BIN / "opentelemetry-instrument"), *uvicorn]
    env = environment(mode, work, otlp_port, **(extra_env or {}))
    log = work / "app.log"
    with log.open("wb") as out:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    app = App(
        mode=mode,
        process=process,
        url="",
        log=log,
        points=work / "points.lp" if mode == "luna" else None,
        spool=work / "spool" if mode == "luna" else None,
        extra_env=dict(extra_env or {}),
    )
    try:

        def started() -> str | None:
            if process.poll() is not None:
                raise SystemExit(f"{mode} app exited: {app.log_text()[-2000:]}")
            found = RUNNING.search(app.log_text())
            return found.group(1) if found else None

        app.url = wait_until(started, timeout=60, what=f"the {mode} app to start")
        yield app
    finally:
        if process.poll() is None:
            app.stop()


@dataclass
class Load:
    """What wrk reported: responses counted, 404s among them, socket errors, seconds."""

    requests: int
    non_2xx: int
    errors: int
    seconds: float


def drive(wrk: str, url: str, seconds: float, *, connections: int = 8, share404: float) -> Load:
    """``wrk`` on ``url`` for ``seconds`` (one thread, ``connections`` connections)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT % {"share404": share404})
    try:
        out = subprocess.run(
            [
                wrk,
                "-t1",
                f"-c{connections}",
                f"-d{round(seconds)}s",
                "--timeout",
                "30s",
                "-s",
                script.name,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 120,
            check=True,
        ).stdout
    finally:
        os.unlink(script.name)
    done = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    if done is None:
        raise SystemExit(f"cannot read wrk's output:\n{out}")
    elapsed = float(done.group(2)) / (1000 if done.group(3) == "ms" else 1)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return Load(
        requests=int(done.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        errors=sum(int(x) for x in errors.groups()) if errors else 0,
        seconds=elapsed,
    )
