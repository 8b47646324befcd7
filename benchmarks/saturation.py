"""Saturation run: is every request a saturated app answered written, with no span dropped?

    .venv/bin/python benchmarks/saturation.py [--runs 3] [--seconds 20] [--connections 8]
        [--share404 0.3] [--bsp-env OTEL_BSP_MAX_QUEUE_SIZE=8192 ...] [--json]

The four-line FastAPI app of ``_app.py`` under ``opentelemetry-instrument`` with
``OTEL_TRACES_EXPORTER=luna`` (file sink), driven to saturation by ``wrk`` (``--connections``
connections, random paths, ``--share404`` of them unknown: 404). Each run counts the requests
answered at the load generator, stops the app (SIGTERM: the SDK and the exporter flush at exit)
and counts the ``requests`` lines the file holds; it looks for the SDK's
``Queue full, dropping Span.`` in the app's log and reads ``sdk_queue_full`` (the spans the SDK
dropped that otel-luna counted) from ``otel-luna status`` just before the stop. ``--bsp-env``
sets ``OTEL_BSP_*`` (or any) variables for the app.

A run fails when fewer ``requests`` lines are written than requests answered, or the SDK says
its queue was full. Exit status: 0 when every run passes, 1 otherwise. Bounded in time: about
``runs * (seconds + 10)`` s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from _app import drive as drive_app
from _app import ensure_wrk, running_app
from _common import dump, environment

QUEUE_FULL = "Queue full, dropping Span."


def one_run(wrk: str, options: Any, extra_env: dict[str, str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="otel-luna-saturation-") as name:
        work = Path(name)
        with running_app("luna", work, extra_env=extra_env) as app:
            load = drive_app(
                wrk,
                app.url,
                options.seconds,
                connections=options.connections,
                share404=options.share404,
            )
            counted = app.sdk_queue_full()
        status = app.process.returncode
        written = app.requests_lines()
        log = app.log_text()
    queue_full = log.count(QUEUE_FULL)
    missing = max(0, load.requests - written)
    return {
        "answered": load.requests,
        "non_2xx": load.non_2xx,
        "socket_errors": load.errors,
        "requests_per_s": round(load.requests / load.seconds, 1),
        "requests_lines": written,
        "missing": missing,
        "queue_full_log_lines": queue_full,
        "sdk_queue_full_counted": counted,
        "app_exit_status": status,
        "ok": missing == 0 and queue_full == 0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs in a row (default 3)")
    parser.add_argument("--seconds", type=float, default=20, help="load per run (default 20)")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (default 8)")
    parser.add_argument("--share404", type=float, default=0.3, help="unknown paths (default 0.3)")
    parser.add_argument(
        "--bsp-env",
        nargs="*",
        default=[],
        metavar="NAME=VALUE",
        help="variables for the app, e.g. OTEL_BSP_MAX_QUEUE_SIZE=8192",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    options = parser.parse_args(argv)
    extra_env = dict(item.split("=", 1) for item in options.bsp_env)
    wrk = ensure_wrk()
    runs = []
    for index in range(options.runs):
        result = one_run(wrk, options, extra_env)
        runs.append(result)
        if not options.json:
            print(
                f"run {index + 1}: answered {result['answered']} "
                f"({result['requests_per_s']}/s, {result['non_2xx']} non-2xx, "
                f"{result['socket_errors']} socket errors), requests lines "
                f"{result['requests_lines']}, missing {result['missing']}, "
                f"'Queue full' logged {result['queue_full_log_lines']}x, "
                f"sdk_queue_full counted {result['sdk_queue_full_counted']}: "
                f"{'ok' if result['ok'] else 'FAILED'}",
                flush=True,
            )
    ok = all(run["ok"] for run in runs)
    if options.json:
        dump(
            {
                "benchmark": "saturation",
                "ok": ok,
                "runs": runs,
                "seconds": options.seconds,
                "connections": options.connections,
                "share404": options.share404,
                "env": extra_env,
                "environment": environment(),
            }
        )
    else:
        verdict = "every answered request written, no Queue full" if ok else "FAILED"
        print(f"saturation: {verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
