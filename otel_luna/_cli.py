"""The ``otel-luna`` command. Thin: it parses arguments and calls the modules that work.

``status`` and ``spool`` are the core's; ``serve``, ``report`` and ``demo`` are add-ons
(:data:`ADDONS`): each package adds its arguments and runs its command, importing nothing of its
extra until then, so that a core install (``pip install otel-luna``) runs this module. An add-on
whose extra is not installed is one line naming the extra, and exit 2.
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

#: The add-on commands: the package of each, which has ``add_command(commands)``,
#: ``command_needs(args)`` (the modules of its extra this run needs: one missing — absent, or a
#: ModuleNotFoundError naming it while the command runs — means the extra is not installed; any
#: other ImportError is a bug and propagates) and ``run_command(args) -> int``. Their packages
#: import nothing of their extras.
ADDONS: dict[str, str] = {
    "demo": "otel_luna.demo",
    "serve": "otel_luna.serve",
    "report": "otel_luna.report",
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


def require_extra(command: str, modules: Sequence[str]) -> None:
    """Raise :class:`MissingExtraError` if any of ``modules`` (what the command's extra brings)
    is not installed. Nothing is imported: serve's supervisor must not load grpc before it
    starts its workers."""
    if _missing(modules) is not None:
        raise MissingExtraError(command, command.split()[0])


def _addon(command: str) -> Any:
    return importlib.import_module(ADDONS[command])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otel-luna",
        description="OpenTelemetry data written as the LUNA PLATFORM monitoring series.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _addon("demo").add_command(commands)
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
    status.add_argument("--json", action="store_true", help="print JSON")
    _addon("serve").add_command(commands)
    _addon("report").add_command(commands)
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
    from otel_luna.serve import describe_supervisors, supervisor_line
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
    if entry.get("compiled") is False:
        lines.append(
            "pure-Python code: otel_luna._native was not built for this install, or "
            "OTEL_LUNA_PURE_PYTHON is set (more CPU per span; docs/deployment.md)"
        )
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
        compiled = counts.pop("compiled", None)
        if isinstance(compiled, bool):
            entry["compiled"] = compiled
        letters = counts.pop("dead_letter", None)
        if isinstance(letters, dict):
            entry["dead_letter"] = letters
        entry["counts"] = counts
        entries.append(entry)
    return entries


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``otel-luna`` with ``argv`` (default: the command line); the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from otel_luna.delivery import SpoolRefused

    try:
        if args.command in ADDONS:
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
    addon = _addon(command)
    needed = tuple(addon.command_needs(args))
    require_extra(command if command != "report" else "report --png", needed)
    try:
        return int(addon.run_command(args))
    except ModuleNotFoundError as error:  # installed in part: say which extra, not a traceback
        if error.name is None or not _needs(error.name, needed):
            raise
        raise MissingExtraError(command, command) from error
