"""``otel-luna demo``: its arguments and its run, for the ``otel-luna`` command (``_cli``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from otel_luna.demo._app import DEFAULT_FILE_NAME, EXAMPLE_APP
from otel_luna.demo._demo import run_demo
from otel_luna.demo._errors import DemoError
from otel_luna.demo._load import DEFAULT_CONCURRENCY, DEFAULT_REQUESTS
from otel_luna.redact import printable
from otel_luna.report import positive_int

#: The modules the ``demo`` extra brings (its example service and load; the chart's matplotlib
#: is the report extra's, which the demo extra includes).
EXTRA_MODULES: tuple[str, ...] = (
    "aiohttp",
    "opentelemetry.distro",
    "opentelemetry.instrumentation.aiohttp_server",
)


def add_command(commands: Any) -> None:
    """Add ``demo`` to the ``otel-luna`` subcommands ``commands``."""
    run = commands.add_parser(
        "demo",
        help="run the example luna-handlers service under opentelemetry-instrument and "
        "summarise the series it wrote",
        description=(
            "Start the example service that ships with otel-luna (otel_luna/examples/"
            "luna_handlers_app.py) under opentelemetry-instrument with the luna traces "
            "exporter, send it requests (some failing), stop it with SIGTERM and print the "
            "requests, errors, usages_statistic (one point per request with estimations) and "
            "licensing series read back, checked against the requests sent. Needs the "
            "demo extra: pip install 'otel-luna[demo]'. The endpoint is --endpoint, else "
            f"OTEL_EXPORTER_LUNA_ENDPOINT, else file://$PWD/{DEFAULT_FILE_NAME} "
            "(emptied first). Other OTEL_EXPORTER_LUNA_* variables are passed on."
        ),
    )
    run.add_argument(
        "--requests",
        type=positive_int,
        default=DEFAULT_REQUESTS,
        metavar="N",
        help=f"requests to send (default {DEFAULT_REQUESTS})",
    )
    run.add_argument(
        "--endpoint",
        metavar="URL",
        help="http(s)://host:port (InfluxDB), file:///path.lp or console; "
        "overrides OTEL_EXPORTER_LUNA_ENDPOINT",
    )
    run.add_argument(
        "--concurrency",
        type=positive_int,
        default=DEFAULT_CONCURRENCY,
        metavar="N",
        help=f"requests in flight at once (default {DEFAULT_CONCURRENCY})",
    )
    run.add_argument(
        "--seed", type=int, default=None, help="seed of the request mix (default: random)"
    )
    run.add_argument(
        "--app",
        type=Path,
        default=EXAMPLE_APP,
        metavar="PATH",
        help="the service to run (default: the example that ships with otel-luna)",
    )


def needs(args: argparse.Namespace) -> tuple[str, ...]:
    """The modules this run needs beyond the core."""
    return EXTRA_MODULES


def run(args: argparse.Namespace) -> int:
    """Run the demo; the exit code (1: it ran and found a problem, or could not run)."""
    try:
        result = run_demo(
            args.requests,
            endpoint=args.endpoint,
            concurrency=args.concurrency,
            seed=args.seed,
            app=args.app,
            out=sys.stdout,
            progress=sys.stderr,
        )
    except DemoError as error:
        print(f"otel-luna demo: {printable(str(error))}", file=sys.stderr)
        return 1
    return 1 if result.problems else 0
