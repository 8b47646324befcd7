"""The app-level figure: CPU the app process spends per request, with and without telemetry.

    .venv/bin/python benchmarks/app_cpu.py [--rounds 3] [--seconds 10] [--share404 0.0] [--json]

The four-line FastAPI app of ``_app.py`` under uvicorn (one process), started once in each
configuration and kept running:

* ``plain``: no telemetry;
* ``instrumented``: ``opentelemetry-instrument``, no exporter (``OTEL_TRACES_EXPORTER=none``);
* ``luna-off``: ``OTEL_TRACES_EXPORTER=luna`` with ``OTEL_EXPORTER_LUNA_ENABLED=false``: the
  SDK's ``BatchSpanProcessor`` and its export thread, the exporter a no-op (what any exporter
  costs before its own work);
* ``luna``: ``OTEL_TRACES_EXPORTER=luna``, file sink;
* ``otlp``: the OTLP gRPC exporter to a receiver in this process that answers and keeps nothing.

Each round drives every app in turn (order rotating) with ``wrk`` (8 connections, random item
paths, ``--share404`` unknown) for ``--seconds`` and divides the CPU the app process used
meanwhile (user + system, all threads, from /proc) by the requests wrk counted. Reported: µs
of app CPU per request (median, min, max over rounds), what each configuration adds over
``instrumented`` (the exporter's own cost) and requests/s. Exit status 0 whatever the figures.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from _app import MODES, NullOtlpReceiver, drive, ensure_wrk, running_app
from _common import cpu_seconds, dump, environment, summary, table


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--seconds", type=float, default=10, help="load per run (default 10)")
    parser.add_argument("--share404", type=float, default=0.0, help="unknown paths (default 0)")
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    options = parser.parse_args(argv)
    wrk = ensure_wrk()
    receiver = NullOtlpReceiver()
    cpu_us: dict[str, list[float]] = {mode: [] for mode in options.modes}
    rates: dict[str, list[float]] = {mode: [] for mode in options.modes}
    with (
        tempfile.TemporaryDirectory(prefix="otel-luna-app-cpu-") as name,
        contextlib.ExitStack() as stack,
    ):
        apps = {
            mode: stack.enter_context(running_app(mode, Path(name) / mode, otlp_port=receiver.port))
            for mode in options.modes
        }
        for app in apps.values():  # warm up: imports, first requests, the exporters' threads
            drive(wrk, app.url, 2, share404=options.share404)
        modes = list(options.modes)
        for index in range(options.rounds):
            shift = index % len(modes)
            for mode in modes[shift:] + modes[:shift]:
                app = apps[mode]
                before = cpu_seconds(app.pid)
                load = drive(wrk, app.url, options.seconds, share404=options.share404)
                used = cpu_seconds(app.pid) - before
                cpu_us[mode].append(used / load.requests * 1e6)
                rates[mode].append(load.requests / load.seconds)
                if not options.json:
                    print(
                        f"round {index + 1} {mode}: {cpu_us[mode][-1]:.0f} µs/request, "
                        f"{rates[mode][-1]:.0f} requests/s",
                        file=sys.stderr,
                        flush=True,
                    )
    receiver.close()
    results: dict[str, Any] = {}
    base = cpu_us.get("instrumented")
    for mode in options.modes:
        row: dict[str, Any] = {
            "cpu_us_per_request": summary(cpu_us[mode], 1),
            "requests_per_s": round(statistics.median(rates[mode]), 1),
        }
        if base is not None and mode in ("luna-off", "luna", "otlp"):
            row["exporter_us_per_request"] = summary(
                [a - b for a, b in zip(cpu_us[mode], base, strict=True)], 1
            )
        results[mode] = row
    report = {
        "benchmark": "app_cpu",
        "what": "app process CPU per request (wrk, 8 connections) by telemetry configuration",
        "seconds": options.seconds,
        "rounds": options.rounds,
        "share404": options.share404,
        "modes": results,
        "environment": environment(),
    }
    if options.json:
        dump(report)
        return 0
    rows = [["configuration", "µs/request", "min", "max", "exporter µs/req", "requests/s"]]
    for mode, row in results.items():
        stats = row["cpu_us_per_request"]
        extra = row.get("exporter_us_per_request")
        rows.append(
            [
                mode,
                f"{stats['median']:.0f}",
                f"{stats['min']:.0f}",
                f"{stats['max']:.0f}",
                f"{extra['median']:.0f}" if extra else "",
                f"{row['requests_per_s']:.0f}",
            ]
        )
    table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
