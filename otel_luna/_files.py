"""Files opened without trusting the path: relative to a directory's descriptor, never through a
symbolic link (``O_NOFOLLOW``), never waiting on a FIFO (``O_NONBLOCK``), used only if regular;
written whole, replaced atomically, directories made 0700 and files 0600 whatever the umask.

The spool, the file sink, the dead-letter file and serve's supervisor all write through these.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

#: A directory opened without following a link at its last component.
DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: A file read: never through a link, never waiting on a FIFO.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def what_is(mode: int) -> str:
    """What a file of ``mode`` (``st_mode``) is, for messages: ``"a symbolic link"`` …"""
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISREG(mode):
        return "a regular file"
    return "not a regular file"


def error_text(error: OSError) -> str:
    """What went wrong, without the path: ``strerror`` if there is one."""
    return error.strerror or str(error)


def open_regular(name: str, dir_fd: int, flags: int = READ_FLAGS, mode: int = 0o600) -> int:
    """``name`` in ``dir_fd``, opened without following a link or waiting on a FIFO; ``OSError``
    (``EINVAL``, saying what it is) unless it is a regular file."""
    fd = os.open(name, flags, mode, dir_fd=dir_fd)
    found = os.fstat(fd)
    if not stat.S_ISREG(found.st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"{what_is(found.st_mode)}, not a regular file")
    return fd


def read_small(name: str, dir_fd: int, limit: int) -> bytes:
    """The whole of the regular file ``name`` in ``dir_fd``, if it holds at most ``limit`` bytes
    (``OSError`` otherwise)."""
    fd = open_regular(name, dir_fd)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise OSError(errno.EFBIG, f"{size} bytes, more than the {limit} it may hold")
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"more than the {limit} bytes it may hold")
    return data


def replace_file(name: str, dir_fd: int, data: bytes) -> None:
    """``data`` as ``name`` in ``dir_fd``, atomically: through a new ``<name>.tmp`` (made with
    ``O_EXCL``, so never a link's target), mode 0600."""
    temporary = f"{name}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary, dir_fd=dir_fd)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temporary, flags, 0o600, dir_fd=dir_fd)
    try:
        os.fchmod(fd, 0o600)
        write_all(fd, data)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=dir_fd)
        raise
    os.close(fd)
    os.replace(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def make_directories(path: Path | str) -> None:
    """Make ``path`` and its missing parents, each mode 0700 whatever the umask."""
    missing = []
    here = Path(os.path.abspath(path))
    while not os.path.lexists(here) and here.parent != here:
        missing.append(here)
        here = here.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            continue  # made meanwhile by another process: checked when it is opened
        fd = os.open(directory, DIRECTORY_FLAGS)
        try:
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written; a write that takes nothing is ``ENOSPC``."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]
