"""Real database servers for the tests: InfluxDB 1.x (``influxd``), InfluxDB 2.x (``influxd`` built
by ``scripts/build-influxdb2``) and VictoriaMetrics.

Each server runs as a child process of the test session on 127.0.0.1, on ports found by binding
port 0, with its data and its log in its own temporary directory. Readiness is polled with a
deadline; stopping is by the PID we started (terminate, wait, kill on timeout).

Only the standard library is used, so this module imports even before the venv is complete.
The pytest fixtures that use it live in ``conftest.py``.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

HOST = "127.0.0.1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
HTTP_TIMEOUT = 10.0
LOG_TAIL_LINES = 40
BOOTSTRAP_HINT = "run ./scripts/bootstrap (it installs influxdb, influxdb-client, victoria-metrics)"


class ServerError(RuntimeError):
    """A test server could not be found, started, or answered with an error."""


class ServerHTTPError(ServerError):
    """An HTTP request to a test server returned a non-2xx status."""

    def __init__(self, method: str, url: str, status: int, body: str) -> None:
        super().__init__(f"{method} {url} -> HTTP {status}: {body.strip()[:2000]}")
        self.status = status
        self.body = body


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


_names = itertools.count(1)


def unique_name(prefix: str = "t") -> str:
    """A name unique in this session and across sessions, safe as an InfluxQL identifier."""
    return f"{prefix}_{next(_names)}_{uuid.uuid4().hex[:8]}"


def find_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ServerError(f"the {name!r} binary is not on PATH: {BOOTSTRAP_HINT}")
    return path


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(could not read {path}: {exc})"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else "(log is empty)"


def http_request(
    method: str,
    url: str,
    *,
    params: Mapping[str, str] | None = None,
    data: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = HTTP_TIMEOUT,
) -> tuple[int, dict[str, str], bytes]:
    """Do one HTTP request; return (status, headers, body). Raise ServerHTTPError if not 2xx."""
    if params:
        url = f"{url}?{urllib.parse.urlencode(params)}"
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            body = exc.read().decode("utf-8", "replace")
        raise ServerHTTPError(method, url, exc.code, body) from None


def _set_parent_death_signal() -> None:  # pragma: no cover - runs in the child
    """Linux: have the kernel SIGTERM the server if the test process dies without cleaning up."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


def _child_env(drop_prefixes: Iterable[str]) -> dict[str, str]:
    prefixes = tuple(drop_prefixes)
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


class ServerProcess:
    """One server child process, its log file, and how to wait for it and stop it."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        workdir: Path,
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                argv,
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                preexec_fn=_set_parent_death_signal if sys.platform == "linux" else None,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def failure(self, reason: str) -> ServerError:
        return ServerError(
            f"{self.name} (pid {self.pid}) {reason}\n"
            f"command: {' '.join(self.argv)}\n"
            f"log {self.log_path}, last lines:\n{log_tail(self.log_path)}"
        )

    def wait_ready(self, probe: Callable[[], bool], timeout: float = START_TIMEOUT) -> float:
        """Poll ``probe`` until True; return the seconds it took. Fail on exit or timeout."""
        started = time.monotonic()
        deadline = started + timeout
        try:
            while True:
                if not self.running():
                    raise self.failure(f"exited with status {self.popen.returncode} while starting")
                try:
                    if probe():
                        return time.monotonic() - started
                except (OSError, ServerError):
                    pass
                if time.monotonic() >= deadline:
                    raise self.failure(f"was not ready after {timeout:.0f} s")
                time.sleep(0.02)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the process we started, by its PID: terminate, wait, kill on timeout."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=timeout)
        else:
            self.popen.wait()


class RunningServer:
    """A server the tests started: its :class:`ServerProcess`, its PID and log, stopping it."""

    process: ServerProcess

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    def stop(self) -> None:
        self.process.stop()


_T = TypeVar("_T")


def _start_with_port_retry(start: Callable[[], _T], attempts: int = 3) -> _T:
    """Ports from ``free_port`` can be taken by someone else before the server binds them."""
    last: ServerError | None = None
    for _ in range(attempts):
        try:
            return start()
        except ServerError as exc:
            if "address already in use" not in str(exc).lower():
                raise
            last = exc
    assert last is not None
    raise last


# --------------------------------------------------------------------------- InfluxDB 1.x

INFLUXDB1_CONFIG = """\
reporting-enabled = false
bind-address = "{host}:{rpc_port}"

[meta]
  dir = "{root}/meta"
  retention-autocreate = true
  logging-enabled = true

[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  wal-fsync-delay = "0s"
  query-log-enabled = true

[monitor]
  store-enabled = false

[continuous_queries]
  enabled = false

[subscriber]
  enabled = false

[http]
  enabled = true
  bind-address = "{host}:{http_port}"
  auth-enabled = {auth}
  max-body-size = {max_body_size}
  log-enabled = true
  pprof-enabled = false
  unix-socket-enabled = false
  https-enabled = false

[logging]
  level = "info"
  suppress-logo = true
"""


class InfluxDB1(RunningServer):
    """A running ``influxd`` (InfluxDB 1.x) on 127.0.0.1 with a temporary data directory.

    ``auth=True`` enables authentication (``[http] auth-enabled``); the helpers then use an admin
    user created at start, ``admin`` (name, password), and other users are refused with 401
    until :meth:`create_user` makes them. ``max_body_size`` bounds a request body (413 beyond).
    """

    def __init__(self, root: Path, *, auth: bool = False, max_body_size: int = 25_000_000) -> None:
        self.root = root
        self.admin: tuple[str, str] | None = None
        self.host = HOST
        self.port = free_port()
        self.rpc_port = free_port()
        while self.rpc_port == self.port:
            self.rpc_port = free_port()
        self.url = f"http://{self.host}:{self.port}"
        self.config_path = root / "influxdb.conf"
        self.config_path.write_text(
            INFLUXDB1_CONFIG.format(
                host=self.host,
                rpc_port=self.rpc_port,
                http_port=self.port,
                root=root,
                auth=str(auth).lower(),
                max_body_size=max_body_size,
            )
        )
        self.version: str | None = None
        self.process = ServerProcess(
            "influxd",
            [find_binary("influxd"), "-config", str(self.config_path)],
            root,
            env=_child_env(["INFLUXDB_"]),  # influxd lets INFLUXDB_* env vars override the config
        )
        self.startup_seconds = self.process.wait_ready(self._ping_ok)
        if auth:
            # With no admin user yet, InfluxDB takes exactly this statement unauthenticated.
            admin = ("admin", uuid.uuid4().hex)
            self.query(f"CREATE USER {admin[0]} WITH PASSWORD '{admin[1]}' WITH ALL PRIVILEGES")
            self.admin = admin

    def __repr__(self) -> str:
        return f"InfluxDB1(url={self.url!r}, pid={self.pid}, version={self.version!r})"

    def _ping_ok(self) -> bool:
        status, headers, _ = http_request("GET", f"{self.url}/ping", timeout=1.0)
        self.version = headers.get("X-Influxdb-Version")
        return status == 204

    def query(self, q: str, db: str | None = None, *, epoch: str | None = None) -> dict[str, Any]:
        """Run InfluxQL via ``POST /query``; return the parsed JSON. Raise on any error.

        ``epoch`` ("ns", "u", "ms", "s", ...) returns times as integers instead of RFC 3339.
        """
        params = {"q": q}
        if db is not None:
            params["db"] = db
        if epoch is not None:
            params["epoch"] = epoch
        body = urllib.parse.urlencode(params).encode()
        _, _, raw = http_request(
            "POST",
            f"{self.url}/query",
            data=body,
            headers={"Content-Type": "application/x-www-form-urlencoded", **self._auth()},
        )
        result: dict[str, Any] = json.loads(raw)
        errors = [result["error"]] if "error" in result else []
        errors += [r["error"] for r in result.get("results", []) if "error" in r]
        if errors:
            raise ServerError(f"InfluxDB query {q!r} failed: {'; '.join(errors)}")
        return result

    def select(self, q: str, db: str, *, epoch: str | None = "ns") -> list[dict[str, Any]]:
        """Run one query and return its rows as dicts (column -> value), over all series."""
        result = self.query(q, db, epoch=epoch)
        rows: list[dict[str, Any]] = []
        for statement in result.get("results", []):
            for series in statement.get("series", []):
                tags = series.get("tags", {})
                for values in series.get("values", []):
                    rows.append({**tags, **dict(zip(series["columns"], values, strict=True))})
        return rows

    def write(
        self,
        lines: str | bytes,
        db: str,
        *,
        precision: str = "ns",
        rp: str | None = None,
    ) -> None:
        """Write line protocol with ``POST /write``. Raise ServerHTTPError if not 204."""
        params = {"db": db, "precision": precision}
        if rp is not None:
            params["rp"] = rp
        data = lines.encode() if isinstance(lines, str) else lines
        http_request("POST", f"{self.url}/write", params=params, data=data, headers=self._auth())

    def _auth(self) -> dict[str, str]:
        if self.admin is None:
            return {}
        pair = base64.b64encode(":".join(self.admin).encode()).decode()
        return {"Authorization": f"Basic {pair}"}

    def create_user(self, name: str, password: str) -> None:
        """Create a user with all privileges (an admin)."""
        self.query(f"CREATE USER \"{name}\" WITH PASSWORD '{password}' WITH ALL PRIVILEGES")

    def create_database(self, name: str) -> None:
        self.query(f'CREATE DATABASE "{name}"')

    def drop_database(self, name: str) -> None:
        self.query(f'DROP DATABASE "{name}"')

    def databases(self) -> list[str]:
        result = self.query("SHOW DATABASES")
        series = result["results"][0].get("series", [])
        return [row[0] for s in series for row in s.get("values", [])]

    def fresh_database(self, prefix: str = "test") -> str:
        """Create a new database with a unique name and return the name."""
        name = unique_name(prefix)
        self.create_database(name)
        return name


def start_influxdb1(root: Path, **options: Any) -> InfluxDB1:
    """Start influxd in ``root`` (a fresh directory); retries if a picked port was taken.
    ``options`` go to :class:`InfluxDB1` (``auth``, ``max_body_size``)."""

    def start() -> InfluxDB1:
        attempt = root / f"run{len(list(root.glob('run*'))) + 1}"
        attempt.mkdir(parents=True)
        return InfluxDB1(attempt, **options)

    return _start_with_port_retry(start)


# --------------------------------------------------------------------------- VictoriaMetrics


class VictoriaMetrics(RunningServer):
    """A running single-node VictoriaMetrics on 127.0.0.1 with a temporary data directory.

    It accepts InfluxDB line protocol on ``/write`` and ``/api/v2/write``; a field ``f`` of
    measurement ``m`` becomes the series ``m_f``, with the tags as labels.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.host = HOST
        self.port = free_port()
        self.url = f"http://{self.host}:{self.port}"
        self.data_dir = root / "data"
        self.process = ServerProcess(
            "victoria-metrics",
            [
                find_binary("victoria-metrics"),
                f"-httpListenAddr={self.host}:{self.port}",
                f"-storageDataPath={self.data_dir}",
                "-retentionPeriod=100y",
                "-search.latencyOffset=0s",
            ],
            root,
        )
        self.startup_seconds = self.process.wait_ready(self._healthy)

    def __repr__(self) -> str:
        return f"VictoriaMetrics(url={self.url!r}, pid={self.pid})"

    def _healthy(self) -> bool:
        status, _, body = http_request("GET", f"{self.url}/health", timeout=1.0)
        return status == 200 and body.strip() == b"OK"

    def write(self, lines: str | bytes, *, path: str = "/write") -> None:
        """Write InfluxDB line protocol (ns timestamps). Raise ServerHTTPError if not 2xx."""
        data = lines.encode() if isinstance(lines, str) else lines
        http_request("POST", f"{self.url}{path}", data=data)

    def force_flush(self) -> None:
        """Make recently written samples visible to searches (``/internal/force_flush``)."""
        http_request("GET", f"{self.url}/internal/force_flush")

    def export(self, match: str) -> list[dict[str, Any]]:
        """``GET /api/v1/export?match[]=MATCH``: one dict per JSON line, each with ``metric``
        (labels, ``__name__`` included), ``values`` and ``timestamps`` (ms)."""
        _, _, raw = http_request("GET", f"{self.url}/api/v1/export", params={"match[]": match})
        return [json.loads(line) for line in raw.decode().splitlines() if line.strip()]

    @staticmethod
    def sample_count(series: list[dict[str, Any]]) -> int:
        return sum(len(s.get("values", [])) for s in series)

    def wait_for(
        self, match: str, expected_count: int, timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """Flush and export ``match`` until it holds at least ``expected_count`` samples
        (values summed over all matching series); return the export. Raise on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            self.force_flush()
            series = self.export(match)
            if self.sample_count(series) >= expected_count:
                return series
            if time.monotonic() >= deadline:
                raise ServerError(
                    f"VictoriaMetrics: {match!r} has {self.sample_count(series)} samples after "
                    f"{timeout} s, expected {expected_count}: {series!r}"
                )
            time.sleep(0.05)


def start_victoria_metrics(root: Path) -> VictoriaMetrics:
    """Start VictoriaMetrics in ``root`` (a fresh directory); retries if the port was taken."""

    def start() -> VictoriaMetrics:
        attempt = root / f"run{len(list(root.glob('run*'))) + 1}"
        attempt.mkdir(parents=True)
        return VictoriaMetrics(attempt)

    return _start_with_port_retry(start)


# --------------------------------------------------------------------------- InfluxDB 2.x

#: Builds ``influxd`` of InfluxDB OSS 2.7 from its Go module, once (``tests/influxdb2``).
INFLUXDB2_BUILD = Path(__file__).resolve().parent.parent.parent / "scripts" / "build-influxdb2"
#: The first build of a server from its Go modules takes minutes (README.md).
BUILD_TIMEOUT = 3600.0


def built_binary(script: Path, needs: str) -> str:
    """The path a ``scripts/build-*`` script prints: the binary of a server built once from its
    Go modules (built now if its cache has none of these sources; ``./scripts/test`` builds
    them before pytest, so here it only asks). ``needs`` says what a failed build lacks."""
    try:
        built = subprocess.run(
            [str(script)],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except OSError as exc:
        raise ServerError(f"cannot run {script}: {exc}") from None
    if built.returncode != 0:
        raise ServerError(
            f"{script} failed ({built.returncode}); it needs {needs}:\n{built.stderr[-4000:]}"
        )
    path = built.stdout.strip().splitlines()[-1]
    if not Path(path).is_file():
        raise ServerError(f"{script} printed {path!r}, which is not a file")
    return path


class InfluxDB2(RunningServer):
    """A running InfluxDB OSS 2.x ``influxd`` on 127.0.0.1, onboarded: organization ``org``,
    bucket ``bucket``, the operator token ``token`` (all privileges).

    Every path it writes is in ``root``, it reads no configuration file (``INFLUXD_CONFIG_PATH``
    is ``root``, ``INFLUXD_*`` variables are dropped) and it listens on one port of 127.0.0.1.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.host = HOST
        self.port = free_port()
        self.url = f"http://{self.host}:{self.port}"
        self.org = "luna"
        self.bucket = "luna_monitoring"
        self.token = f"operator-{uuid.uuid4().hex}"
        self.version: str | None = None
        env = _child_env(["INFLUXD_"])
        env["INFLUXD_CONFIG_PATH"] = str(root)  # never a ./config.* of somewhere else
        self.process = ServerProcess(
            "influxd2",
            [
                built_binary(INFLUXDB2_BUILD, "Go 1.26, Rust, the Go module proxy and crates.io"),
                f"--http-bind-address={self.host}:{self.port}",
                f"--bolt-path={root / 'influxd.bolt'}",
                f"--engine-path={root / 'engine'}",
                f"--sqlite-path={root / 'influxd.sqlite'}",
                "--reporting-disabled",
                "--pprof-disabled",
                "--ui-disabled",
                "--log-level=warn",
            ],
            root,
            env=env,
        )
        self.startup_seconds = self.process.wait_ready(self._healthy)
        answer = self.api(
            "POST",
            "/api/v2/setup",
            {
                "username": "luna",
                "password": uuid.uuid4().hex,
                "org": self.org,
                "bucket": self.bucket,
                "token": self.token,
                "retentionPeriodSeconds": 0,
            },
            token=None,
        )
        self.org_id: str = answer["org"]["id"]
        self.bucket_id: str = answer["bucket"]["id"]

    def __repr__(self) -> str:
        return f"InfluxDB2(url={self.url!r}, pid={self.pid}, version={self.version!r})"

    def _healthy(self) -> bool:
        status, _, body = http_request("GET", f"{self.url}/health", timeout=1.0)
        self.version = json.loads(body).get("version")
        return status == 200

    def api(
        self, method: str, path: str, document: Any = None, *, token: str | None = "operator"
    ) -> Any:
        """One JSON call of the HTTP API; the parsed answer (None when empty)."""
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Token {self.token if token == 'operator' else token}"
        data = json.dumps(document).encode() if document is not None else None
        _, _, raw = http_request(method, f"{self.url}{path}", data=data, headers=headers)
        return json.loads(raw) if raw.strip() else None

    def create_bucket(self, name: str, retention_seconds: int = 0) -> str:
        """A new bucket of ``org``; its id."""
        rules = [{"type": "expire", "everySeconds": retention_seconds}] if retention_seconds else []
        answer = self.api(
            "POST",
            "/api/v2/buckets",
            {"orgID": self.org_id, "name": name, "retentionRules": rules},
        )
        return str(answer["id"])

    def fresh_bucket(self, prefix: str = "test") -> str:
        """Create a new bucket with a unique name and return the name."""
        name = unique_name(prefix)
        self.create_bucket(name)
        return name

    def delete_bucket(self, name: str) -> None:
        found = self.api("GET", f"/api/v2/buckets?{urllib.parse.urlencode({'name': name})}")
        for bucket in found.get("buckets", []):
            self.api("DELETE", f"/api/v2/buckets/{bucket['id']}")

    def create_token(self, description: str, *, write_bucket: str | None = None) -> str:
        """A token of ``org``: write access to one bucket (``write_bucket``), or read access
        to the organization's buckets only."""
        if write_bucket is not None:
            found = self.api(
                "GET", f"/api/v2/buckets?{urllib.parse.urlencode({'name': write_bucket})}"
            )
            bucket_id = found["buckets"][0]["id"]
            resource = {"type": "buckets", "id": bucket_id, "orgID": self.org_id}
            permissions = [{"action": "write", "resource": resource}]
        else:
            resource = {"type": "buckets", "orgID": self.org_id}
            permissions = [{"action": "read", "resource": resource}]
        answer = self.api(
            "POST",
            "/api/v2/authorizations",
            {"orgID": self.org_id, "description": description, "permissions": permissions},
        )
        return str(answer["token"])

    def write(self, lines: str | bytes, bucket: str, *, precision: str = "ns") -> None:
        """Write line protocol with ``POST /api/v2/write``. Raise ServerHTTPError if not 2xx."""
        data = lines.encode() if isinstance(lines, str) else lines
        http_request(
            "POST",
            f"{self.url}/api/v2/write",
            params={"org": self.org, "bucket": bucket, "precision": precision},
            data=data,
            headers={"Authorization": f"Token {self.token}"},
        )

    def flux_csv(self, query: str) -> str:
        """The annotated CSV answer of a Flux query (``POST /api/v2/query``)."""
        _, _, raw = http_request(
            "POST",
            f"{self.url}/api/v2/query",
            params={"org": self.org},
            data=json.dumps({"query": query, "type": "flux"}).encode(),
            headers={
                "Authorization": f"Token {self.token}",
                "Content-Type": "application/json",
                "Accept": "application/csv",
            },
        )
        return raw.decode()


def start_influxdb2(root: Path) -> InfluxDB2:
    """Start InfluxDB 2.x in ``root`` (a fresh directory); retries if the port was taken."""

    def start() -> InfluxDB2:
        attempt = root / f"run{len(list(root.glob('run*'))) + 1}"
        attempt.mkdir(parents=True)
        return InfluxDB2(attempt)

    return _start_with_port_retry(start)
