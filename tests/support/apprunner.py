"""Run an app under ``opentelemetry-instrument`` for a test, and stop it by its PID."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
START_TIMEOUT = 60.0


@contextlib.contextmanager
def instrumented_app(script: Path, env: Mapping[str, str], *args: str) -> Iterator[str]:
    """Start ``script`` under opentelemetry-instrument; yield its base URL; SIGTERM it after.

    The app must print ``listening on URL``. On exit the app is stopped with SIGTERM and waited
    for, so the SDK flushes the exporter at interpreter exit.
    """
    full_env = {**os.environ, **env}
    command = [str(VENV_BIN / "opentelemetry-instrument"), sys.executable, str(script), *args]
    process = subprocess.Popen(
        command, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output: list[str] = []
    found = threading.Event()
    url: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if line.startswith("listening on ") and not url:
                url.append(line.split()[-1])
                found.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if not found.wait(START_TIMEOUT):
            raise AssertionError(f"{script.name} did not start:\n{''.join(output)}")
        yield url[0]
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError(f"{script.name} did not stop:\n{''.join(output)}") from None
        reader.join(timeout=5)
    if code != 0:
        raise AssertionError(f"{script.name} exited {code}:\n{''.join(output)}")
