"""Deployed as users deploy it, stopped as Kubernetes stops it (SIGTERM), into a real InfluxDB 1.x.

uvicorn + FastAPI, a plain worker with no signal handler, gunicorn ``--preload`` with two sync
workers, and a rollout whose database is unreachable until the next pod starts. Every app runs
unchanged under ``opentelemetry-instrument``; each process started here is stopped by its PID.
The SDK's own schedules are set far beyond the test (``OTEL_BSP_SCHEDULE_DELAY``,
``OTEL_METRIC_EXPORT_INTERVAL``), so whatever lands was flushed by the exit path, not by a timer.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from otel_luna.delivery._spool_status import describe
from tests.support.closedport import ClosedPort
from tests.support.servers import InfluxDB1
from tests.support.waiting import wait_until

APPS = Path(__file__).parent.parent / "apps"
VENV_BIN = Path(sys.executable).parent
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
REQUESTS = 60
NEVER = "600000"  # ms: the SDK's batch and metric schedules never fire during a test

pytestmark = pytest.mark.timeout(240)


def luna_env(endpoint: str, database: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment a deployment sets for ``opentelemetry-instrument`` (docs/deployment.md)."""
    return {
        "OTEL_TRACES_EXPORTER": "luna",
        "OTEL_METRICS_EXPORTER": "luna",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_SERVICE_NAME": "luna-handlers",
        "OTEL_EXPORTER_LUNA_ENDPOINT": endpoint,
        "OTEL_EXPORTER_LUNA_API_VERSION": "1",
        "OTEL_EXPORTER_LUNA_DATABASE": database,
        "OTEL_EXPORTER_LUNA_SPOOL_DIR": str(tmp_path / "spool"),
        "OTEL_EXPORTER_LUNA_DEAD_LETTER": str(tmp_path / "dead-letter.jsonl"),
        "OTEL_BSP_SCHEDULE_DELAY": NEVER,
        "OTEL_METRIC_EXPORT_INTERVAL": NEVER,
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


class App:
    """A process started for a test: its output, collected; stopped by its PID."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], *, stdin: bool = False) -> None:
        self.argv = list(argv)
        self.process = subprocess.Popen(
            self.argv,
            env={**os.environ, **env},
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def output(self) -> str:
        with self._changed:
            return "".join(self.lines)

    def wait_for(self, pattern: str, count: int = 1, timeout: float = START_TIMEOUT) -> list[str]:
        """The first ``count`` matches of ``pattern`` (a regex with one group) in the output."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [m.group(1) for line in self.lines if (m := regex.search(line))]
                if len(found) >= count:
                    return found[:count]
                left = deadline - time.monotonic()
                if left <= 0 or (self.process.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"no {count} x {pattern!r} from {self.argv[:3]}:\n{''.join(self.lines)}"
                    )
                self._changed.wait(min(left, 0.5))

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signum)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """The exit status (negative: the signal it died of); fails if it does not end."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"{self.argv[:3]} did not stop:\n{self.output}") from None
        self._reader.join(timeout=5)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@contextlib.contextmanager
def started(*args: Any, **kwargs: Any) -> Iterator[App]:
    app = App(*args, **kwargs)
    try:
        yield app
    finally:
        app.kill()


def uvicorn_argv(app: str = "fastapi_app:app") -> list[str]:
    """``opentelemetry-instrument uvicorn <app>`` (an app of tests/apps) on a free port of
    127.0.0.1."""
    return [
        str(VENV_BIN / "opentelemetry-instrument"),
        str(VENV_BIN / "uvicorn"),
        app,
        "--app-dir",
        str(APPS),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--no-access-log",
    ]


UVICORN_RUNNING = r"Uvicorn running on (http://127\.0\.0\.1:\d+)"


def post_work(url: str, ids: Sequence[str]) -> list[dict[str, Any]]:
    with requests.Session() as session:
        answers = []
        for request_id in ids:
            response = session.post(f"{url}/work", headers={"X-Request-Id": request_id}, timeout=30)
            assert response.status_code == 200, response.text
            answers.append(response.json())
    return answers


def new_ids(count: int, prefix: str) -> list[str]:
    run = uuid.uuid4().hex[:8]
    return [f"{prefix}-{run}-{index}" for index in range(count)]


def request_ids(influxdb1: InfluxDB1, database: str) -> list[str]:
    return [row["request_id"] for row in influxdb1.select("SELECT * FROM requests", database)]


def face_detector_usages(influxdb1: InfluxDB1, database: str) -> int:
    rows = influxdb1.select("SELECT face_detector_usages FROM usages_statistic", database)
    return sum(row["face_detector_usages"] or 0 for row in rows)


def dead_letters(tmp_path: Path) -> str:
    path = tmp_path / "dead-letter.jsonl"
    return path.read_text() if path.exists() else ""


# --------------------------------------------------------------------------- uvicorn


def test_uvicorn_sigterm_delivers_every_request(
    influxdb1: InfluxDB1, influxdb1_database: str, tmp_path: Path
) -> None:
    """uvicorn + FastAPI, 60 requests, SIGTERM right after the last: every request and every
    usage lands in InfluxDB, and the process still dies of SIGTERM as uvicorn makes it (143)."""
    ids = new_ids(REQUESTS, "uvicorn")
    env = luna_env(influxdb1.url, influxdb1_database, tmp_path)
    with started(uvicorn_argv(), env) as app:
        (url,) = app.wait_for(UVICORN_RUNNING)
        post_work(url, ids)
        app.signal(signal.SIGTERM)
        code = app.wait()
    assert code == -signal.SIGTERM, app.output
    assert sorted(request_ids(influxdb1, influxdb1_database)) == sorted(ids)
    assert face_detector_usages(influxdb1, influxdb1_database) == REQUESTS
    assert dead_letters(tmp_path) == ""


def test_uvicorn_workers_sigterm_delivers_every_request(
    influxdb1: InfluxDB1, influxdb1_database: str, tmp_path: Path
) -> None:
    """uvicorn --workers 2 (spawned children, each with its own SDK and handler): SIGTERM to
    the parent reaches the children; every request lands, the parent exits 0."""
    ids = new_ids(REQUESTS, "uvicorn-workers")
    env = luna_env(influxdb1.url, influxdb1_database, tmp_path)
    with started([*uvicorn_argv(), "--workers", "2"], env) as app:
        (url,) = app.wait_for(UVICORN_RUNNING)
        app.wait_for(r"Application startup (complete)", count=2)
        post_work(url, ids)
        app.signal(signal.SIGTERM)
        code = app.wait()
    assert code == 0, app.output
    assert sorted(request_ids(influxdb1, influxdb1_database)) == sorted(ids)
    assert face_detector_usages(influxdb1, influxdb1_database) == REQUESTS
    assert dead_letters(tmp_path) == ""


# --------------------------------------------------------------------------- plain process


def worker_argv(*args: str) -> list[str]:
    return [
        str(VENV_BIN / "opentelemetry-instrument"),
        sys.executable,
        str(APPS / "worker_app.py"),
        *args,
    ]


def feed(app: App, ids: Sequence[str]) -> None:
    assert app.process.stdin is not None
    app.process.stdin.write("".join(f"{request_id}\n" for request_id in ids))
    app.process.stdin.flush()
    app.wait_for(rf"recorded ({re.escape(ids[-1])})$")


def test_plain_process_without_handler_delivers_and_dies_of_sigterm(
    influxdb1: InfluxDB1, influxdb1_database: str, tmp_path: Path
) -> None:
    """A process with no SIGTERM handler of its own: every span recorded before SIGTERM lands,
    and the process dies of the signal (status 143), not of an exit we invented."""
    ids = new_ids(REQUESTS, "plain")
    env = luna_env(influxdb1.url, influxdb1_database, tmp_path, OTEL_METRICS_EXPORTER="none")
    with started(worker_argv(), env, stdin=True) as app:
        app.wait_for(r"^(ready)$")
        feed(app, ids)
        app.signal(signal.SIGTERM)
        code = app.wait()
    assert code == -signal.SIGTERM, app.output
    assert sorted(request_ids(influxdb1, influxdb1_database)) == sorted(ids)


def test_app_handler_installed_after_the_exporter_still_runs(
    influxdb1: InfluxDB1, influxdb1_database: str, tmp_path: Path
) -> None:
    """An app that installs its own SIGTERM handler after start-up: its handler runs, the exit
    status is the one it chose, and every span lands (at its exit)."""
    ids = new_ids(20, "own-handler")
    env = luna_env(influxdb1.url, influxdb1_database, tmp_path, OTEL_METRICS_EXPORTER="none")
    with started(worker_argv("--own-handler"), env, stdin=True) as app:
        app.wait_for(r"^(ready)$")
        feed(app, ids)
        app.signal(signal.SIGTERM)
        code = app.wait()
    assert code == 0, app.output
    assert "app handler ran" in app.output
    assert sorted(request_ids(influxdb1, influxdb1_database)) == sorted(ids)


# --------------------------------------------------------------------------- gunicorn


def test_gunicorn_preload_two_workers_and_licence_check_in_master(
    influxdb1: InfluxDB1, influxdb1_database: str, tmp_path: Path
) -> None:
    """gunicorn --preload, 2 sync workers, a licence check recorded in the master before the
    fork: requests served by both workers and the licensing point all land, nothing hangs, and
    SIGTERM to the master ends every process."""
    env = luna_env(influxdb1.url, influxdb1_database, tmp_path, OTEL_METRICS_EXPORTER="none")
    argv = [
        str(VENV_BIN / "opentelemetry-instrument"),
        str(VENV_BIN / "gunicorn"),
        "--preload",
        "--workers",
        "2",
        "--worker-class",
        "sync",
        "--bind",
        "127.0.0.1:0",
        "--graceful-timeout",
        "30",
        "--chdir",
        str(APPS),
        "wsgi_app:app",
    ]
    ids = new_ids(40, "gunicorn")
    worker_pids: set[int] = set()
    with started(argv, env) as master:
        (url,) = master.wait_for(r"Listening at: (http://127\.0\.0\.1:\d+)")
        booted = master.wait_for(r"Booting worker with pid: (\d+)", count=2)

        def one(request_id: str) -> int:
            response = requests.post(
                f"{url}/work?hold=0.2", headers={"X-Request-Id": request_id}, timeout=30
            )
            assert response.status_code == 200, response.text
            return int(response.json()["pid"])

        try:
            # Two at a time: while one sync worker holds a request, the other takes the next.
            with ThreadPoolExecutor(max_workers=2) as pool:
                worker_pids.update(pool.map(one, ids))
            master.signal(signal.SIGTERM)
            code = master.wait()
        finally:
            for pid in {int(pid) for pid in booted}:  # only if the master left them behind
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    assert code == 0, master.output
    assert worker_pids == {int(pid) for pid in booted}, master.output
    assert sorted(request_ids(influxdb1, influxdb1_database)) == sorted(ids)
    licensing = influxdb1.select("SELECT * FROM licensing", influxdb1_database)
    assert [row["liveness_balance"] for row in licensing] == [4242], licensing
    assert dead_letters(tmp_path) == ""


# --------------------------------------------------------------------------- rollout


def spooled_lines(spool_dir: Path) -> int:
    return sum(int(str(entry["pending_lines"])) for entry in describe(spool_dir))


def test_rollout_with_database_down_keeps_points_for_the_next_pod(
    influxdb1: InfluxDB1, influxdb1_database: str, tmp_path: Path
) -> None:
    """A Kubernetes rollout while the database is unreachable: SIGTERM puts every request and
    usage into the spool, SIGKILL ends the pod mid-retry, and the next pod (same spool volume,
    database reachable again) delivers all of them, none dead-lettered."""
    port = ClosedPort(influxdb1.host, influxdb1.port)
    try:
        ids = new_ids(REQUESTS, "rollout")
        env = luna_env(
            port.url,
            influxdb1_database,
            tmp_path,
            # Longer than the pod's grace: Kubernetes' SIGKILL comes while delivery still retries.
            OTEL_EXPORTER_LUNA_SHUTDOWN_TIMEOUT="300",
        )
        spool_dir = tmp_path / "spool"
        with started(uvicorn_argv(), env) as old_pod:
            (url,) = old_pod.wait_for(UVICORN_RUNNING)
            post_work(url, ids)
            old_pod.signal(signal.SIGTERM)
            # REQUESTS requests points and as many usages_statistic points (one per request).
            wait_until(
                lambda: spooled_lines(spool_dir) >= 2 * REQUESTS, timeout=60, what="the spool"
            )
            assert old_pod.process.poll() is None, old_pod.output  # still retrying delivery
            old_pod.process.kill()  # the grace time is over
            assert old_pod.wait() == -signal.SIGKILL
        assert spooled_lines(spool_dir) == 2 * REQUESTS
        assert request_ids(influxdb1, influxdb1_database) == []

        port.open()
        with started(uvicorn_argv(), env) as new_pod:
            new_pod.wait_for(UVICORN_RUNNING)
            wait_until(
                lambda: len(request_ids(influxdb1, influxdb1_database)) >= REQUESTS,
                timeout=60,
                what="the next pod to deliver the spool",
            )
            new_pod.signal(signal.SIGTERM)
            assert new_pod.wait() == -signal.SIGTERM, new_pod.output
    finally:
        port.close()
    assert sorted(request_ids(influxdb1, influxdb1_database)) == sorted(ids)
    assert face_detector_usages(influxdb1, influxdb1_database) == REQUESTS
    assert dead_letters(tmp_path) == ""
    assert spooled_lines(spool_dir) == 0
