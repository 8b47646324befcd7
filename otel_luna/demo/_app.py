"""The demo's process manager: the example service (or any app that prints ``listening on
URL``) under ``opentelemetry-instrument`` with the ``luna`` traces exporter, started on a free
port of 127.0.0.1 and stopped with SIGTERM, so the SDK flushes the exporter at exit."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from otel_luna.demo._errors import DemoError
from otel_luna.settings import env_name

__all__ = [
    "APP_ENV",
    "DEAD_LETTER_NAME",
    "DEFAULT_FILE_NAME",
    "EXAMPLE_APP",
    "HOST",
    "OTEL_EXPORTER_LUNA_DEAD_LETTER",
    "OTEL_EXPORTER_LUNA_ENDPOINT",
    "OTEL_EXPORTER_LUNA_SPOOL_DIR",
    "OTEL_EXPORTER_LUNA_USAGES",
    "SERVICE_NAME",
    "START_TIMEOUT",
    "STOP_TIMEOUT",
    "AppProcess",
    "app_environment",
    "default_endpoint",
    "instrument_command",
]

OTEL_EXPORTER_LUNA_DEAD_LETTER = env_name("dead_letter")
OTEL_EXPORTER_LUNA_ENDPOINT = env_name("endpoint")
OTEL_EXPORTER_LUNA_SPOOL_DIR = env_name("spool_dir")
OTEL_EXPORTER_LUNA_USAGES = env_name("usages")

#: The example service the demo runs; it ships in the package (:mod:`otel_luna.examples`).
EXAMPLE_APP = Path(__file__).resolve().parent.parent / "examples" / "luna_handlers_app.py"
#: Line-protocol file written in the working directory when no endpoint is configured.
DEFAULT_FILE_NAME = "luna-demo.lp"
#: Dead-letter file of the demo's own state directory (spool and dead letters of one run).
DEAD_LETTER_NAME = "dead-letter.jsonl"
SERVICE_NAME = "luna-handlers"
HOST = "127.0.0.1"

#: Seconds to wait for the app to print its address, and for it to exit after SIGTERM (it
#: flushes the exporter first, retrying an unreachable database for up to three write timeouts).
START_TIMEOUT = 60.0
STOP_TIMEOUT = 120.0

#: What the app is started with, over the caller's environment: the luna traces exporter
#: writes every series the app records (its estimations too: one ``usages_statistic`` point per
#: request, the default of ``OTEL_EXPORTER_LUNA_USAGES``); no metrics pipeline.
APP_ENV: Mapping[str, str] = {
    "OTEL_TRACES_EXPORTER": "luna",
    "OTEL_METRICS_EXPORTER": "none",
    OTEL_EXPORTER_LUNA_USAGES: "request",
    "OTEL_LOGS_EXPORTER": "none",
    "OTEL_SERVICE_NAME": SERVICE_NAME,
}


def default_endpoint(cwd: Path) -> str:
    """``file://`` URL of :data:`DEFAULT_FILE_NAME` in ``cwd``."""
    return (cwd.resolve() / DEFAULT_FILE_NAME).as_uri()


def app_environment(
    environ: Mapping[str, str],
    cwd: Path,
    endpoint: str | None = None,
    state_dir: Path | None = None,
) -> dict[str, str]:
    """``environ`` with :data:`APP_ENV` and the endpoint: ``endpoint``, else the one in
    ``environ``, else :func:`default_endpoint`. With ``state_dir``, the exporter's spool and
    dead-letter file go there unless ``environ`` names them (the demo keeps out of the spool
    of real services)."""
    chosen = endpoint or environ.get(OTEL_EXPORTER_LUNA_ENDPOINT) or default_endpoint(cwd)
    env = {**environ, **APP_ENV, OTEL_EXPORTER_LUNA_ENDPOINT: chosen}
    if state_dir is not None:
        env.setdefault(OTEL_EXPORTER_LUNA_SPOOL_DIR, str(state_dir / "spool"))
        env.setdefault(OTEL_EXPORTER_LUNA_DEAD_LETTER, str(state_dir / DEAD_LETTER_NAME))
    return env


def instrument_command() -> str:
    """Path of ``opentelemetry-instrument``: next to this Python, else on ``PATH``."""
    beside = Path(sys.executable).parent / "opentelemetry-instrument"
    if beside.exists():
        return str(beside)
    found = shutil.which("opentelemetry-instrument")
    if found is None:
        raise DemoError(
            "opentelemetry-instrument not found; install the demo extra: "
            "pip install 'otel-luna[demo]'"
        )
    return found


class AppProcess:
    """The example app under ``opentelemetry-instrument`` on a free port of 127.0.0.1.

    :meth:`start` returns its base URL once it printed ``listening on URL``; :meth:`stop` sends
    SIGTERM to its PID and waits for it to exit. As a context manager it always stops the app.
    Everything the app writes (standard output and error) is kept in :attr:`output`.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        cwd: Path,
        app: Path = EXAMPLE_APP,
        args: Sequence[str] = (),
    ) -> None:
        if not app.is_file():
            raise DemoError(f"app not found: {app}")
        self.command = [
            instrument_command(),
            sys.executable,
            str(app),
            "--host",
            HOST,
            "--port",
            "0",
            *args,
        ]
        self.env = dict(env)
        self.cwd = cwd
        self.url: str | None = None
        self.returncode: int | None = None
        self._process: subprocess.Popen[str] | None = None
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._listening = threading.Event()
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def output(self) -> list[str]:
        """Lines the app wrote so far, without line ends."""
        with self._lock:
            return list(self._lines)

    def output_tail(self, lines: int = 30) -> str:
        return "\n".join(self.output[-lines:])

    def start(self, timeout: float = START_TIMEOUT) -> str:
        self._process = subprocess.Popen(
            self.command,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, name="demo-app-output", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not self._listening.wait(0.05):
            if self._process.poll() is not None:
                self._join_reader()
                raise DemoError(
                    f"the app exited with {self._process.returncode} before listening:\n"
                    f"{self.output_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise DemoError(
                    f"the app did not listen within {timeout:g} s:\n{self.output_tail()}"
                )
        assert self.url is not None
        return self.url

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for raw in self._process.stdout:
            line = raw.rstrip("\r\n")
            with self._lock:
                self._lines.append(line)
            if self.url is None and line.startswith("listening on "):
                self.url = line.split()[-1]
                self._listening.set()

    def _join_reader(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=5)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM the app, wait for it to exit (it flushes first); its exit code."""
        process = self._process
        if process is None:
            raise DemoError("the app was not started")
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for the app to exit; its exit code. Killed (and an error) after ``timeout``."""
        process = self._process
        if process is None:
            raise DemoError("the app was not started")
        try:
            self.returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            self._join_reader()
            raise DemoError(
                f"the app did not exit within {timeout:g} s (killed):\n{self.output_tail()}"
            ) from None
        self._join_reader()
        return self.returncode

    def __enter__(self) -> AppProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            if exc is None:
                self.stop()
            else:  # already failing: do not let a slow flush hide the first error
                with contextlib.suppress(DemoError):
                    self.stop(timeout=10)
