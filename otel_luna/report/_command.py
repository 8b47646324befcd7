"""``otel-luna report``: its arguments and its run, for the ``otel-luna`` command (``_cli``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from otel_luna.redact import printable
from otel_luna.report._durations import parse_duration
from otel_luna.report._errors import ChartError, ReportError
from otel_luna.report._luna import luna_report
from otel_luna.report._query import DEFAULT_LIMITS, Limits
from otel_luna.report._run import run_report
from otel_luna.report._watchdog import watchdog_report

#: The modules the ``report`` extra brings: matplotlib, for ``--png`` only.
EXTRA_MODULES: tuple[str, ...] = ("matplotlib",)


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _duration(text: str) -> int:
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _png_path(text: str) -> Path:
    if not text.lower().endswith(".png"):
        raise argparse.ArgumentTypeError(
            f"the chart is PNG data: give a path ending in .png, got {text!r}"
        )
    return Path(text)


def add_command(commands: Any) -> None:
    """Add ``report`` to the ``otel-luna`` subcommands ``commands``."""
    parser = commands.add_parser(
        "report",
        help="summarise the LUNA series or the watchdog events from InfluxDB or a file sink",
        description="Read the series back from InfluxDB (1.x: InfluxQL over /query; 2.x: Flux "
        "over /api/v2/query; --endpoint, else OTEL_EXPORTER_LUNA_ENDPOINT, and the other "
        "OTEL_EXPORTER_LUNA_* settings) or from a file sink's output (--file) and print what a "
        "dashboard shows. 'luna': per service and route, request rate, nearest-rank p50/p95/p99 "
        "of execution_time, error rate and top error_codes, the slowest stage (*_time); "
        "usages_statistic per estimator over time; licence status and liveness_balance. "
        "'watchdog': for all consumers and per consumer_name, time in queue, waiting for "
        "PhotoDNA, reply to the consumer and their sum (p50/p95/max), positives vs negatives, "
        "errors, items processed and submitted, and the queue sizes.",
    )
    parser.add_argument(
        "profile", choices=["luna", "watchdog"], help="the schema profile to report on"
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--endpoint",
        metavar="URL",
        help="InfluxDB URL (or file:///path); overrides OTEL_EXPORTER_LUNA_ENDPOINT",
    )
    source.add_argument(
        "--file",
        type=Path,
        metavar="PATH",
        help="a file sink's output (line protocol; watchdog also .json/.jsonl pings)",
    )
    parser.add_argument(
        "--database", metavar="DB", help="1.x: overrides OTEL_EXPORTER_LUNA_DATABASE"
    )
    parser.add_argument("--org", help="2.x: overrides OTEL_EXPORTER_LUNA_ORG")
    parser.add_argument("--bucket", help="2.x: overrides OTEL_EXPORTER_LUNA_BUCKET")
    parser.add_argument(
        "--since",
        type=_duration,
        metavar="DURATION",
        help="only the last DURATION (90s, 15m, 2h, 7d, 1h30m; default: everything)",
    )
    parser.add_argument("--service", help="luna: only this service tag")
    parser.add_argument(
        "--png",
        type=_png_path,
        metavar="PATH",
        help="also draw the charts in this PNG file (missing directories are created; needs "
        "the report extra: pip install 'otel-luna[report]')",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument(
        "--max-bytes",
        type=positive_int,
        default=DEFAULT_LIMITS.max_bytes,
        metavar="N",
        help="read at most N bytes of the file or of InfluxDB's answer; beyond, one line and "
        f"exit 1 (default {DEFAULT_LIMITS.max_bytes})",
    )
    parser.add_argument(
        "--max-time",
        type=_duration,
        default=None,
        metavar="DURATION",
        help="give InfluxDB's answer at most DURATION in all (default "
        f"{DEFAULT_LIMITS.max_seconds:.0f}s)",
    )


def needs(args: argparse.Namespace) -> tuple[str, ...]:
    """The modules this run needs beyond the core: matplotlib for ``--png`` only."""
    return EXTRA_MODULES if args.png is not None else ()


def run(args: argparse.Namespace) -> int:
    """Print the report; the exit code (1: it could not be made, 2: bad usage)."""
    seconds = DEFAULT_LIMITS.max_seconds if args.max_time is None else args.max_time / 1e9
    limits = Limits(max_bytes=args.max_bytes, max_seconds=seconds)
    if args.profile == "luna":
        make = luna_report(args.service)
    elif args.service is not None:
        print("otel-luna report: --service is for the luna report", file=sys.stderr)
        return 2
    else:
        make = watchdog_report
    try:
        text = run_report(
            make,
            endpoint=args.endpoint,
            file=args.file,
            database=args.database,
            org=args.org,
            bucket=args.bucket,
            since_ns=args.since,
            png=args.png,
            as_json=args.json,
            limits=limits,
        )
    except ChartError as error:  # the report was made: print it, then say why there is no chart
        print(error.text, flush=True)
        print(f"otel-luna report: {printable(str(error))}", file=sys.stderr)
        return 1
    except ReportError as error:
        print(f"otel-luna report: {printable(str(error))}", file=sys.stderr)
        return 1
    print(text, flush=True)
    return 0
