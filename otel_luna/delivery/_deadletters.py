"""The dead-letter file: lines the destination rejected for good, with the server's reason.

One JSON object per line (time, HTTP status, redacted reason, the line). Mode 0600 (missing
directories 0700), never written through a link, bounded and rotated (see :class:`DeadLetters`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Iterable

from otel_luna._files import make_directories, write_all
from otel_luna.delivery._throttle import SUMMARY_INTERVAL, Throttle
from otel_luna.outcomes import Counts, Reason
from otel_luna.redact import redact
from otel_luna.settings._declare import SettingsError
from otel_luna.settings._settings import env_name

_logger = logging.getLogger(__name__)

#: Default bound of the dead-letter file (``dead_letter_max_bytes``).
DEAD_LETTER_MAX_BYTES = 64 * 1024 * 1024
#: How the dead-letter file is opened: never through a symbolic link (``O_NOFOLLOW``), never
#: blocking on a FIFO (``O_NONBLOCK``); what is opened must then be a regular file.
_DEAD_LETTER_FLAGS = (
    os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
)


class DeadLetters:
    """Appends rejected lines with the server's (redacted) reason, one JSON object per line.

    The file is created with mode 0600 (an existing one is made 0600). When appending would
    take it past ``max_bytes`` it is renamed to ``<path>.1`` (replacing the previous one, whose
    records are counted as ``dead_letters_rotated_out``) and a new file is started. Raises
    :class:`SettingsError` naming ``OTEL_EXPORTER_LUNA_DEAD_LETTER`` when the path cannot be
    written or is a symbolic link; creates nothing until the first dead letter.

    A symbolic link is never followed (nor a file other than a regular one written): one that
    appears at the path later makes each write fail, counted as ``dead_letter_write_errors``
    and logged (the first, then at most once a minute); the line is lost, never appended to
    whatever the link points at.
    """

    def __init__(
        self, path: str, max_bytes: int = DEAD_LETTER_MAX_BYTES, secrets: Iterable[str] = ()
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.counts = Counts()
        self._secrets = tuple(secrets)
        self._lock = threading.Lock()
        self._errors = Throttle(SUMMARY_INTERVAL)
        problem = _unwritable(path)
        if problem:
            raise SettingsError(
                env_name("dead_letter"),
                redact(f"cannot write dead letters to {path}: {problem}", self._secrets),
            )

    def write(self, line: bytes, reason: str, status: int | None) -> None:
        record = {
            "time": time.time(),
            "status": status,
            "reason": redact(reason, self._secrets),
            "line": line.decode(errors="replace").rstrip("\n"),
        }
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        try:
            with self._lock:
                directory = os.path.dirname(self.path)
                if directory:
                    make_directories(directory)  # 0700 whatever the umask
                size = _size(self.path)
                if size and size + len(data) > self.max_bytes:
                    self._rotate()
                fd = _open_regular(self.path, _DEAD_LETTER_FLAGS)
                try:
                    if os.fstat(fd).st_mode & 0o077:  # a file an older version left readable
                        with contextlib.suppress(OSError):
                            os.fchmod(fd, 0o600)  # the file itself: fd was opened without links
                    write_all(fd, data)
                finally:
                    os.close(fd)
        except OSError as error:
            self.counts.add(Reason.DEAD_LETTER_WRITE_ERRORS)
            if self._errors.due():
                _logger.error(
                    "otel-luna: cannot write dead letter to %s: %s (the line is lost; further "
                    "failures within %.0f s are only counted: dead_letter_write_errors)",
                    self.path,
                    _why(error),
                    self._errors.interval,
                )

    def _rotate(self) -> None:
        older = f"{self.path}.1"
        try:
            fd = _open_regular(older, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:  # none, or not ours to read (a link): replaced all the same, uncounted
            lost = 0
        else:
            with open(fd, "rb") as file:
                lost = sum(chunk.count(b"\n") for chunk in iter(lambda: file.read(1 << 20), b""))
        os.replace(self.path, older)  # renames links themselves, never what they point at
        if lost:
            self.counts.add(Reason.DEAD_LETTERS_ROTATED_OUT, lost)
            _logger.warning(
                "otel-luna: dead-letter file %s rotated; %d older dead letters discarded",
                self.path,
                lost,
            )

    def stats(self) -> dict[str, object]:
        """Path and bytes on disk (the file and its rotated predecessor), for ``status``."""
        return {"path": self.path, "bytes": _size(self.path) + _size(f"{self.path}.1")}

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self.counts.after_fork_in_child()
        self._errors = Throttle(self._errors.interval)


def _open_regular(path: str, flags: int) -> int:
    """``os.open(path, flags, 0o600)``, refusing anything but a regular file."""
    fd = os.open(path, flags, 0o600)
    found = os.fstat(fd)
    # A hard link would be followed like a symbolic one: another file's contents and mode.
    if not stat.S_ISREG(found.st_mode) or found.st_nlink > 1:
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file of its own", path)
    return fd


def _why(error: OSError) -> str:
    if error.errno == errno.ELOOP:
        return "it is a symbolic link, which is not followed"
    return str(error)


def _size(path: str) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0


def _unwritable(path: str) -> str | None:
    """Why ``path`` could not be appended to (a directory, a symbolic link, no permission ...),
    else None."""
    if os.path.islink(path):
        return "it is a symbolic link (not followed: give the path of the file itself)"
    if os.path.isdir(path):
        return "it is a directory"
    if os.path.exists(path) and not os.path.isfile(path):
        return "it is not a regular file (a device, a pipe)"
    if os.path.isfile(path) and os.stat(path).st_nlink > 1:
        return "it is a hard link to another file"
    if os.path.exists(path):
        return None if os.access(path, os.W_OK) else "no permission to write the file"
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"{parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"no permission to create files in {parent}"
    return None
