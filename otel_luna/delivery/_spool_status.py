"""What waits under a spool root, read without changing it: for ``otel-luna status``,
``otel-luna spool`` and serve's health endpoint. Reads only, never through a link, never a
FIFO, at most :data:`STATS_MAX_BYTES` of a ``stats.json``."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from otel_luna._files import DIRECTORY_FLAGS, error_text, open_regular, read_small, what_is
from otel_luna.delivery._process_directory import check_owned
from otel_luna.delivery._segments import LOCK_FILE, OWN_FILES, PROCESS_NAME, STATS_FILE, SegmentLog
from otel_luna.delivery._spool import SpoolRefused
from otel_luna.outcomes import Counts

#: Most bytes of ``stats.json`` read (``otel-luna status``); a larger file is refused.
STATS_MAX_BYTES = 1024 * 1024


def read_stats(dir_fd: int) -> dict[str, object]:
    """The counters a process directory (``dir_fd``) last wrote to ``stats.json``, read never
    through a link and at most :data:`STATS_MAX_BYTES`; empty if there are none, or if they
    are being replaced or damaged. ``OSError`` if the file is there and cannot be read."""
    try:
        stats = json.loads(read_small(STATS_FILE, dir_fd, STATS_MAX_BYTES))
    except FileNotFoundError:
        return {}
    except (ValueError, RecursionError):
        return {}
    return stats if isinstance(stats, dict) else {}


def process_directories(root: Path | str) -> list[Path]:
    """The process directories under a spool root (``<root>/<destination>/<process>``, each
    holding its lock file); directories that cannot be read, links, and anything not named as
    a process directory are none."""
    found: list[Path] = []
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return found
    try:
        for destination in _subdirectories(root_fd):
            try:
                dest_fd = os.open(destination, DIRECTORY_FLAGS, dir_fd=root_fd)
            except OSError:
                continue
            try:
                for name in _subdirectories(dest_fd):
                    if PROCESS_NAME.fullmatch(name) and _has_lock(dest_fd, name):
                        found.append(Path(root) / destination / name)
            except OSError:
                continue
            finally:
                os.close(dest_fd)
    finally:
        os.close(root_fd)
    return found


def _subdirectories(dir_fd: int) -> list[str]:
    """Names of the directories (not links to one, not hidden) in ``dir_fd``, sorted."""
    names = []
    for name in sorted(os.listdir(dir_fd)):
        if name.startswith("."):
            continue
        with contextlib.suppress(OSError):
            if stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                names.append(name)
    return names


def _has_lock(dir_fd: int, name: str) -> bool:
    try:
        process_fd = os.open(name, DIRECTORY_FLAGS, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        lock = os.stat(LOCK_FILE, dir_fd=process_fd, follow_symlinks=False)
        return stat.S_ISREG(lock.st_mode)
    except OSError:
        return False
    finally:
        os.close(process_fd)


def is_process_directory(directory: Path) -> bool:
    """Whether ``directory`` is one process's spool directory (it holds its lock file, a
    regular file)."""
    try:
        return stat.S_ISREG(os.lstat(Path(directory) / LOCK_FILE).st_mode)
    except OSError:
        return False


def left_behind(refused: Mapping[str, str]) -> dict[str, str]:
    """What of a process directory's ``refused`` names (as :func:`describe` lists them)
    removing the directory leaves in it — all but the spool's own files, which are removed
    whatever they are: the operator must remove those by hand."""
    return {name: why for name, why in refused.items() if name not in OWN_FILES}


def root_problem(root: Path | str) -> str | None:
    """Why otel-luna would refuse the spool root ``root`` (writable by group or others, or not
    this user's), else None: for ``otel-luna status``."""
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as error:
        return error.strerror or str(error)
    try:
        check_owned(fd, root)
    except SpoolRefused as error:
        return str(error)
    finally:
        os.close(fd)
    return None


def describe(root: Path | str) -> list[dict[str, object]]:
    """What waits under a spool root, for ``otel-luna status``: one entry per process directory
    (``destination``, ``process``, ``running``, ``pending_lines``, ``pending_bytes``,
    ``corrupt_records``, ``counts`` — the stats it last wrote —, ``refused``: the names in it
    the spool does not use and why, and ``problem``: why it is not replayed at all, or None),
    and one with a ``problem`` for anything else found where process directories are (a link,
    a file, a directory of another user); ``process`` is None for such a thing in place of a
    destination's directory.

    Reads only, never through a link, never a FIFO, at most :data:`STATS_MAX_BYTES` of stats;
    a directory whose process is gone is briefly locked to tell it apart from a live one, and
    left as it is.
    """
    entries: list[dict[str, object]] = []
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return entries
    try:
        for destination in sorted(os.listdir(root_fd)):
            if destination.startswith("."):
                continue
            try:
                found = os.stat(destination, dir_fd=root_fd, follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(found.st_mode):
                continue  # a supervisor's status file, or another file beside the spool
            if not stat.S_ISDIR(found.st_mode):
                entries.append(_refused_entry(destination, None, what_is(found.st_mode)))
                continue
            try:
                dest_fd = os.open(destination, DIRECTORY_FLAGS, dir_fd=root_fd)
            except OSError as error:
                entries.append(_refused_entry(destination, None, error_text(error)))
                continue
            try:
                entries += _describe_destination(Path(root) / destination, dest_fd)
            finally:
                os.close(dest_fd)
    finally:
        os.close(root_fd)
    return entries


def _refused_entry(destination: str, process: str | None, problem: str) -> dict[str, object]:
    return {
        "destination": destination,
        "process": process,
        "running": False,
        "pending_lines": 0,
        "pending_bytes": 0,
        "corrupt_records": 0,
        "counts": {},
        "refused": {},
        "problem": problem,
    }


def _describe_destination(destination: Path, dest_fd: int) -> list[dict[str, object]]:
    entries: list[dict[str, object]] = []
    try:
        names = sorted(os.listdir(dest_fd))
    except OSError as error:
        return [_refused_entry(destination.name, None, f"cannot be read: {error_text(error)}")]
    if LOCK_FILE in names and PROCESS_NAME.fullmatch(destination.name):
        return entries  # a process directory: the root given is a destination's directory
    owner = os.fstat(dest_fd).st_uid
    for name in names:
        if name.startswith("."):
            continue  # being made
        try:
            found = os.stat(name, dir_fd=dest_fd, follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(found.st_mode):
            problem = f"{what_is(found.st_mode)}, not a process directory: never followed"
        elif not PROCESS_NAME.fullmatch(name):
            problem = "not named as a process directory (<pid>-<8 hex>): never read"
        elif found.st_uid != owner:
            problem = (
                f"owned by uid {found.st_uid}, not by the owner of its destination's directory "
                f"(uid {owner}): never replayed"
            )
        else:
            entries.append(_describe_process(destination, name, dest_fd))
            continue
        entries.append(_refused_entry(destination.name, name, problem))
    return entries


def _describe_process(destination: Path, name: str, dest_fd: int) -> dict[str, object]:
    try:
        dir_fd = os.open(name, DIRECTORY_FLAGS, dir_fd=dest_fd)
    except OSError as error:
        return _refused_entry(destination.name, name, f"cannot be opened: {error_text(error)}")
    try:
        try:
            lock = open_regular(LOCK_FILE, dir_fd)
        except FileNotFoundError:
            running = False
        except OSError as error:
            return _refused_entry(
                destination.name, name, f"its lock file cannot be used: {error_text(error)}"
            )
        else:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                running = False
            except OSError:
                running = True
            finally:
                os.close(lock)
        counts = Counts()
        log = SegmentLog(destination / name, os.dup(dir_fd), counts, quiet=True)
        log.release()
        stats: dict[str, object] = {}
        try:
            stats = read_stats(dir_fd)
        except OSError as error:
            log.refused[STATS_FILE] = error_text(error)
        return {
            "destination": destination.name,
            "process": name,
            "running": running,
            "pending_lines": log.pending_lines,
            "pending_bytes": log.pending_bytes,
            "corrupt_records": counts["corrupt_records"],
            "counts": stats,
            "refused": dict(log.refused),
            "problem": None,
        }
    except OSError as error:
        return _refused_entry(destination.name, name, f"cannot be read: {error_text(error)}")
    finally:
        os.close(dir_fd)
