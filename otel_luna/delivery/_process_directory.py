"""A process directory as a whole, and the destination's directory that holds them: opening the
destination's directory safely, a process directory's lock, its ``stats.json``, its removal.

**Stats.** The writer leaves its counters in ``stats.json`` beside the records, for
``otel-luna status``. The file is kept at least :data:`STATS_RESERVE_BYTES` long (padded with
spaces, which JSON ignores) and replaced atomically; when the disk is full and a new file
cannot be written, the stats are written over the old one in place, which needs no new space.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from otel_luna._files import (
    DIRECTORY_FLAGS,
    make_directories,
    open_regular,
    replace_file,
    what_is,
)
from otel_luna.delivery._segments import LOCK_FILE, OWN_FILES, SEGMENT_NAME, STATS_FILE, SegmentLog
from otel_luna.delivery._spool import SpoolRefused

#: Bytes ``stats.json`` keeps, so that it can be rewritten in place on a full disk.
STATS_RESERVE_BYTES = 4096


def check_owned(fd: int, path: Path | str) -> None:
    """:class:`SpoolRefused` unless the directory ``fd`` is this user's and writable by it only."""
    found = os.fstat(fd)
    if found.st_uid != os.geteuid():
        raise SpoolRefused(
            path, f"is owned by uid {found.st_uid}, not by this user (uid {os.geteuid()})"
        )
    if found.st_mode & 0o022:
        raise SpoolRefused(
            path, f"is writable by group or others (mode {stat.S_IMODE(found.st_mode):04o})"
        )


def open_root(directory: Path | str) -> int:
    """A descriptor of a destination's spool directory ``<spool root>/<destination>``, made
    (0700) if missing. The spool root may be reached through links (the operator named it);
    the destination's directory is opened without following one. Both must be this user's and
    not writable by group or others: :class:`SpoolRefused` (one line) otherwise."""
    path = Path(directory)
    name = path.name
    if name in ("", ".", ".."):
        raise SpoolRefused(path, "does not name a directory of its own")
    make_directories(path.parent)
    try:
        parent_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except NotADirectoryError:
        raise SpoolRefused(path.parent, "is not a directory") from None
    try:
        check_owned(parent_fd, path.parent)  # before anything is made in it
        try:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            made = False
        else:
            made = True
        try:
            fd = os.open(name, DIRECTORY_FLAGS, dir_fd=parent_fd)
            if made:
                os.fchmod(fd, 0o700)
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.ENOTDIR):
                found = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
                raise SpoolRefused(path, f"is {what_is(found.st_mode)}") from None
            raise
    finally:
        os.close(parent_fd)
    try:
        check_owned(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def try_lock(dir_fd: int, create: bool = True) -> int | None:
    """An open, exclusively locked fd on the directory's ``lock`` (a regular file), or None if
    another process has it (or, with ``create`` false, if there is none, or it is not a
    regular file)."""
    try:
        flags = (os.O_RDWR | os.O_CREAT) if create else os.O_RDONLY
        fd = open_regular(LOCK_FILE, dir_fd, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def remove(log: SegmentLog, fd: int, root_fd: int) -> None:
    """Delete the spool's own files of ``log``'s directory, then the directory if that
    emptied it (what the spool refused stays, and so does the directory)."""
    log.close()
    for name in os.listdir(log.dir_fd):
        if name in log.refused:
            continue
        if name in OWN_FILES or SEGMENT_NAME.fullmatch(name):
            with contextlib.suppress(OSError):  # gone, or a directory by that name
                os.unlink(name, dir_fd=log.dir_fd)
    with contextlib.suppress(OSError):
        os.rmdir(log.directory.name, dir_fd=root_fd)
    log.release()
    os.close(fd)


def store_stats(dir_fd: int, counts: Mapping[str, object]) -> None:
    """``counts`` as ``stats.json`` in the directory ``dir_fd``: a new file padded to
    :data:`STATS_RESERVE_BYTES`, atomically; if the disk refuses that, written over the old
    file in place (it then needs no new space). ``OSError`` if neither can be done."""
    data = json.dumps(dict(counts), sort_keys=True).encode()
    try:
        replace_file(STATS_FILE, dir_fd, data.ljust(STATS_RESERVE_BYTES - 1) + b"\n")
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(f"{STATS_FILE}.tmp", dir_fd=dir_fd)
        if not _overwrite(dir_fd, data):
            raise error from None


def _overwrite(dir_fd: int, data: bytes) -> bool:
    """Write ``data`` over the start of the existing regular file ``stats.json``, padding it
    with spaces to the file's size (so no new space is needed); False if it is too small or
    missing."""
    try:
        fd = open_regular(
            STATS_FILE, dir_fd, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        )
    except OSError:
        return False
    try:
        size = os.fstat(fd).st_size
        if len(data) >= size:
            return False
        return os.pwrite(fd, data.ljust(size - 1) + b"\n", 0) == size
    except OSError:
        return False
    finally:
        os.close(fd)
