"""The ``otel-luna`` command. Thin: it parses arguments and calls the modules that work.

``status`` and ``spool`` are the core's; ``serve``, ``report`` and ``demo`` are add-ons
(``otel_luna.serve``, ``.report``, ``.demo``), imported only inside the function that runs them,
so that a core install (``pip install otel-luna``) runs this module. An add-on whose extra is
not installed is one line naming the extra (:data:`EXTRAS`) and exit 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from otel_luna.redact import printable
from otel_luna.settings._declare import SettingsError
from otel_luna.settings._settings import Settings, env_name

#: Exit codes: 0 success, 1 the demo ran but found a problem or could not run (or status found
#: no spool directory), 2 bad usage or setting, 130 interrupted.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

#: The add-on commands' extras: the modules each needs that the core does not bring. One of
#: them missing (absent, or a ModuleNotFoundError naming it while the command runs) means the
#: extra is not installed; any other ImportError is a bug and propagates. ``report`` needs its
#: extra (matplotlib) only to draw ``--png``.
EXTRAS: dict[str, tuple[str, ...]] = {
    "serve": (
        "grpc",
        "aiohttp",
        "google.protobuf",
        "google.rpc",
        "opentelemetry.proto",
        *(("backports.zstd",) if sys.version_info < (3, 14) else ()),
    ),
    "report": ("matplotlib",),
    "demo": ("aiohttp", "opentelemetry.distro", "opentelemetry.instrumentation.aiohttp_server"),
}


class MissingExtraError(Exception):
    """An add-on command ran without its extra: ``str()`` is the one line that says so."""

    def __init__(self, command: str, extra: str) -> None:
        super().__init__(
            f"otel-luna {command} needs the {extra} extra: pip install 'otel-luna[{extra}]'"
        )
        self.command = command
        self.extra = extra


def _needs(module: str, dependencies: Sequence[str]) -> bool:
    """Whether ``module`` (a ModuleNotFoundError's name) is one of ``dependencies`` or in one."""
    return any(module == each or module.startswith(each + ".") for each in dependencies)


def _missing(dependencies: Sequence[str]) -> str | None:
    """The first of ``dependencies`` that cannot be imported (found without importing it)."""
    for module in dependencies:
        try:
            if importlib.util.find_spec(module) is None:
                return module
        except ModuleNotFoundError:  # its parent package is missing (google of google.rpc)
            return module
    return None


def require_extra(command: str, extra: str | None = None) -> None:
    """Raise :class:`MissingExtraError` if the modules of ``extra`` (default: the command's
    own) are not all installed. Nothing is imported: serve's supervisor must not load grpc
    before it starts its workers."""
    extra = extra or command
    if _missing(EXTRAS[extra]) is not None:
        raise MissingExtraError(command, extra)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from otel_luna import demo

    parser = argparse.ArgumentParser(
        prog="otel-luna",
        description="OpenTelemetry data written as the LUNA PLATFORM monitoring series.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = commands.add_parser(
        "demo",
        help="run the example luna-handlers service under opentelemetry-instrument and "
        "summarise the series it wrote",
        description=(
            "Start the example service that ships with otel-luna (otel_luna/examples/"
            "luna_handlers_app.py) under opentelemetry-instrument with the luna traces and "
            "metrics exporters, send it requests (some failing), stop it with SIGTERM and print "
            "the requests, errors, usages_statistic and licensing series read back. Needs the "
            "demo extra: pip install 'otel-luna[demo]'. The endpoint is --endpoint, else "
            f"OTEL_EXPORTER_LUNA_ENDPOINT, else file://$PWD/{demo.DEFAULT_FILE_NAME} "
            "(emptied first). Other OTEL_EXPORTER_LUNA_* variables are passed on."
        ),
    )
    run.add_argument(
        "--requests",
        type=_positive_int,
        default=demo.DEFAULT_REQUESTS,
        metavar="N",
        help=f"requests to send (default {demo.DEFAULT_REQUESTS})",
    )
    run.add_argument(
        "--endpoint",
        metavar="URL",
        help="http(s)://host:port (InfluxDB), file:///path.lp or console; "
        "overrides OTEL_EXPORTER_LUNA_ENDPOINT",
    )
    run.add_argument(
        "--concurrency",
        type=_positive_int,
        default=demo.DEFAULT_CONCURRENCY,
        metavar="N",
        help=f"requests in flight at once (default {demo.DEFAULT_CONCURRENCY})",
    )
    run.add_argument(
        "--seed", type=int, default=None, help="seed of the request mix (default: random)"
    )
    run.add_argument(
        "--app",
        type=Path,
        default=demo.EXAMPLE_APP,
        metavar="PATH",
        help="the service to run (default: the example that ships with otel-luna)",
    )
    status = commands.add_parser(
        "status",
        help="show what waits in a spool directory, and each process's counters",
        description="List the spool's process directories under SPOOL_DIR (default: "
        "OTEL_EXPORTER_LUNA_SPOOL_DIR, else $XDG_STATE_HOME/otel-luna/spool): running or "
        "gone, points and bytes waiting, damaged records, whether the destination refuses "
        "every write (blocked: since when and why), whether the spool's disk refuses writes "
        "and points are held in memory only (memory fallback), the dead-letter file and its "
        "size, and the counters the process last wrote (delivery, spool, and the points and "
        "attributes mapping and encoding rejected, by reason).",
    )
    status.add_argument("spool_dir", nargs="?", metavar="SPOOL_DIR")
    serve = commands.add_parser(
        "serve",
        help="receive OTLP over gRPC and HTTP and write the LUNA series",
        description="An OTLP/gRPC and OTLP/HTTP receiver writing the same series as the luna "
        "exporters, with the same OTEL_EXPORTER_LUNA_* settings and TOML file. Flags override "
        "them. The bearer token is read from OTEL_EXPORTER_LUNA_SERVE_TOKEN only (never a flag: "
        "command lines are visible to other users). Stops gracefully on SIGTERM or SIGINT.",
    )
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--grpc-port", type=int, help="OTLP/gRPC port (default 4317; 0: any)")
    serve.add_argument("--http-port", type=int, help="OTLP/HTTP port (default 4318; 0: any)")
    serve.add_argument(
        "--health-port",
        type=int,
        help="port of /healthz, /readyz and /metrics (Prometheus) on 127.0.0.1 "
        "(default: off; 0: any)",
    )
    serve.add_argument("--max-message-bytes", type=int, help="largest request accepted")
    serve.add_argument("--tls-cert", help="PEM certificate chain (with --tls-key: TLS)")
    serve.add_argument("--tls-key", help="PEM private key")
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="processes sharing the ports, each with its own spool (default 1; 0: one per CPU)",
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    _add_report_parser(commands)
    _add_spool_parser(commands)
    return parser


def _add_spool_parser(commands: Any) -> None:
    spool = commands.add_parser(
        "spool",
        help="list, move, replay or discard the spools of destinations (stranded points)",
        description="The spool of a destination is <spool root>/<destination>/, named after "
        "the settings that pick the destination (endpoint, database or bucket, retention "
        "policy, org): points written with a misspelled database wait in a spool no corrected "
        "configuration reads. These commands steer them. Only process directories whose "
        "process is gone are touched (each is locked first, as a process adopting it would); "
        "those of running processes are left and named. The spool root is --spool-dir, else "
        "OTEL_EXPORTER_LUNA_SPOOL_DIR (or its default).",
    )
    actions = spool.add_subparsers(dest="action", metavar="ACTION", required=True)

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--spool-dir", metavar="DIR", help="the spool root")

    def to(parser: argparse.ArgumentParser, what: str) -> None:
        parser.add_argument(
            "--to",
            action="append",
            default=[],
            metavar="SETTING=VALUE",
            help=f"{what}: the current OTEL_EXPORTER_LUNA_* settings with this one changed "
            "(repeatable), e.g. --to database=luna, --to endpoint=http://db:8086",
        )

    listing = actions.add_parser(
        "list",
        help="each destination's spool: process directories, running or gone, points waiting",
    )
    common(listing)
    listing.add_argument("--json", action="store_true", help="print JSON")
    move = actions.add_parser(
        "move",
        help="re-target a destination's spool to a corrected destination",
        description="Move the gone process directories of DESTINATION into the spool of the "
        "destination --to names; a process of that destination (running, or the next to "
        "start, or otel-luna spool replay) delivers them.",
    )
    move.add_argument("destination", metavar="DESTINATION", help="as otel-luna spool list names it")
    to(move, "the corrected destination")
    common(move)
    replay = actions.add_parser(
        "replay",
        help="deliver a destination's spool now",
        description="Deliver what waits in the gone process directories of DESTINATION now, "
        "to its destination (the current settings must pick it), or, with --to, move it to "
        "that destination first.",
    )
    replay.add_argument("destination", metavar="DESTINATION")
    to(replay, "move it to this destination first")
    replay.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="give up delivering after this long (default 30); what is left stays",
    )
    common(replay)
    discard = actions.add_parser(
        "discard",
        help="delete a destination's spool and the points in it",
        description="Delete the gone process directories of DESTINATION and the points "
        "waiting in them (counted). Without --yes, only says what would be deleted.",
    )
    discard.add_argument("destination", metavar="DESTINATION")
    discard.add_argument("--yes", action="store_true", help="really delete")
    common(discard)


def _add_report_parser(commands: Any) -> None:
    from otel_luna.report import DEFAULT_LIMITS, parse_duration

    def duration(text: str) -> int:
        try:
            return parse_duration(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    def png_path(text: str) -> Path:
        if not text.lower().endswith(".png"):
            raise argparse.ArgumentTypeError(
                f"the chart is PNG data: give a path ending in .png, got {text!r}"
            )
        return Path(text)

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
        type=duration,
        metavar="DURATION",
        help="only the last DURATION (90s, 15m, 2h, 7d, 1h30m; default: everything)",
    )
    parser.add_argument("--service", help="luna: only this service tag")
    parser.add_argument(
        "--png",
        type=png_path,
        metavar="PATH",
        help="also draw the charts in this PNG file (missing directories are created)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument(
        "--max-bytes",
        type=_positive_int,
        default=DEFAULT_LIMITS.max_bytes,
        metavar="N",
        help="read at most N bytes of the file or of InfluxDB's answer; beyond, one line and "
        f"exit 1 (default {DEFAULT_LIMITS.max_bytes})",
    )
    parser.add_argument(
        "--max-time",
        type=duration,
        default=None,
        metavar="DURATION",
        help="give InfluxDB's answer at most DURATION in all (default "
        f"{DEFAULT_LIMITS.max_seconds:.0f}s)",
    )


def _report(args: argparse.Namespace) -> int:
    from otel_luna.report import (
        DEFAULT_LIMITS,
        ChartError,
        Limits,
        ReportError,
        luna_report,
        run_report,
        watchdog_report,
    )

    seconds = DEFAULT_LIMITS.max_seconds if args.max_time is None else args.max_time / 1e9
    limits = Limits(max_bytes=args.max_bytes, max_seconds=seconds)
    if args.profile == "luna":
        make = luna_report(args.service)
    elif args.service is not None:
        print("otel-luna report: --service is for the luna report", file=sys.stderr)
        return EXIT_USAGE
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
        return EXIT_FAILED
    except ReportError as error:
        print(f"otel-luna report: {printable(str(error))}", file=sys.stderr)
        return EXIT_FAILED
    print(text, flush=True)
    return EXIT_OK


#: The settings ``--to`` may change: those that pick the destination
#: (:func:`~otel_luna.delivery.destination_slug`); any other would be ignored.
_DESTINATION_SETTINGS = ("sink", "endpoint", "database", "bucket", "retention_policy", "org")


def _to_settings(pairs: list[str]) -> Settings:
    """The current settings with each ``SETTING=VALUE`` of ``pairs`` changed."""
    changes: dict[str, str] = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key.strip():
            raise SettingsError("--to", f"expected SETTING=VALUE, got {pair!r}")
        changes[key.strip().lower().replace("-", "_")] = value
    known = {each.name for each in fields(Settings)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise SettingsError("--to", f"no setting named {', '.join(map(repr, unknown))}")
    other = sorted(set(changes) - set(_DESTINATION_SETTINGS))
    if other:
        raise SettingsError(
            "--to",
            f"{', '.join(map(repr, other))} does not pick the destination; give one of "
            + ", ".join(_DESTINATION_SETTINGS),
        )
    return Settings.load(None, **changes)


def _spool(args: argparse.Namespace) -> int:
    import json

    from otel_luna.delivery import _spoolctl as spoolctl
    from otel_luna.delivery._delivery import destination_slug

    prefix = f"otel-luna spool {args.action}"
    root = Path(args.spool_dir or Settings.load().spool_dir)
    if not root.is_dir():
        print(
            f"{prefix}: the spool root {printable(str(root))} is not a directory", file=sys.stderr
        )
        return EXIT_FAILED
    try:
        if args.action == "list":
            try:
                configured: str | None = destination_slug(Settings.load())
            except SettingsError:
                configured = None
            spools = spoolctl.list_spools(root, configured)
            if args.json:
                print(json.dumps({"spool_dir": str(root), "destinations": spools}, indent=2))
                return EXIT_OK
            print(f"spool {printable(str(root))}: {len(spools)} destinations")
            for entry in spools:
                mark = " (the configured destination)" if entry["configured"] else ""
                print(
                    f"  {printable(str(entry['destination']))}{mark}: {entry['pending_lines']} "
                    f"points / {entry['pending_bytes']} bytes waiting"
                )
                for process in entry["processes"]:  # type: ignore[attr-defined]
                    name = printable(str(process["process"]))
                    if process["refused"] is not None:
                        print(f"    {name}: refused: {printable(str(process['refused']))}")
                        continue
                    state = "running" if process["running"] else "gone"
                    held = ", ".join(
                        f"{printable(file)}: {printable(why)}"
                        for file, why in process["holds_refused"].items()
                    )
                    print(
                        f"    {name}: {state}, {process['pending_lines']} points "
                        f"/ {process['pending_bytes']} bytes"
                        + (f"; holds files the spool refuses ({held})" if held else "")
                    )
            return EXIT_OK
        if args.action == "move":
            if not args.to:
                print(f"{prefix}: give the corrected destination with --to", file=sys.stderr)
                return EXIT_USAGE
            moved = spoolctl.move(root, args.destination, _to_settings(args.to))
            print(
                f"moved {len(moved.directories)} process directories ({moved.lines} points / "
                f"{moved.bytes} bytes) from {args.destination} to {moved.target}"
            )
            return _busy(prefix, moved.busy)
        if args.action == "replay":
            name = args.destination
            settings = _to_settings(args.to)
            if args.to:
                moved = spoolctl.move(root, name, settings)
                print(
                    f"moved {len(moved.directories)} process directories ({moved.lines} points) "
                    f"from {name} to {moved.target}"
                )
                name = moved.target
                if not (root / name).is_dir():
                    print(f"replayed {name}: nothing waited")
                    _busy(prefix, moved.busy)
                    return EXIT_OK
            replayed = spoolctl.replay(root, name, settings, args.timeout)
            counts = replayed.counts
            print(
                f"replayed {name}: "
                + (
                    ", ".join(f"{key}={value}" for key, value in sorted(counts.items()))
                    or "nothing waited"
                )
            )
            left = counts.get("left_in_spool", 0)
            if replayed.blocked:
                print(f"{prefix}: the destination refused: {replayed.blocked}", file=sys.stderr)
            _busy(prefix, replayed.busy)  # theirs to deliver: not a failure of the replay
            return EXIT_FAILED if left or replayed.blocked else EXIT_OK
        if args.action == "discard":
            if not args.yes:
                waiting = [
                    e for e in spoolctl.list_spools(root) if e["destination"] == args.destination
                ]
                spoolctl.destination_directory(root, args.destination)
                lines = waiting[0]["pending_lines"] if waiting else 0
                print(
                    f"{prefix}: would delete the gone process directories of "
                    f"{args.destination} ({lines} points waiting); add --yes to delete them",
                    file=sys.stderr,
                )
                return EXIT_USAGE
            discarded = spoolctl.discard(root, args.destination)
            kept = {name for name, _ in discarded.left}
            removed = sum(1 for name, _, _ in discarded.directories if name not in kept)
            print(
                f"discarded {removed} process directories of {args.destination}"
                + (f" ({len(kept)} left, below)" if kept else "")
                + f": {discarded.lines} points / {discarded.bytes} bytes deleted"
            )
            for name, why in discarded.left:
                print(
                    f"{prefix}: left {args.destination}/{printable(name)}: {printable(why)}; "
                    "remove it by hand",
                    file=sys.stderr,
                )
            busy = _busy(prefix, discarded.busy)
            return EXIT_FAILED if discarded.left else busy
    except spoolctl.SpoolCommandError as error:
        print(f"{prefix}: {error}", file=sys.stderr)
        return EXIT_FAILED
    raise AssertionError(args.action)  # pragma: no cover - argparse checks it


def _busy(prefix: str, busy: list[str]) -> int:
    """Say which process directories were left to running processes; the exit code."""
    if not busy:
        return EXIT_OK
    print(
        f"{prefix}: left {len(busy)} process directories of running processes alone: "
        + ", ".join(map(printable, busy)),
        file=sys.stderr,
    )
    return EXIT_FAILED


def _status(args: argparse.Namespace) -> int:
    import json

    from otel_luna.delivery._spool_status import root_problem
    from otel_luna.serve._workers import describe_supervisors, supervisor_line
    from otel_luna.settings._settings import Settings

    root = args.spool_dir or Settings.load().spool_dir
    if not os.path.isdir(root):
        where = "" if args.spool_dir else f" ({env_name('spool_dir')} or its default)"
        problem = "is not a directory" if os.path.exists(root) else "does not exist"
        print(
            f"otel-luna status: spool directory {printable(root)}{where} {problem}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    entries = status_entries(root)
    supervisors = describe_supervisors(root)
    if args.json:
        document = {"spool_dir": root, "processes": entries}
        if supervisors:
            document["serve_supervisors"] = supervisors
        print(json.dumps(_finite(document), indent=2, allow_nan=False))
        return EXIT_OK
    for supervisor in supervisors:
        print(supervisor_line(supervisor))
    shown_root = printable(root)
    processes = sum(1 for entry in entries if entry["problem"] is None)
    refused = len(entries) - processes
    print(
        f"spool {shown_root}: {processes} process directories"
        + (f", {refused} other entries refused" if refused else "")
    )
    unsafe = root_problem(root)
    if unsafe:
        print(f"  ({printable(unsafe)}: otel-luna will not write there)")
    if not processes:
        hint = _not_a_spool_root(root)
        if hint:
            print(f"  ({shown_root} {hint}; give the spool root: {env_name('spool_dir')})")
    for entry in entries:
        first, *details = _entry_lines(entry)
        print(f"  {first}")
        for detail in details:
            print(f"    {detail}")
    return EXIT_OK


def _finite(value: object) -> object:
    """``value`` (read from stats files) with every infinite or NaN number as None: JSON has
    no such numbers (``Infinity`` is not JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(each) for key, each in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(each) for each in value]
    return value


def _entry_lines(entry: dict[str, Any]) -> list[str]:
    """One process directory as ``otel-luna status`` shows it: only what is true now (a gone
    process is neither blocked nor holding points in memory any more), every text from disk
    made printable."""
    from otel_luna.delivery._spool_status import left_behind

    name = printable(f"{entry['destination']}/{entry['process'] or ''}")
    if entry["problem"] is not None:
        return [f"{name}: refused: {printable(str(entry['problem']))}"]
    waiting = f"{entry['pending_lines']} points / {entry['pending_bytes']} bytes waiting"
    damaged = entry["corrupt_records"]
    if damaged:
        waiting += f", {damaged} damaged records"
    refused = entry.get("refused") or {}
    kept = left_behind(refused)
    running = bool(entry["running"])
    if running:
        state = f"running, {waiting}"
    elif entry["pending_lines"]:
        state = f"gone, {waiting}: replayed by the next process of this destination"
    elif kept:
        state = (
            f"gone, nothing to replay; left: holds files the spool refuses ({', '.join(kept)}): "
            "remove them by hand"
        )
        state = printable(state)
    else:
        state = "gone, nothing waiting (removed by the next process of this destination)"
    if damaged and not running and not entry["pending_lines"]:
        state += f"; {damaged} damaged records"
    lines = [f"{name}: {state}"]
    if refused:
        listed = "; ".join(
            f"{printable(key)}: {printable(str(why))}" for key, why in refused.items()
        )
        lines.append(f"refused, never read or followed: {listed}")
    blocked = entry.get("blocked")
    if isinstance(blocked, dict):
        reason = printable(str(blocked.get("reason")))
        if running:
            lines.append(
                f"destination BLOCKED since {_since(blocked)}, points held in the spool: {reason}"
            )
        else:
            lines.append(f"the destination refused writes when the process stopped: {reason}")
    trouble = entry.get("trouble")
    if isinstance(trouble, dict) and not isinstance(blocked, dict) and running:
        kind, reason = printable(str(trouble.get("kind"))), printable(str(trouble.get("reason")))
        lines.append(
            f"writes FAILING since {_since(trouble)} ({kind}), points held in the spool and "
            f"retried: {reason}"
        )
    fallback = entry.get("memory_fallback")
    if isinstance(fallback, dict):
        reason = printable(str(fallback.get("reason")))
        held = printable(str(fallback.get("pending_lines")))
        if running:
            lines.append(
                f"spool disk REFUSES writes since {_since(fallback)}: {held} points held in "
                f"memory only, lost if the process ends before they are delivered: {reason}"
            )
        else:
            lines.append(
                f"the spool disk refused writes when the process last wrote its stats ({held} "
                f"points in memory only then, lost unless delivered before it stopped): {reason}"
            )
    letters = entry.get("dead_letter")
    if isinstance(letters, dict):
        path, size = printable(str(letters.get("path"))), printable(str(letters.get("bytes")))
        lines.append(f"dead letters: {path} ({size} bytes)")
    counts = entry["counts"]
    if isinstance(counts, dict) and counts:
        lines.append(
            ", ".join(
                f"{printable(key)}={printable(str(value))}" for key, value in sorted(counts.items())
            )
        )
        lines.append("points by outcome: " + _by_outcome(counts))
    return lines


def _not_a_spool_root(root: str) -> str | None:
    """Why ``root``, holding no process directory, may be the wrong directory, if it looks like
    one level of a spool root: a destination's directory or a process's."""
    from otel_luna.delivery._spool_status import is_process_directory, process_directories

    here = Path(root)
    if is_process_directory(here):
        return "looks like one process's directory, two levels below a spool root"
    if process_directories(here.parent) and here.parent != here:
        return "looks like one destination's directory, one level below a spool root"
    return None


def _by_outcome(counts: dict[str, Any]) -> str:
    """The counters summed by :class:`~otel_luna.outcomes.Outcome` (events left out)."""
    from otel_luna.outcomes import Outcome, Reason

    totals: dict[Outcome, int] = {}
    for key, value in counts.items():
        try:
            outcome = Reason.of(key).outcome
        except ValueError:  # written by another version: shown above only
            continue
        if outcome is not Outcome.EVENT and isinstance(value, int):
            totals[outcome] = totals.get(outcome, 0) + value
    shown = [f"{outcome.value}={totals[outcome]}" for outcome in Outcome if outcome in totals]
    return ", ".join(shown) or "none"


def _since(state: dict[str, Any]) -> str:
    """``YYYY-mm-dd HH:MM:SS (N s)`` of a state's ``since`` (epoch seconds)."""
    try:  # a stats file is data from disk: anything may stand there
        since = float(state.get("since") or 0)
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
    except (TypeError, ValueError, OverflowError, OSError):
        return "an unknown time"
    elapsed = time.time() - since
    return f"{when} ({elapsed:.0f} s)" if elapsed >= 1 else f"{when} (just now)"


def status_entries(root: str) -> list[dict[str, object]]:
    """The spool's process directories (``describe``), with the blocked
    state, the memory fallback and the dead-letter file each process last reported lifted out
    of its counters, and every text redacted."""
    from otel_luna.delivery._spool_status import describe
    from otel_luna.redact import redact

    entries = []
    for entry in describe(root):
        stats = entry["counts"]
        counts = dict(stats) if isinstance(stats, dict) else {}
        for state in ("blocked", "trouble", "memory_fallback"):
            found = counts.pop(state, None)
            if isinstance(found, dict):
                entry[state] = {**found, "reason": redact(str(found.get("reason", "")))}
        counts.pop("pending", None)  # describe() counts what waits itself
        letters = counts.pop("dead_letter", None)
        if isinstance(letters, dict):
            entry["dead_letter"] = letters
        entry["counts"] = counts
        entries.append(entry)
    return entries


def _serve(args: argparse.Namespace) -> int:
    from otel_luna.serve._settings import ServeSettings
    from otel_luna.serve._startup import raise_open_file_limit
    from otel_luna.serve._workers import supervise, worker_count

    raise_open_file_limit()  # the workers inherit it

    flags = {
        "serve_host": args.host,
        "serve_grpc_port": args.grpc_port,
        "serve_http_port": args.http_port,
        "serve_health_port": args.health_port,
        "serve_max_message_bytes": args.max_message_bytes,
        "serve_tls_cert": args.tls_cert,
        "serve_tls_key": args.tls_key,
    }
    given = {name: value for name, value in flags.items() if value is not None}
    settings = ServeSettings.load(**given, serve_workers=args.workers)
    workers = worker_count(settings.serve_workers)
    if workers > 1:  # before grpc is imported: the supervisor starts processes
        return supervise(settings, given, workers)
    from otel_luna.serve._health import start_line
    from otel_luna.serve._main import Server
    from otel_luna.serve._startup import host_port

    server = Server(settings)
    server.handle_signals()
    host = settings.serve_host
    if server.health is not None:
        print(start_line(server.health), flush=True)
    print(f"otel-luna serve: OTLP/gRPC on {host_port(host, server.grpc_port)}", flush=True)
    print(f"otel-luna serve: OTLP/HTTP on {host_port(host, server.http_port)}", flush=True)
    print(f"otel-luna serve: writing to {settings.endpoint} ({settings.sink_name})", flush=True)
    server.wait_for_signal()
    print("otel-luna serve: stopped", flush=True)
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from otel_luna import demo

    result = demo.run_demo(
        args.requests,
        endpoint=args.endpoint,
        concurrency=args.concurrency,
        seed=args.seed,
        app=args.app,
        out=sys.stdout,
        progress=sys.stderr,
    )
    return EXIT_FAILED if result.problems else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``otel-luna`` with ``argv`` (default: the command line); the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from otel_luna.delivery._spool import SpoolRefused
    from otel_luna.demo import DemoError

    try:
        if args.command in EXTRAS:
            return _run_addon(args)
        if args.command == "status":
            return _status(args)
        if args.command == "spool":
            return _spool(args)
    except MissingExtraError as error:
        print(error, file=sys.stderr)
        return EXIT_USAGE
    except SettingsError as error:
        source = ""
        if getattr(args, "endpoint", None) and error.setting == env_name("endpoint"):
            source = " (given with --endpoint)"
        print(f"otel-luna {args.command}: {error}{source}", file=sys.stderr)
        return EXIT_USAGE
    except SpoolRefused as error:  # one line naming the path and the setting
        print(f"otel-luna {args.command}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except DemoError as error:
        print(f"otel-luna {args.command}: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"otel-luna {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (``otel-luna report luna | head``): no traceback, and none
        # either when Python flushes standard output at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover - argparse checks it


def _run_addon(args: argparse.Namespace) -> int:
    """Run the add-on command ``args.command`` if its extra is installed."""
    command = args.command
    if command == "report":
        if args.png is not None:
            require_extra("report --png", "report")
    else:
        require_extra(command)
    run = {"serve": _serve, "report": _report, "demo": _demo}[command]
    try:
        return run(args)
    except ModuleNotFoundError as error:  # installed in part: say which extra, not a traceback
        if error.name is None or not _needs(error.name, EXTRAS[command]):
            raise
        raise MissingExtraError(command, command) from error
