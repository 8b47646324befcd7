"""``otel-luna spool``: see and steer the spools under a spool root — list them, move a stranded
one to a corrected destination, replay it now, or discard it.

A spool is bound to its destination: its directory, ``<spool_dir>/<destination>/``, is named
by :func:`~otel_luna.delivery.destination_slug` of the settings that picked the destination
(sink, endpoint, database or bucket, retention policy, org). Points written with a misspelled
database wait there for ever: a corrected configuration has another directory, and never adopts
them. These operations work on the process directories under a destination directory, and only
on those whose process is gone: each is locked first, as a living process locks one it adopts
(:func:`~otel_luna.delivery._disk_spool.claim_gone`); a directory whose process — or a process that
adopted it — is alive is left untouched and reported. So they are safe while processes run.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from otel_luna.delivery._delivery import destination_slug, open_delivery
from otel_luna.delivery._disk_spool import GoneDirectory, claim_gone
from otel_luna.delivery._spool_status import describe, left_behind
from otel_luna.outcomes import Reason
from otel_luna.redact import printable
from otel_luna.settings._settings import Settings

__all__ = [
    "Moved",
    "Replayed",
    "SpoolCommandError",
    "Steered",
    "destination_directory",
    "discard",
    "list_spools",
    "move",
    "replay",
]

#: What a destination directory's name may be (as :func:`destination_slug` makes them).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class SpoolCommandError(RuntimeError):
    """The operation cannot be done; the message says why, on one line."""


@dataclass
class Steered:
    """What an operation did to a destination's process directories: those it handled (name,
    points, bytes), those left alone because their process is alive, and (``discard``) what
    it left in the destination's directory and why: names the spool refuses, which the operator
    must remove by hand."""

    directories: list[tuple[str, int, int]] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)
    left: list[tuple[str, str]] = field(default_factory=list)

    @property
    def lines(self) -> int:
        return sum(lines for _, lines, _ in self.directories)

    @property
    def bytes(self) -> int:
        return sum(size for _, _, size in self.directories)


@dataclass
class Moved(Steered):
    """:func:`move`'s result; ``target`` is the destination directory's name."""

    target: str = ""


@dataclass
class Replayed:
    """:func:`replay`'s result: the counters of the delivery that replayed (``written``,
    ``left_in_spool``, ``dead_lettered`` …), what the destination refused, if it blocked, and
    the process directories left to running processes."""

    counts: dict[str, int]
    blocked: str | None
    busy: list[str]
    target: str


def destination_directory(root: Path, name: str) -> Path:
    """The destination directory ``name`` under ``root``: a plain name (no path), a real
    directory (not a link); else :class:`SpoolCommandError`."""
    if not _NAME.fullmatch(name):
        raise SpoolCommandError(
            f"{name!r} is not a destination directory's name (see otel-luna spool list)"
        )
    directory = root / name
    if directory.is_symlink() or not directory.is_dir():
        raise SpoolCommandError(f"no destination directory {name} in the spool root {root}")
    return directory


def list_spools(root: Path, configured: str | None = None) -> list[dict[str, object]]:
    """Each destination directory of ``root`` holding process directories: its name, whether
    it is ``configured`` (the directory of the current settings), its process directories
    (running or gone, points and bytes waiting; ``refused`` and why for what is no usable
    process directory: a link, a file, another user's) and their totals. What is no
    destination directory (a file, a link beside them) is not listed."""
    by_destination: dict[str, list[dict[str, object]]] = {}
    for entry in describe(root):
        if entry["process"] is None:
            continue  # no destination's directory: a link, a file, unreadable
        by_destination.setdefault(str(entry["destination"]), []).append(
            {
                "process": entry["process"],
                "running": entry["running"],
                "pending_lines": entry["pending_lines"],
                "pending_bytes": entry["pending_bytes"],
                "corrupt_records": entry["corrupt_records"],
                "refused": entry["problem"],
                # files it holds the spool refuses: removing it leaves them (by hand)
                "holds_refused": left_behind(entry["refused"]),  # type: ignore[arg-type]
            }
        )
    return [
        {
            "destination": name,
            "configured": name == configured,
            "pending_lines": sum(_int(p["pending_lines"]) for p in processes),
            "pending_bytes": sum(_int(p["pending_bytes"]) for p in processes),
            "processes": processes,
        }
        for name, processes in sorted(by_destination.items())
    ]


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


def _entries(directory: Path) -> list[dict[str, object]]:
    """:func:`describe`'s entries of the destination directory ``directory``."""
    return [e for e in describe(directory.parent) if e["destination"] == directory.name]


def _gone(directory: Path) -> Iterator[tuple[Path, GoneDirectory | None]]:
    """The process directories of a destination directory (as :func:`describe` finds them:
    never a link, nor one it refuses), each claimed if its process is gone (None while it is
    alive); each claim is released after its turn."""
    for entry in _entries(directory):
        if entry["problem"] is not None:
            continue  # a link, a file, another user's: never followed
        process = directory / str(entry["process"])
        try:
            claimed = claim_gone(process)
        except FileNotFoundError:
            continue  # adopted and removed by a process meanwhile
        except OSError as error:
            raise SpoolCommandError(
                f"cannot read {printable(str(process))}: {error.strerror or error}"
            ) from None
        if claimed is None:
            yield process, None
            continue
        with claimed:
            yield process, claimed


def move(root: Path, name: str, to: Settings) -> Moved:
    """Move the gone process directories of destination ``name`` into the directory of the
    destination ``to`` picks (under ``root``), where its processes adopt and deliver them.
    Running ones are left (``busy``)."""
    source = destination_directory(root, name)
    target = destination_slug(to)
    if target == name:
        raise SpoolCommandError(f"{name} is already the spool of that destination")
    moved = Moved(target=target)
    for process, claimed in _gone(source):
        if claimed is None:
            moved.busy.append(process.name)
            continue
        lines, size = claimed.pending_lines, claimed.pending_bytes
        try:
            claimed.move_to(root / target)
        except OSError as error:
            raise SpoolCommandError(
                f"cannot move {process} to {root / target}: {error.strerror or error}"
            ) from None
        moved.directories.append((process.name, lines, size))
    return moved


def discard(root: Path, name: str) -> Steered:
    """Remove the gone process directories of destination ``name`` and what waits in them;
    running ones are left (``busy``)."""
    source = destination_directory(root, name)
    discarded = Steered()
    for process, claimed in _gone(source):
        if claimed is None:
            discarded.busy.append(process.name)
            continue
        lines, size = claimed.pending_lines, claimed.pending_bytes
        try:
            claimed.discard()
        except OSError as error:
            raise SpoolCommandError(f"cannot remove {process}: {error.strerror or error}") from None
        discarded.directories.append((process.name, lines, size))
    busy = set(discarded.busy)
    for entry in _entries(source):
        name = str(entry["process"])
        if entry["problem"] is not None:
            discarded.left.append((name, str(entry["problem"])))
        elif name not in busy and not entry["running"]:
            kept = left_behind(entry["refused"])  # type: ignore[arg-type]
            why = "; ".join(f"{file}: {reason}" for file, reason in kept.items())
            discarded.left.append(
                (name, f"holds files the spool refuses ({why})")
                if why
                else (name, "still there (its process ended while discarding: run it again)")
            )
    return discarded


def replay(
    root: Path,
    name: str,
    settings: Settings,
    timeout: float,
) -> Replayed:
    """Deliver what waits in destination ``name`` now, to the destination ``settings`` pick —
    which must be its own (move it first to change it) — as a process of that destination
    starting would: the gone process directories are adopted and replayed, within
    ``timeout`` seconds; what is not delivered by then stays where it was."""
    destination_directory(root, name)
    settings = settings.replace(spool_dir=str(root), spool="disk")
    own = destination_slug(settings)
    if own != name:
        raise SpoolCommandError(
            f"{name} is not the spool of the destination given (its directory is {own}): give "
            "that destination's settings, or move it there with --to"
        )
    from otel_luna.sinks._base import load_sink

    sink = load_sink(settings)
    busy = [
        process.name for process, claimed in _gone(root / name) if claimed is None
    ]  # before the delivery's own directory exists
    writer = open_delivery(settings, sink, memory_fallback=False)
    writer.force_flush(timeout)
    blocked = writer.blocked
    writer.shutdown(0.0)
    counts = {reason.value: count for reason, count in writer.all_counts().items() if count}
    counts.pop(Reason.SPOOLED.value, None)
    return Replayed(
        counts=counts,
        blocked=None if blocked is None else str(blocked.get("reason")),
        busy=busy,
        target=name,
    )
