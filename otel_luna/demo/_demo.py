"""``otel-luna demo``: the example luna-handlers service, instrumented with no code change, driven
with requests, and its LUNA series read back, checked and reported.

Each step is a module with functions usable on their own (the CLI in :mod:`otel_luna._cli`
only parses arguments):

1. :mod:`~otel_luna.demo._app` — the process manager: :func:`app_environment` selects the
   ``luna`` traces exporter, usages per request and no metrics exporter (the endpoint is
   ``--endpoint``, else ``OTEL_EXPORTER_LUNA_ENDPOINT``, else a line-protocol file
   ``luna-demo.lp`` in the working directory, emptied first); :class:`AppProcess` runs
   ``opentelemetry-instrument python`` :data:`EXAMPLE_APP` on a free port and stops it with
   SIGTERM;
2. :mod:`~otel_luna.demo._load` — the load generator: :func:`plan_requests` and :func:`drive`;
3. :mod:`~otel_luna.demo._verify` — the verifier: the series read back (a file, the app's
   output, or InfluxDB 1.x through the report's query client), :func:`summarize`,
   :func:`format_summary` and :func:`check`;
4. this module — :func:`run_demo`, the whole run, ending with ``otel-luna report luna``.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from otel_luna.demo._app import (
    DEAD_LETTER_NAME,
    EXAMPLE_APP,
    OTEL_EXPORTER_LUNA_ENDPOINT,
    SERVICE_NAME,
    AppProcess,
    app_environment,
    default_endpoint,
)
from otel_luna.demo._errors import DemoError
from otel_luna.demo._load import (
    DEFAULT_CONCURRENCY,
    DEFAULT_REQUESTS,
    Call,
    DriveResult,
    drive,
    plan_requests,
)
from otel_luna.demo._verify import (
    Summary,
    SummarySource,
    check,
    format_summary,
    points_in_output,
    prepare_influxdb1,
    query_influxdb1,
    read_line_protocol,
    summarize,
    summary_note,
    summary_source,
)
from otel_luna.settings import Settings
from otel_luna.sinks import file_path

__all__ = ["DEFAULT_PNG_NAME", "DemoResult", "run_demo"]

#: The report's chart, written in the working directory (``otel-luna report luna --png``).
DEFAULT_PNG_NAME = "luna-demo.png"


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
    from otel_luna.report import ReportError, show

    assert source is not None
    png: Path | None = cwd / DEFAULT_PNG_NAME
    unwritable = not os.access(cwd, os.W_OK)
    if importlib.util.find_spec("matplotlib") is None or unwritable:
        png = None
    say("")
    since = dt.datetime.fromtimestamp(since_ns // 1000 / 1e6, tz=dt.timezone.utc)
    try:
        show(source, since=since, service=SERVICE_NAME, png=png, out=out)
    except ReportError as error:
        return [f"the report: {error}"]
    if png is None:
        say(
            f"(no chart: {cwd} is not writable)"
            if unwritable
            else "(pip install 'otel-luna[report]' to get the chart as a PNG too)"
        )
    return []


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
    if source is SummarySource.FILE:
        lp_path = cwd / file_path(settings.endpoint)
        if chosen == default_endpoint(cwd):
            _empty(lp_path)
        elif lp_path.exists():
            offset = lp_path.stat().st_size
    elif source is SummarySource.INFLUXDB1:
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
    if source is SummarySource.FILE and lp_path is not None:
        if not lp_path.exists():
            raise DemoError(f"{lp_path} was not written:\n{process.output_tail()}")
        summary = summarize(read_line_protocol(lp_path, offset))
        say(f"series in {lp_path}:")
    elif source is SummarySource.CONSOLE:
        summary = summarize(points_in_output(process.output))
        say("series the app printed:")
    elif source is SummarySource.INFLUXDB1:
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
                "one usages_statistic point per request with estimations (at the request's "
                "time, the sums it counted), one licensing point: ok"
            )
    if summary is not None and source in (SummarySource.FILE, SummarySource.INFLUXDB1):
        problems += _report(
            lp_path if source is SummarySource.FILE else settings, since_ns, cwd, say, out
        )
    for problem in problems:
        say(f"problem: {problem}")
    if problems and returncode == 0 and process.output[1:]:
        say("the app's output (last 30 lines):\n" + process.output_tail())
    return DemoResult(chosen, calls, driven, returncode, summary, problems, process.output)
