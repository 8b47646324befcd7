"""The disk spool: records in a directory of this process's own, and adoption of the
directories whose process is gone (also for ``otel-luna spool``: :func:`claim_gone`).

:meth:`DiskSpool.append` returns only once every byte of the record was written to its segment
file (no ``fsync``: see :mod:`~otel_luna.delivery._spool`). Anything refused in a directory — a
link, a FIFO, a directory of another user, a name that is not the spool's — is logged once,
counted (``spool_files_refused``) and skipped: never followed, read, or removed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from otel_luna._files import DIRECTORY_FLAGS, error_text, what_is
from otel_luna.delivery._process_directory import open_root, remove, store_stats, try_lock
from otel_luna.delivery._segments import PROCESS_NAME, SEGMENT_BYTES, SegmentLog
from otel_luna.delivery._spool import Batch, Spool, refuse
from otel_luna.outcomes import Counts, Reason

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DiskToken:
    """What acknowledges a batch read from disk: its log, the position after it, its lines."""

    log: SegmentLog
    upto: tuple[int, int]
    lines: int


class DiskSpool(Spool):
    """Records in ``<root>/<pid>-<random>/``, a directory this process holds a lock on.

    At start, directories under ``root`` whose lock is free (their process is gone) are adopted
    and replayed before this process's own records. Several processes may share ``root``: each
    writes only its own directory, and exactly one of them adopts a dead one.
    """

    def __init__(
        self,
        root: Path | str,
        max_bytes: int,
        *,
        segment_bytes: int = SEGMENT_BYTES,
        counts: Counts | None = None,
    ) -> None:
        self.root = Path(root)
        self.counts = Counts() if counts is None else counts
        self._max_bytes = max_bytes
        self._segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._closed = False
        self._root_fd = open_root(self.root)
        self._adopted: list[tuple[SegmentLog, int]] = []
        try:
            self.adopt_orphans()
            self._own, self._own_fd = self._new_own()
        except BaseException:
            for log, fd in self._adopted:
                log.release()
                os.close(fd)
            os.close(self._root_fd)
            raise

    def adopt_orphans(self) -> int:
        """Take over the directories of processes that are gone; returns the lines adopted.

        Called at start and periodically by the writer, so what a forked child spooled and
        did not deliver before it exited is delivered by a living process.
        """
        adopted = 0
        for name in _process_directories(self._root_fd, self.root, self.counts):
            if self._closed:
                break
            directory = self.root / name
            dir_fd = _open_process_directory(self._root_fd, directory, self.counts)
            if dir_fd is None:
                continue
            fd = try_lock(dir_fd)
            if fd is None:
                os.close(dir_fd)
                continue
            try:
                log = SegmentLog(directory, dir_fd, self.counts, self._segment_bytes)
            except OSError as error:  # unreadable: not ours to take
                refuse(directory, error_text(error), self.counts)
                os.close(fd)
                os.close(dir_fd)
                continue
            if log.pending_lines:
                with self._lock:
                    self._adopted.append((log, fd))
                adopted += log.pending_lines
                _logger.warning(
                    "otel-luna spool: replaying %d lines left in %s", log.pending_lines, directory
                )
            else:
                remove(log, fd, self._root_fd)
        return adopted

    def _new_own(self) -> tuple[SegmentLog, int]:
        # Made and locked under a hidden name, then renamed: no other process ever sees it
        # unlocked (and adopts or removes it) between mkdir and lock.
        name = f"{os.getpid()}-{os.urandom(4).hex()}"
        hidden = f".{name}"
        os.mkdir(hidden, 0o700, dir_fd=self._root_fd)
        dir_fd = os.open(hidden, DIRECTORY_FLAGS, dir_fd=self._root_fd)
        try:
            os.fchmod(dir_fd, 0o700)
            fd = try_lock(dir_fd)
            if fd is None:  # pragma: no cover - a fresh directory nobody else knows
                raise OSError(f"cannot lock {self.root / hidden}")
        except BaseException:
            os.close(dir_fd)
            raise
        with contextlib.suppress(OSError):  # its room, while there is some
            store_stats(dir_fd, {})
        try:
            os.rename(hidden, name, src_dir_fd=self._root_fd, dst_dir_fd=self._root_fd)
        except OSError:
            os.close(fd)
            os.close(dir_fd)
            raise
        return SegmentLog(self.root / name, dir_fd, self.counts, self._segment_bytes), fd

    def after_fork_in_child(self) -> None:
        """A forked child gets a directory of its own; the parent keeps its records. A closed
        spool stays closed (its descriptors may be other files' by now)."""
        if self._closed:
            return
        for log, fd in self._adopted:
            log.release()
            os.close(fd)
        self._own.release()
        os.close(self._own_fd)
        self._lock = threading.Lock()
        self.counts.after_fork_in_child()
        self._adopted = []
        self._own, self._own_fd = self._new_own()

    @property
    def directory(self) -> Path:
        return self._own.directory

    def write_stats(self, counts: Mapping[str, object]) -> None:
        """Leave this process's counters (any JSON-able mapping) beside its records, for
        ``otel-luna status``; on a full disk over the last ones (raises ``OSError`` if even
        that cannot be done)."""
        store_stats(self._own.dir_fd, counts)

    def append(self, body: bytes, lines: int) -> None:
        """Store one record: on disk when this returns, else :class:`SpoolUnavailable`."""
        with self._lock:
            self._own.append(body, lines)
            while self._pending_bytes() > self._max_bytes:
                dropped = self._drop_oldest()
                if dropped is None:
                    break
                self.counts.add(Reason.DROPPED_SPOOL_FULL, dropped)
                _logger.warning("otel-luna spool full: dropped the %d oldest lines", dropped)

    def _drop_oldest(self) -> int | None:
        if self._adopted:
            log, fd = self._adopted.pop(0)
            dropped = log.pending_lines
            remove(log, fd, self._root_fd)
            return dropped
        dropped = self._own.drop_oldest_segment()
        return dropped or None

    def _pending_bytes(self) -> int:
        return self._own.pending_bytes + sum(log.pending_bytes for log, _ in self._adopted)

    def read(self, max_lines: int) -> Batch | None:
        with self._lock:
            while self._adopted:
                log, fd = self._adopted[0]
                found = log.read(max_lines)
                if found is not None:
                    return Batch(found[0], found[1], DiskToken(log, found[2], found[1]))
                self._adopted.pop(0)
                remove(log, fd, self._root_fd)
            found = self._own.read(max_lines)
            if found is None:
                return None
            return Batch(found[0], found[1], DiskToken(self._own, found[2], found[1]))

    def ack(self, token: object) -> None:
        assert isinstance(token, DiskToken)
        log, upto, lines = token.log, token.upto, token.lines
        with self._lock:
            if log is self._own or any(log is adopted for adopted, _ in self._adopted):
                log.ack(upto, lines)

    @property
    def pending_bytes(self) -> int:
        with self._lock:
            return self._pending_bytes()

    @property
    def pending_lines(self) -> int:
        with self._lock:
            return self._own.pending_lines + sum(log.pending_lines for log, _ in self._adopted)

    def close(self) -> None:
        """Release the directory; it is removed if nothing waits in it. Once only."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for log, fd in self._adopted:
                log.release()
                os.close(fd)
            self._adopted = []
            if self._own.pending_lines == 0:
                remove(self._own, self._own_fd, self._root_fd)
            else:
                self._own.release()
                os.close(self._own_fd)
            os.close(self._root_fd)


def _process_directories(root_fd: int, root: Path, counts: Counts | None) -> list[str]:
    """The names of the process directories in a destination's directory (``root_fd``), not
    those being made (``.`` in front). Anything else there is refused: a link, a file, a name
    that is not ``<pid>-<8 hex>``."""
    names = []
    for name in sorted(os.listdir(root_fd)):
        if name.startswith("."):
            continue
        try:
            found = os.stat(name, dir_fd=root_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(found.st_mode):
            refuse(root / name, f"{what_is(found.st_mode)}, not a process directory", counts)
        elif not PROCESS_NAME.fullmatch(name):
            refuse(root / name, "not named as a process directory (<pid>-<8 hex>)", counts)
        else:
            names.append(name)
    return names


def _open_process_directory(root_fd: int, directory: Path, counts: Counts | None) -> int | None:
    """A descriptor of the process directory (never through a link), if it is this user's;
    None (refused) otherwise."""
    try:
        fd = os.open(directory.name, DIRECTORY_FLAGS, dir_fd=root_fd)
    except FileNotFoundError:
        return None
    except OSError as error:
        refuse(directory, error_text(error), counts)
        return None
    owner = os.fstat(fd).st_uid
    if owner != os.geteuid():
        os.close(fd)
        refuse(directory, f"owned by uid {owner}, not by this user", counts)
        return None
    return fd


class GoneDirectory:
    """A process directory whose process is gone, locked as :meth:`DiskSpool.adopt_orphans`
    locks one (for ``otel-luna spool``): while it is held, no process adopts it. What waits in
    it; moved into another destination's directory (where that destination's processes adopt
    it) or removed, as a drained adopted directory is. Get one with :func:`claim_gone`.

    It holds descriptors of its destination's directory, of itself (through its log) and of
    its lock; every operation is relative to them, never through a link."""

    def __init__(self, directory: Path, parent_fd: int, dir_fd: int, lock_fd: int) -> None:
        counts = Counts()
        self._log = SegmentLog(directory, dir_fd, counts, quiet=True)  # owns dir_fd from here
        self.directory = directory
        self._parent_fd = parent_fd
        self._fd: int | None = lock_fd
        self.pending_lines = self._log.pending_lines
        self.pending_bytes = self._log.pending_bytes
        self.corrupt_records = counts["corrupt_records"]

    def move_to(self, destination: Path) -> Path:
        """Rename it into ``destination`` (a destination's directory, made 0700 if missing,
        refused as a spool root would be) on the same file system, keeping its name and the
        lock; its new path."""
        target_fd = open_root(destination)
        name = self.directory.name
        try:
            try:
                os.stat(name, dir_fd=target_fd, follow_symlinks=False)
            except FileNotFoundError:
                pass
            else:
                raise FileExistsError(
                    errno.EEXIST, os.strerror(errno.EEXIST), str(destination / name)
                )
            os.rename(name, name, src_dir_fd=self._parent_fd, dst_dir_fd=target_fd)
        except BaseException:
            os.close(target_fd)
            raise
        os.close(self._parent_fd)
        self._parent_fd = target_fd
        self.directory = self._log.directory = destination / name
        return self.directory

    def discard(self) -> None:
        """Remove it and everything the spool made in it (its points are lost); releases it."""
        fd, self._fd = self._fd, None
        if fd is not None:
            remove(self._log, fd, self._parent_fd)
            os.close(self._parent_fd)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            self._log.release()
            os.close(fd)
            os.close(self._parent_fd)

    def __enter__(self) -> GoneDirectory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def claim_gone(directory: Path) -> GoneDirectory | None:
    """``directory`` (a process directory, never reached through a link) locked if its
    process — or a process that adopted it — is gone; None while one is alive (then it must
    not be touched). ``OSError`` if it cannot be used (another user's, unreadable)."""
    parent_fd = os.open(directory.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    dir_fd = lock_fd = -1
    try:
        dir_fd = os.open(directory.name, DIRECTORY_FLAGS, dir_fd=parent_fd)
        owner = os.fstat(dir_fd).st_uid
        if owner != os.geteuid():
            raise PermissionError(errno.EPERM, f"owned by uid {owner}", str(directory))
        lock = try_lock(dir_fd)  # made if missing, as a process adopting it makes it
        if lock is None:
            os.close(dir_fd)
            os.close(parent_fd)
            return None
        lock_fd = lock
        return GoneDirectory(directory, parent_fd, dir_fd, lock_fd)
    except BaseException:
        for fd in (lock_fd, dir_fd, parent_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        raise
