"""``otel-luna demo``: the example luna-handlers service, instrumented with no code change, driven
with requests, and its LUNA series read back and summarised.

Steps, each a function usable on its own (the CLI in :mod:`otel_luna._cli` only parses arguments):

1. :func:`app_environment` — the environment that selects the ``luna`` traces and metrics
   exporters; the endpoint is ``--endpoint``, else ``OTEL_EXPORTER_LUNA_ENDPOINT``, else a
   line-protocol file ``luna-demo.lp`` in the working directory (emptied first);
2. :class:`AppProcess` — ``opentelemetry-instrument python`` :data:`EXAMPLE_APP` (the example
   service shipped in the package, ``otel_luna/examples/luna_handlers_app.py``) on a free port,
   stopped with SIGTERM and waited for, so the SDK flushes the exporters at exit;
3. :func:`plan_requests` and :func:`drive` — a seeded mix over the app's routes, failing requests
   included, sent concurrently with a progress bar on standard error;
4. :func:`read_line_protocol` (through :mod:`otel_luna.encoding._reader`) or
   :func:`query_influxdb1` (InfluxQL over ``/query``), then :func:`summarize`,
   :func:`format_summary` and :func:`check`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO
from urllib.parse import urlencode

import urllib3

from otel_luna.encoding._reader import LineProtocolSyntaxError, parse_line, parse_lines
from otel_luna.report import influxql_identifier
from otel_luna.schema import luna as schema
from otel_luna.schema._point import Point
from otel_luna.settings._settings import Settings, env_name
from otel_luna.sinks._file import file_path
from otel_luna.sinks._http import basic_auth

OTEL_EXPORTER_LUNA_DEAD_LETTER = env_name("dead_letter")
OTEL_EXPORTER_LUNA_ENDPOINT = env_name("endpoint")
OTEL_EXPORTER_LUNA_SPOOL_DIR = env_name("spool_dir")

#: The example service the demo runs; it ships in the package (:mod:`otel_luna.examples`).
EXAMPLE_APP = Path(__file__).resolve().parent.parent / "examples" / "luna_handlers_app.py"
#: Line-protocol file written in the working directory when no endpoint is configured.
DEFAULT_FILE_NAME = "luna-demo.lp"
#: The report's chart, written in the working directory (``otel-luna report luna --png``).
DEFAULT_PNG_NAME = "luna-demo.png"
#: Dead-letter file of the demo's own state directory (spool and dead letters of one run).
DEAD_LETTER_NAME = "dead-letter.jsonl"
DEFAULT_REQUESTS = 300
DEFAULT_CONCURRENCY = 8
SERVICE_NAME = "luna-handlers"
HOST = "127.0.0.1"
REQUEST_ID_HEADER = "LUNA-Request-Id"

#: The app's LUNA error codes (see ``otel_luna/examples/luna_handlers_app.py``).
BAD_INPUT_DATA = 12031
HANDLER_NOT_FOUND = 22002

#: Seconds to wait for the app to print its address, for it to exit after SIGTERM (it flushes
#: the exporter first, retrying an unreachable database for up to three write timeouts), and for
#: one request.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 120.0
REQUEST_TIMEOUT = 30.0

#: What the app is started with, over the caller's environment.
APP_ENV: Mapping[str, str] = {
    "OTEL_TRACES_EXPORTER": "luna",
    "OTEL_METRICS_EXPORTER": "luna",
    "OTEL_LOGS_EXPORTER": "none",
    "OTEL_SERVICE_NAME": SERVICE_NAME,
}

#: The request mix: kind of request and its weight.
REQUEST_MIX: tuple[tuple[str, int], ...] = (
    ("detector", 25),
    ("extractor", 20),
    ("extractor_bad_body", 6),
    ("handler_events", 27),
    ("unknown_handler_events", 10),
    ("version", 12),
)
EVENTS_ROUTE = "POST:/handlers/{handler_id}/events"
#: The series the demo summarises, in the order it prints them.
SERIES = (schema.REQUESTS, schema.ERRORS, schema.USAGES_STATISTIC, schema.LICENSING)
#: Request kinds whose answer the app counts with ``record_usages`` (when they succeed).
USAGE_KINDS = frozenset({"detector", "extractor"})


class DemoError(RuntimeError):
    """The demo could not run to the end; the message says why."""


# -- the app ------------------------------------------------------------------------------------


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


# -- the requests -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One planned request and what the app should answer."""

    kind: str
    method: str
    path: str
    route: str
    expect_status: int
    expect_error_code: int | None = None
    body: bytes = b""
    content_type: str | None = None
    request_id: str | None = None
    handler_id: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        headers = {}
        if self.content_type:
            headers["Content-Type"] = self.content_type
        if self.request_id:
            headers[REQUEST_ID_HEADER] = self.request_id
        return headers


def plan_requests(
    count: int,
    handler_ids: Sequence[str],
    unknown_handler_ids: Sequence[str],
    rng: random.Random,
) -> list[Call]:
    """``count`` requests drawn from :data:`REQUEST_MIX`; two in three carry a request id."""
    kinds = [kind for kind, _ in REQUEST_MIX]
    weights = [weight for _, weight in REQUEST_MIX]
    calls = []
    for kind in rng.choices(kinds, weights, k=count):
        request_id = None
        if rng.random() < 2 / 3:
            request_id = f"{int(time.time())},{uuid.UUID(int=rng.getrandbits(128), version=4)}"
        calls.append(_call(kind, handler_ids, unknown_handler_ids, rng, request_id))
    return calls


def _call(
    kind: str,
    handler_ids: Sequence[str],
    unknown_handler_ids: Sequence[str],
    rng: random.Random,
    request_id: str | None,
) -> Call:
    json_type = "application/json"
    if kind == "detector":
        image = rng.randbytes(rng.randint(64, 512))
        return Call(
            kind,
            "POST",
            "/detector",
            "POST:/detector",
            201,
            body=image,
            content_type="image/jpeg",
            request_id=request_id,
        )
    if kind == "extractor":
        body = json.dumps({"sample_ids": [str(uuid.UUID(int=rng.getrandbits(128)))]}).encode()
        return Call(
            kind,
            "POST",
            "/extractor",
            "POST:/extractor",
            201,
            body=body,
            content_type=json_type,
            request_id=request_id,
        )
    if kind == "extractor_bad_body":
        return Call(
            kind,
            "POST",
            "/extractor",
            "POST:/extractor",
            400,
            BAD_INPUT_DATA,
            body=b"{not json",
            content_type=json_type,
            request_id=request_id,
        )
    if kind in ("handler_events", "unknown_handler_events"):
        known = kind == "handler_events"
        handler_id = rng.choice(handler_ids if known else unknown_handler_ids)
        body = json.dumps({"images": [{"url": "http://image-store/1.jpg"}]}).encode()
        return Call(
            kind,
            "POST",
            f"/handlers/{handler_id}/events",
            EVENTS_ROUTE,
            201 if known else 404,
            None if known else HANDLER_NOT_FOUND,
            body=body,
            content_type=json_type,
            request_id=request_id,
            handler_id=handler_id,
        )
    if kind == "version":
        return Call(kind, "GET", "/version", "GET:/version", 200, request_id=request_id)
    raise ValueError(f"unknown request kind {kind!r}")


class ProgressBar:
    """A one-line progress bar on a terminal, redrawn with ``\\r`` (at most every 50 ms).

    On a stream that is not a terminal only the final state is written, once.
    """

    width = 30
    redraw_seconds = 0.05

    def __init__(self, total: int, stream: TextIO | None, label: str = "requests") -> None:
        self.total = total
        self.stream = stream
        self.label = label
        self._tty = stream is not None and stream.isatty()
        self._started = time.monotonic()
        self._drawn_at = -1.0
        #: Seconds from :meth:`start` to the latest :meth:`update`.
        self.elapsed = 0.0

    def start(self, at: float | None = None) -> None:
        """Count the time from ``at`` (a :func:`time.monotonic` value; default now)."""
        self._started = time.monotonic() if at is None else at
        self.elapsed = 0.0

    def render(self, done: int) -> str:
        """The bar for ``done`` of :attr:`total`, with the time of the latest :meth:`update`."""
        filled = self.width * done // max(self.total, 1)
        bar = "#" * filled + "." * (self.width - filled)
        return f"[{bar}] {done}/{self.total} {self.label} {self.elapsed:5.1f} s"

    def update(self, done: int) -> None:
        """Note ``done`` (and the time since :meth:`start` in :attr:`elapsed`); redraw."""
        now = time.monotonic()
        self.elapsed = now - self._started
        if self.stream is None:
            return
        final = done >= self.total
        if not final and (not self._tty or now - self._drawn_at < self.redraw_seconds):
            return
        self._drawn_at = now
        self.stream.write(("\r" if self._tty else "") + self.render(done))
        self.stream.flush()

    def close(self) -> None:
        if self.stream is not None:
            self.stream.write("\n")
            self.stream.flush()


@dataclass
class DriveResult:
    """What the app answered: ``statuses[i]`` for ``calls[i]`` (``None``: no answer);
    ``seconds`` from the first request sent to the last answer (the time the progress bar shows)."""

    statuses: list[int | None]
    seconds: float
    problems: list[str] = field(default_factory=list)

    @property
    def answered(self) -> int:
        return sum(status is not None for status in self.statuses)


def drive(
    base_url: str,
    calls: Sequence[Call],
    concurrency: int = DEFAULT_CONCURRENCY,
    progress: TextIO | None = None,
) -> DriveResult:
    """Send ``calls`` to ``base_url``, ``concurrency`` at a time; never raises on HTTP errors."""
    return asyncio.run(_drive(base_url, calls, concurrency, ProgressBar(len(calls), progress)))


async def _drive(
    base_url: str, calls: Sequence[Call], concurrency: int, bar: ProgressBar
) -> DriveResult:
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - aiohttp is in the demo extra
        raise DemoError("aiohttp is needed: pip install 'otel-luna[demo]'") from None

    statuses: list[int | None] = [None] * len(calls)
    problems: list[str] = []
    pending = iter(range(len(calls)))
    done = 0
    bar.start()  # the bar and the summary line count the same time
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    connector = aiohttp.TCPConnector(limit=concurrency)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done
        for index in pending:  # one iterator shared by the workers
            call = calls[index]
            try:
                async with session.request(
                    call.method, base_url + call.path, data=call.body or None, headers=call.headers
                ) as response:
                    await response.read()
                    statuses[index] = response.status
            except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                problems.append(f"{call.method} {call.path}: {type(error).__name__}: {error}")
            else:
                if response.status != call.expect_status:
                    problems.append(
                        f"{call.method} {call.path}: HTTP {response.status}, "
                        f"expected {call.expect_status}"
                    )
            done += 1
            bar.update(done)

    bar.update(0)
    try:
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            workers = max(1, min(concurrency, len(calls)))
            await asyncio.gather(*(worker(session) for _ in range(workers)))
    finally:
        bar.close()
    return DriveResult(statuses, bar.elapsed, problems)


# -- line protocol, read back -------------------------------------------------------------------


def read_line_protocol(path: Path, offset: int = 0) -> list[Point]:
    """Every point in the file from byte ``offset`` on (a line start)."""
    data = path.read_bytes()
    text = data[offset:].decode()
    try:
        return parse_lines(text)
    except LineProtocolSyntaxError as error:
        line = data[:offset].count(b"\n") + error.line
        raise DemoError(f"{path}: line {line}: {error}") from None


def points_in_output(lines: Iterable[str]) -> list[Point]:
    """The LUNA points among the lines an app printed (the ``console`` endpoint)."""
    known = (schema.REQUESTS, schema.ERRORS, schema.USAGES_STATISTIC, schema.LICENSING)
    points = []
    for line in lines:
        if not line.startswith(known):
            continue
        try:
            point = parse_line(line)
        except LineProtocolSyntaxError:
            continue
        if point.measurement in known:
            points.append(point)
    return points


# -- summary ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """Points per series, ``requests`` points by route, ``errors`` points by error code: what
    :func:`check` compares with the requests sent (``otel-luna report luna`` shows the rest)."""

    points: dict[str, int]
    routes: dict[str, int]
    error_codes: dict[str, int]


def summarize(points: Iterable[Point], service: str | None = SERVICE_NAME) -> Summary:
    """The :class:`Summary` of ``points`` (of ``service`` only, unless it is ``None``)."""
    series: Counter[str] = Counter()
    routes: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    for point in points:
        tags = dict(point.tags)
        if service is not None and tags.get("service") != service:
            continue
        series[point.measurement] += 1
        if point.measurement == schema.REQUESTS:
            routes[tags.get("route", "")] += 1
        elif point.measurement == schema.ERRORS:
            codes[tags.get("error_code", "")] += 1
    for measurement in SERIES:
        series.setdefault(measurement, 0)
    return Summary(dict(series), dict(sorted(routes.items())), dict(codes))


def format_summary(summary: Summary) -> str:
    """The summary as printed: points per series."""
    order = [name for name in SERIES if name in summary.points]
    order += sorted(name for name in summary.points if name not in order)
    width = max(len(str(count)) for count in summary.points.values())
    names = max(len(name) for name in order)
    lines = [f"{name:<{names}} {summary.points[name]:>{max(width, 3)}} points" for name in order]
    return "\n".join(lines)


def expected_summary_counts(
    calls: Sequence[Call], statuses: Sequence[int | None]
) -> tuple[Counter[str], Counter[str]]:
    """``requests`` points per route and ``errors`` points per code the answered calls imply."""
    routes: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    for call, status in zip(calls, statuses, strict=True):
        if status is None:
            continue
        routes[call.route] += 1
        if status >= 400:
            code = call.expect_error_code if status == call.expect_status else None
            codes[str(code if code is not None else schema.UNKNOWN_ERROR_CODE)] += 1
    return routes, codes


def check(summary: Summary, calls: Sequence[Call], statuses: Sequence[int | None]) -> list[str]:
    """Differences between the series read back and the requests the app answered: one
    ``requests`` point per answer, one ``errors`` point per failure, at least one
    ``usages_statistic`` point when the app counted estimations (one per export interval) and
    one ``licensing`` point (the app's licence check at start-up)."""
    routes, codes = expected_summary_counts(calls, statuses)
    problems = []
    sent = sum(routes.values())
    if summary.points.get(schema.REQUESTS, 0) != sent:
        problems.append(
            f"{summary.points.get(schema.REQUESTS, 0)} requests points for {sent} requests"
        )
    failed = sum(codes.values())
    if summary.points.get(schema.ERRORS, 0) != failed:
        problems.append(
            f"{summary.points.get(schema.ERRORS, 0)} errors points for {failed} failed requests"
        )
    if summary.routes != dict(routes):
        problems.append(f"requests per route {summary.routes} != sent {dict(routes)}")
    if summary.error_codes != dict(codes):
        problems.append(f"errors per error_code {summary.error_codes} != expected {dict(codes)}")
    counted = any(
        call.kind in USAGE_KINDS and status == call.expect_status
        for call, status in zip(calls, statuses, strict=True)
    )
    if counted and not summary.points.get(schema.USAGES_STATISTIC):
        problems.append("no usages_statistic point for the estimations the app counted")
    if summary.points.get(schema.LICENSING, 0) != 1:
        problems.append(
            f"{summary.points.get(schema.LICENSING, 0)} licensing points for the app's one "
            "licence check"
        )
    return problems


# -- InfluxDB 1.x -------------------------------------------------------------------------------


def _influx_request(
    settings: Settings, path: str, params: Mapping[str, str] | None = None
) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    headers.update(basic_auth(settings.username, settings.password))
    data = None if params is None else urlencode(params).encode()
    try:
        response = urllib3.request(
            "GET" if data is None else "POST",
            settings.endpoint + path,
            body=data,
            headers=headers,
            timeout=settings.timeout,
            retries=False,
        )
    except urllib3.exceptions.HTTPError as error:
        raise DemoError(f"cannot reach InfluxDB at {settings.endpoint}: {error}") from None
    return response.status, response.data


def influx_query(settings: Settings, *statements: str) -> list[dict[str, Any]]:
    """Run InfluxQL statements in one ``POST /query`` (1.x API); one result per statement."""
    params = {"q": ";\n".join(statements), "db": settings.database, "epoch": "ns"}
    status, body = _influx_request(settings, "/query", params)
    try:
        document = json.loads(body)
    except ValueError:
        document = {}
    if status != 200 or "error" in document:
        detail = document.get("error") or body[:300].decode(errors="replace")
        raise DemoError(f"InfluxDB query failed (HTTP {status}): {detail}")
    results: list[dict[str, Any]] = document.get("results", [])
    for index, result in enumerate(results):
        if "error" in result:
            statement = statements[index] if index < len(statements) else "?"
            raise DemoError(f"InfluxDB: {result['error']}: {statement}")
    return results


def prepare_influxdb1(settings: Settings) -> str | None:
    """Check that the InfluxDB answers; create the database if it is missing (a note if so)."""
    status, _ = _influx_request(settings, "/ping")
    if status != 204:
        raise DemoError(f"{settings.endpoint}/ping answered HTTP {status}, not an InfluxDB 1.x")
    (result,) = influx_query(settings, "SHOW DATABASES")
    names = {row[0] for series in result.get("series", []) for row in series.get("values", [])}
    if settings.database in names:
        return None
    influx_query(settings, f"CREATE DATABASE {influxql_identifier(settings.database)}")
    return f"created database {settings.database}"


def query_influxdb1(
    settings: Settings, since_ns: int, until_ns: int, service: str = SERVICE_NAME
) -> Summary:
    """The :class:`Summary` of ``service``'s points between the two times, read back with
    InfluxQL by the reader ``otel-luna report`` uses."""
    from otel_luna.report import ReportError
    from otel_luna.report import query_influxql

    try:
        points = query_influxql(settings, SERIES, since_ns, {"service": service})
    except ReportError as error:
        raise DemoError(str(error)) from None
    return summarize(point for point in points if point.time_ns <= until_ns)


# -- the whole demo -----------------------------------------------------------------------------


def _empty(path: Path) -> None:
    """Make ``path`` an empty regular file, never through a symbolic link (a link would have
    its target emptied: someone else's file)."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise DemoError(
            f"{path} is a symbolic link or no regular file: the demo empties {path.name} first "
            "and will not do that to whatever it points at; remove it, or run the demo elsewhere"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    except OSError as error:
        raise DemoError(
            f"cannot write {path}: {error.strerror}; run the demo in a writable directory or "
            "pass --endpoint"
        ) from None
    os.close(fd)


def _report(
    source: Path | Settings | None,
    since_ns: int,
    cwd: Path,
    say: Callable[[str], None],
    out: TextIO,
) -> list[str]:
    """``otel-luna report luna`` of the run's points, charted in :data:`DEFAULT_PNG_NAME` when
    matplotlib is installed (the ``report`` extra, part of ``demo``); problems found."""
    from otel_luna.report import ReportError
    from otel_luna.report import _luna as luna

    assert source is not None
    png: Path | None = cwd / DEFAULT_PNG_NAME
    unwritable = not os.access(cwd, os.W_OK)
    if importlib.util.find_spec("matplotlib") is None or unwritable:
        png = None
    say("")
    since = dt.datetime.fromtimestamp(since_ns // 1000 / 1e6, tz=dt.timezone.utc)
    try:
        luna.show(source, since=since, service=SERVICE_NAME, png=png, out=out)
    except ReportError as error:
        return [f"the report: {error}"]
    if png is None:
        say(
            f"(no chart: {cwd} is not writable)"
            if unwritable
            else "(pip install 'otel-luna[report]' to get the chart as a PNG too)"
        )
    return []


def summary_source(settings: Settings) -> str:
    """Where the demo reads the series back: ``file``, ``console``, ``influxdb1``, or ``none``."""
    sink = settings.sink_name
    if not settings.enabled:
        return "none"
    if sink == "file":
        return "file"
    if sink == "console":
        return "console"
    if sink == "influxdb-v1":
        return "influxdb1"
    return "none"


def summary_note(settings: Settings) -> str:
    """Why there is no summary, for a ``none`` :func:`summary_source`."""
    if not settings.enabled:
        return "the exporter is disabled (OTEL_EXPORTER_LUNA_ENABLED): nothing to summarise"
    if settings.sink_name == "influxdb-v2":
        return (
            "the endpoint uses the InfluxDB 2.x API: the summary reads the 1.x API (/query) "
            "only; no summary"
        )
    return f"the summary cannot read sink {settings.sink_name!r}; no summary"


@dataclass
class DemoResult:
    """Everything one demo run did, for callers that want more than the exit code."""

    endpoint: str
    calls: list[Call]
    drive: DriveResult
    app_returncode: int
    summary: Summary | None
    problems: list[str]
    app_output: list[str]


def run_demo(
    requests: int = DEFAULT_REQUESTS,
    *,
    endpoint: str | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    cwd: Path | None = None,
    environ: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    progress: TextIO | None = None,
    seed: int | None = None,
    app: Path = EXAMPLE_APP,
) -> DemoResult:
    """Run the demo end to end, printing to ``out`` (the progress bar to ``progress``).

    Raises :class:`~otel_luna.settings.SettingsError` for a bad setting and :class:`DemoError`
    when the app or the database cannot be used. ``result.problems`` lists any difference
    between the requests the app answered and the points read back.
    """
    if requests < 1 or concurrency < 1:
        raise ValueError("requests and concurrency must be at least 1")
    state_dir = Path(tempfile.mkdtemp(prefix="otel-luna-demo-"))
    keep = False
    try:
        result = _run_demo(
            requests, endpoint, concurrency, cwd, environ, out, progress, seed, app, state_dir
        )
        dead_letter = state_dir / DEAD_LETTER_NAME
        if dead_letter.exists() and dead_letter.stat().st_size:
            lines = len(dead_letter.read_bytes().splitlines())
            result.problems.append(f"{lines} lines rejected by the destination: see {dead_letter}")
            print(f"problem: {result.problems[-1]}", file=out or sys.stdout, flush=True)
        keep = bool(result.problems) and any(state_dir.iterdir())
        if keep:
            print(
                f"the app's spool and dead letters are kept in {state_dir}",
                file=out or sys.stdout,
                flush=True,
            )
        return result
    finally:
        if not keep:
            shutil.rmtree(state_dir, ignore_errors=True)


def _run_demo(
    requests: int,
    endpoint: str | None,
    concurrency: int,
    cwd: Path | None,
    environ: Mapping[str, str] | None,
    out: TextIO | None,
    progress: TextIO | None,
    seed: int | None,
    app: Path,
    state_dir: Path,
) -> DemoResult:
    cwd = Path.cwd() if cwd is None else cwd
    out = sys.stdout if out is None else out
    env = app_environment(os.environ if environ is None else environ, cwd, endpoint, state_dir)
    chosen = env[OTEL_EXPORTER_LUNA_ENDPOINT]
    settings = Settings.load(env)
    source = summary_source(settings)

    def say(text: str) -> None:
        out.write(text + "\n")
        out.flush()

    say(f"otel-luna demo: {SERVICE_NAME} under opentelemetry-instrument, exporter luna -> {chosen}")
    lp_path: Path | None = None
    offset = 0
    if source == "file":
        lp_path = cwd / file_path(settings.endpoint)
        if chosen == default_endpoint(cwd):
            _empty(lp_path)
        elif lp_path.exists():
            offset = lp_path.stat().st_size
    elif source == "influxdb1":
        note = prepare_influxdb1(settings)
        if note:
            say(note)

    rng = random.Random(seed)
    handler_ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(3)]
    unknown_ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(2)]
    calls = plan_requests(requests, handler_ids, unknown_ids, rng)

    since_ns = time.time_ns()
    process = AppProcess(env, cwd, app, ["--handlers", ",".join(handler_ids)])
    with process:
        say(f"app listening on {process.url} (pid {process.pid})")
        driven = drive(process.url or "", calls, concurrency, progress)
        returncode = process.stop()
    until_ns = time.time_ns()
    failing = sum(1 for status in driven.statuses if status is not None and status >= 400)
    say(
        f"sent {driven.answered} requests ({failing} failing) in {driven.seconds:.1f} s; "
        f"app stopped with SIGTERM (exit {returncode})"
    )
    problems = list(driven.problems)
    if returncode != 0:
        problems.append(f"the app exited with {returncode}:\n{process.output_tail()}")

    summary: Summary | None = None
    if source == "file" and lp_path is not None:
        if not lp_path.exists():
            raise DemoError(f"{lp_path} was not written:\n{process.output_tail()}")
        summary = summarize(read_line_protocol(lp_path, offset))
        say(f"series in {lp_path}:")
    elif source == "console":
        summary = summarize(points_in_output(process.output))
        say("series the app printed:")
    elif source == "influxdb1":
        try:
            summary = query_influxdb1(settings, since_ns, until_ns)
        except DemoError as error:
            problems.append(f"reading the series back: {error}")
        else:
            say(f"series in {settings.endpoint} database {settings.database}:")
    else:
        say(summary_note(settings))

    if summary is not None:
        say(format_summary(summary))
        mismatches = check(summary, calls, driven.statuses)
        problems += mismatches
        if not mismatches:
            say(
                "check: one requests point per request, one errors point per failed request, "
                "usages_statistic and licensing points: ok"
            )
    if summary is not None and source in ("file", "influxdb1"):
        problems += _report(lp_path if source == "file" else settings, since_ns, cwd, say, out)
    for problem in problems:
        say(f"problem: {problem}")
    if problems and returncode == 0 and process.output[1:]:
        say("the app's output (last 30 lines):\n" + process.output_tail())
    return DemoResult(chosen, calls, driven, returncode, summary, problems, process.output)
