"""The spool between encoding and the sinks: encoded batches wait here until a sink takes them.

Two kinds, one interface (:class:`Spool`):

* :class:`DiskSpool` — append-only segment files with a checksum per record, in a directory of
  its own that the process holds an exclusive lock on. What was appended survives the process
  (also ``SIGKILL``); after a restart, the directories of dead processes are adopted and their
  unacknowledged records replayed first (at-least-once: InfluxDB overwrites a replayed point,
  same measurement, tag set and timestamp). A torn or corrupt record ends its segment: counted,
  skipped, never a crash.
* :class:`MemorySpool` — the same queue in memory, for read-only containers.

Both are bounded in bytes; when full, the oldest records are dropped and counted
(``dropped_spool_full``), so a long outage keeps the newest data. Records are read in order and
acknowledged up to a position once a sink has taken them. A record always holds at least one
line, so a read never hands out an empty batch.

**What "on disk" means.** :meth:`DiskSpool.append` returns only once every byte of the record
was written to its segment file (short writes are continued): the record is then in the
operating system's page cache and survives the process dying in any way (``SIGKILL``, OOM kill,
``os._exit``). There is no ``fsync``: a power loss or kernel crash within the writeback window
can lose the newest records; an ``fsync`` per export would cost a disk flush each. A write the
disk refuses (``ENOSPC``, ``EDQUOT``, ``EIO`` …) is undone — the segment is cut back to where
the record began — and raised as :class:`SpoolUnavailable`; nothing of the record is counted or
ever read.

:func:`open_spool` wraps a disk spool in a :class:`FallbackSpool` (memory while the disk refuses
writes, back to the disk once that memory has drained) or, for ``otel-luna serve``, returns it
bare so that a refusal reaches the receiver, which answers with backpressure.
``pending_volatile_lines`` says how many waiting lines are in memory only (lost with the
process): all of a :class:`MemorySpool`'s, none of a :class:`DiskSpool`'s, and those a
:class:`FallbackSpool` keeps while its disk refuses writes.

**Trusting no path.** Serve often runs as root, and a spool directory is a place others may
have put things in. Every file of the spool is opened relative to a descriptor of its directory,
never through a symbolic link (``O_NOFOLLOW``), never blocking on a FIFO (``O_NONBLOCK``), and
used only if it is a regular file; every name is checked (a process directory is
``<pid>-<8 hex>``, a segment ``<20 digits>.seg``) and a segment's size against what a segment
may be before it is read, in bounded pieces. Directories are made 0700 and files 0600 whatever
the umask. A spool root (and a destination's directory in it) owned by another user, or
writable by group or others, is refused (:class:`SpoolRefused`, one line naming the path and
``OTEL_EXPORTER_LUNA_SPOOL_DIR``). Anything else refused — a link, a FIFO, a directory of
another user, a name that is not the spool's — is logged once, counted
(``spool_files_refused``) and skipped: never followed, read, or removed.

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
import logging
import os
import re
import stat
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from otel_luna.outcomes import Counts, Reason
from otel_luna.redact import printable

_logger = logging.getLogger(__name__)

_HEADER = struct.Struct("<4sIII")  # magic, payload length, line count, crc32 of payload
_MAGIC = b"OLS1"
_SEGMENT_SUFFIX = ".seg"
_ACK_FILE = "ack"
_LOCK_FILE = "lock"
_STATS_FILE = "stats.json"
#: The only names a process directory holds besides its segments; nothing else is touched.
_OWN_FILES = frozenset(
    {_ACK_FILE, f"{_ACK_FILE}.tmp", _LOCK_FILE, _STATS_FILE, f"{_STATS_FILE}.tmp"}
)
#: A process directory: ``<pid>-<8 hex digits>`` (``.`` in front while it is being made).
_PROCESS_NAME = re.compile(r"[0-9]{1,10}-[0-9a-f]{8}")
#: A segment: its number in 20 digits.
_SEGMENT_NAME = re.compile(r"[0-9]{20}\.seg")
#: A directory opened without following a link at its last component.
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: A file read: never through a link, never waiting on a FIFO.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
#: The setting that names the spool root, for messages.
_SPOOL_DIR_SETTING = "OTEL_EXPORTER_LUNA_SPOOL_DIR"
#: Segment files roll over past this size.
SEGMENT_BYTES = 8 * 1024 * 1024
#: Bytes of a segment read at once for a batch (more only for a record larger than that).
READ_AHEAD = 1024 * 1024
#: Seconds a :class:`FallbackSpool` keeps new records in memory before trying the disk again
#: (and only once what it kept in memory was delivered).
DISK_RETRY_INTERVAL = 5.0
#: Bytes ``stats.json`` keeps, so that it can be rewritten in place on a full disk.
STATS_RESERVE_BYTES = 4096
#: Most bytes of ``stats.json`` read (``otel-luna status``); a larger file is refused.
STATS_MAX_BYTES = 1024 * 1024
#: Largest record payload: bigger is refused on append (:class:`SpoolUnavailable`) and read as
#: damage. A record holds at most one batch of lines.
MAX_RECORD_BYTES = 256 * 1024 * 1024


class SpoolUnavailable(OSError):
    """The spool cannot take a record now (the disk refused it); nothing of it was stored.

    ``errno`` is the disk's error (``ENOSPC`` …); ``filename`` the spool directory.
    """


class SpoolRefused(SpoolUnavailable):
    """A spool directory that is not safe to use (another user's, writable by others, a link,
    not a directory); ``str()`` is one line naming the path and the setting."""

    def __init__(self, path: Path | str, why: str) -> None:
        super().__init__(errno.EPERM, f"spool directory {printable(str(path))} {why}")
        self.path = str(path)
        self.why = why

    def __str__(self) -> str:
        return f"{self.strerror}; refusing it ({_SPOOL_DIR_SETTING})"


def _unavailable(error: OSError, what: str, directory: Path | str) -> SpoolUnavailable:
    if isinstance(error, SpoolRefused):
        return error
    return SpoolUnavailable(error.errno, f"{what}: {error.strerror or error}", str(directory))


_refused: set[tuple[str, str]] = set()
_refused_lock = threading.Lock()


def _refuse(path: Path | str, why: str, counts: Counts | None) -> None:
    """Log (once per path and reason in this process) and count what the spool will not use."""
    key = (str(path), why)
    with _refused_lock:
        if key in _refused:
            return
        if len(_refused) < 10_000:  # bounded: past it, repeats are logged again
            _refused.add(key)
    if counts is not None:
        counts.add(Reason.SPOOL_FILES_REFUSED)
    _logger.warning(
        "otel-luna spool: refusing %s: %s (skipped, never followed)", printable(str(path)), why
    )


def _what_is(mode: int) -> str:
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


def _open_regular(name: str, dir_fd: int, flags: int = _READ_FLAGS, mode: int = 0o600) -> int:
    """``name`` in ``dir_fd``, opened without following a link or waiting on a FIFO; ``OSError``
    (``EINVAL``, saying what it is) unless it is a regular file."""
    fd = os.open(name, flags, mode, dir_fd=dir_fd)
    found = os.fstat(fd)
    if not stat.S_ISREG(found.st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"{_what_is(found.st_mode)}, not a regular file")
    return fd


def read_stats(dir_fd: int) -> dict[str, object]:
    """The counters a process directory (``dir_fd``) last wrote to ``stats.json``, read never
    through a link and at most :data:`STATS_MAX_BYTES`; empty if there are none, or if they
    are being replaced or damaged. ``OSError`` if the file is there and cannot be read."""
    try:
        stats = json.loads(read_small(_STATS_FILE, dir_fd, STATS_MAX_BYTES))
    except FileNotFoundError:
        return {}
    except (ValueError, RecursionError):
        return {}
    return stats if isinstance(stats, dict) else {}


def read_small(name: str, dir_fd: int, limit: int) -> bytes:
    """The whole of the regular file ``name`` in ``dir_fd``, if it holds at most ``limit`` bytes
    (``OSError`` otherwise)."""
    fd = _open_regular(name, dir_fd)
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
        fd = os.open(directory, _DIRECTORY_FLAGS)
        try:
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)


def _check_owned(fd: int, path: Path | str) -> None:
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
        _check_owned(parent_fd, path.parent)  # before anything is made in it
        try:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            made = False
        else:
            made = True
        try:
            fd = os.open(name, _DIRECTORY_FLAGS, dir_fd=parent_fd)
            if made:
                os.fchmod(fd, 0o700)
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.ENOTDIR):
                found = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
                raise SpoolRefused(path, f"is {_what_is(found.st_mode)}") from None
            raise
    finally:
        os.close(parent_fd)
    try:
        _check_owned(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass(frozen=True)
class Batch:
    """Records read together: their bodies concatenated, line count, and what to ack."""

    body: bytes
    lines: int
    token: object


class Spool(Protocol):
    @property
    def counts(self) -> Counts: ...

    @property
    def durable(self) -> bool:
        """True when every record waiting in the spool survives the process."""

    def append(self, body: bytes, lines: int) -> None:
        """Store one record of ``lines`` (≥ 1) lines, or raise :class:`SpoolUnavailable`."""

    def read(self, max_lines: int) -> Batch | None: ...

    def ack(self, token: object) -> None: ...

    @property
    def pending_bytes(self) -> int: ...

    @property
    def pending_lines(self) -> int: ...

    @property
    def pending_volatile_lines(self) -> int:
        """Lines among ``pending_lines`` held in memory only: lost if the process ends."""

    def close(self) -> None: ...

    def adopt_orphans(self) -> int: ...

    def write_stats(self, counts: Mapping[str, object]) -> None: ...

    def after_fork_in_child(self) -> None: ...


class MemorySpool:
    """A bounded in-memory queue of encoded records."""

    durable = False

    def __init__(self, max_bytes: int, counts: Counts | None = None) -> None:
        self.counts = Counts() if counts is None else counts
        self.max_bytes = max_bytes
        self._records: deque[tuple[bytes, int]] = deque()
        self._bytes = 0
        self._lines = 0
        self._reading = 0  # records handed out by read() and not yet acked
        self._lock = threading.Lock()

    def append(self, body: bytes, lines: int) -> None:
        _check_record(body, lines)
        with self._lock:
            self._records.append((body, lines))
            self._bytes += len(body)
            self._lines += lines
            # Drop the oldest records that are not being written right now; keep the newest.
            while self._bytes > self.max_bytes and len(self._records) > self._reading + 1:
                old, old_lines = self._records[self._reading]
                del self._records[self._reading]
                self._bytes -= len(old)
                self._lines -= old_lines
                self.counts.add(Reason.DROPPED_SPOOL_FULL, old_lines)

    def read(self, max_lines: int) -> Batch | None:
        with self._lock:
            if not self._records:
                return None
            bodies: list[bytes] = []
            lines = 0
            for body, count in self._records:
                if bodies and lines + count > max_lines:
                    break
                bodies.append(body)
                lines += count
            self._reading = len(bodies)
            return Batch(b"".join(bodies), lines, len(bodies))

    def ack(self, token: object) -> None:
        assert isinstance(token, int)
        with self._lock:
            for _ in range(token):
                body, lines = self._records.popleft()
                self._bytes -= len(body)
                self._lines -= lines
            self._reading = 0

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    @property
    def pending_lines(self) -> int:
        return self._lines

    @property
    def pending_volatile_lines(self) -> int:
        return self._lines

    def close(self) -> None:
        pass

    def adopt_orphans(self) -> int:
        return 0

    def write_stats(self, counts: Mapping[str, object]) -> None:
        pass  # nothing on disk to show

    def after_fork_in_child(self) -> None:
        """The parent keeps the records; the child starts empty, with a lock of its own."""
        self.counts.after_fork_in_child()
        self.__init__(self.max_bytes, self.counts)  # type: ignore[misc]


def _check_record(body: bytes, lines: int) -> None:
    if not body or lines < 1:
        raise ValueError(
            f"a spool record holds at least one line, not {lines} in {len(body)} bytes"
        )


class _SegmentLog:
    """The records of one directory: ``<n>.seg`` files and an ``ack`` file (segment, offset).

    ``dir_fd`` is the directory's descriptor (the log owns it: :meth:`release`); every file is
    opened relative to it. Entries that are not the spool's, segments that are not regular
    files or larger than a segment may be, are refused (logged once, counted) and left alone.
    """

    def __init__(
        self,
        directory: Path,
        dir_fd: int,
        counts: Counts,
        segment_bytes: int = SEGMENT_BYTES,
        *,
        quiet: bool = False,
    ) -> None:
        self.directory = directory
        self.dir_fd = dir_fd
        self._quiet = quiet  # only describing: refusals and damage are reported, not logged
        self._counts = counts
        self._segment_bytes = segment_bytes
        self._ack_write_errors = 0
        #: Names in the directory that are not the spool's, or not usable: what and why.
        self.refused: dict[str, str] = {}
        self.segments = sorted(self._list_segments())
        self.read_segment, self.read_offset = self._load_ack()
        self.segments = [n for n in self.segments if n >= self.read_segment]
        self.pending_bytes = 0
        self.pending_lines = 0
        self._read_lines = 0  # lines acked in read_segment since read_offset was loaded
        self._sizes: dict[int, int] = {}
        self._lines: dict[int, int] = {}
        self._write_fd: int | None = None
        self.reading: int | None = None  # segment of the batch handed out and not yet acked
        for number in list(self.segments):
            self._scan(number)

    # -- state on disk ----------------------------------------------------------------------

    def _path(self, number: int) -> Path:
        return self.directory / _segment_name(number)

    def _most_segment_bytes(self) -> int:
        """What a segment may hold: it rolls over past its size, by at most one record."""
        return max(self._segment_bytes, SEGMENT_BYTES) + _HEADER.size + MAX_RECORD_BYTES

    def _list_segments(self) -> list[int]:
        numbers = []
        for name in os.listdir(self.dir_fd):
            if name in _OWN_FILES:
                continue
            why = "not a file of the spool"
            if _SEGMENT_NAME.fullmatch(name):
                try:
                    found = os.stat(name, dir_fd=self.dir_fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(found.st_mode):
                    why = f"a segment that is {_what_is(found.st_mode)}"
                elif found.st_size > self._most_segment_bytes():
                    why = f"a segment of {found.st_size} bytes, more than a segment may hold"
                else:
                    numbers.append(int(name[:20]))
                    continue
            self._refuse(name, why)
        return numbers

    def _refuse(self, name: str, why: str) -> None:
        self.refused[name] = why
        if not self._quiet:
            _refuse(self.directory / name, why, self._counts)

    def _open_segment(self, number: int) -> int:
        """The segment's descriptor (a regular file, opened without following a link)."""
        return _open_regular(_segment_name(number), self.dir_fd)

    def _load_ack(self) -> tuple[int, int]:
        try:
            segment, offset = (int(part) for part in read_small(_ACK_FILE, self.dir_fd, 64).split())
            if segment < 0 or offset < 0:
                raise ValueError("a negative position")
            return segment, offset
        except (OSError, ValueError):  # gone or damaged: replay the directory from its start
            return (self.segments[0] if self.segments else 0), 0

    def _store_ack(self) -> None:
        """Persist the read position; if the disk refuses, it lives on in memory (counted):
        the worst outcome is a replay after a restart, never a stalled writer."""
        try:
            replace_file(
                _ACK_FILE, self.dir_fd, f"{self.read_segment} {self.read_offset}\n".encode()
            )
        except OSError as error:
            self._ack_write_errors += 1
            self._counts.add(Reason.ACK_WRITE_ERRORS)
            if self._ack_write_errors == 1:
                _logger.warning(
                    "otel-luna spool: cannot record progress in %s: %s", self.directory, error
                )

    def _scan(self, number: int) -> None:
        """Count the valid records of a segment; a torn or corrupt tail is cut off and counted.
        Read in pieces of at most :data:`READ_AHEAD` bytes: memory does not grow with the
        segment. A segment that cannot be opened as a regular file is refused and left out."""
        try:
            fd = self._open_segment(number)
        except OSError as error:
            self.segments.remove(number)
            self._refuse(_segment_name(number), _why(error))
            return
        offset = self.read_offset if number == self.read_segment else 0
        with open(fd, "rb", buffering=0) as file:
            valid_end, lines = offset, 0
            size = os.fstat(fd).st_size
            file.seek(offset)
            while valid_end < size:
                count = _scan_record(file, size - valid_end)
                if count is None:
                    self._counts.add(Reason.CORRUPT_RECORDS)
                    if self._quiet:
                        break
                    _logger.warning(
                        "otel-luna spool: %s is damaged at byte %d; skipping the rest of it",
                        self._path(number),
                        valid_end,
                    )
                    break
                lines += count[0]
                valid_end += count[1]
        self._sizes[number] = valid_end
        self._lines[number] = lines
        self.pending_bytes += valid_end - offset
        self.pending_lines += lines
        self._counts.add(Reason.REPLAYED_LINES, lines)

    # -- appending --------------------------------------------------------------------------

    def append(self, body: bytes, lines: int) -> None:
        """Write one whole record, or raise :class:`SpoolUnavailable` leaving the log as it was
        (sizes and counts change only once the whole record is written)."""
        _check_record(body, lines)
        if len(body) > MAX_RECORD_BYTES:  # it would read back as damage
            raise SpoolUnavailable(
                errno.EFBIG,
                f"a record of {len(body)} bytes is larger than {MAX_RECORD_BYTES}",
                str(self.directory),
            )
        record = _HEADER.pack(_MAGIC, len(body), lines, zlib.crc32(body)) + body
        try:
            try:
                number = self._write(record)
            except OSError:
                if not self._free_delivered():
                    raise
                number = self._write(record)
        except OSError as error:
            raise _unavailable(error, "cannot append to the spool", self.directory) from error
        self._sizes[number] += len(record)
        self._lines[number] += lines
        self.pending_bytes += len(record)
        self.pending_lines += lines

    def _write(self, record: bytes) -> int:
        """Write ``record`` at the end of the current segment; its number. On failure nothing
        of it is left behind."""
        if self._write_fd is None or self._sizes[self.segments[-1]] >= self._segment_bytes:
            self._roll()
        assert self._write_fd is not None
        number = self.segments[-1]
        try:
            write_all(self._write_fd, record)
        except BaseException:  # also a signal handler raising between two partial writes
            self._cut(number)
            raise
        return number

    def _free_delivered(self) -> bool:
        """On a failed write: if the segment being written holds only delivered records,
        start a new one and delete it, giving its space back. False if there is none."""
        number = self.segments[-1] if self.segments else None
        if number is None or number != self.read_segment:
            return False
        if not 0 < self._sizes[number] <= self.read_offset:
            return False
        self._roll()
        self._drop_segment(number)
        self._store_ack()
        return True

    def _cut(self, number: int) -> None:
        """Remove what a failed append left of its record. If even that fails, seal the
        segment: nothing is ever appended after garbage (the next append starts a new one)."""
        assert self._write_fd is not None
        try:
            os.ftruncate(self._write_fd, self._sizes[number])
        except OSError as error:
            _logger.warning(
                "otel-luna spool: cannot cut a failed write from %s (%s); starting a new segment",
                self._path(number),
                error,
            )
            self.close()

    def _roll(self) -> None:
        self.close()
        number = (self.segments[-1] + 1) if self.segments else max(1, self.read_segment)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK
        self._write_fd = _open_regular(_segment_name(number), self.dir_fd, flags | os.O_CLOEXEC)
        os.fchmod(self._write_fd, 0o600)
        self.segments.append(number)
        self._sizes[number] = 0
        self._lines[number] = 0
        if len(self.segments) == 1:
            self.read_segment, self.read_offset = number, 0

    # -- reading ----------------------------------------------------------------------------

    def read(self, max_lines: int) -> tuple[bytes, int, tuple[int, int]] | None:
        """Records from the read position, up to ``max_lines`` (at least one record), or None
        when nothing waits. Never an empty batch: a damaged record gives up its segment."""
        while self.segments:
            number = self.read_segment
            end = self._sizes.get(number, 0)
            if self.read_offset >= end:
                if number == self.segments[-1]:
                    return None
                self._drop_segment(number)
                continue
            bodies, lines, position = self._read_records(number, end, max_lines)
            if bodies:
                self.reading = number
                return b"".join(bodies), lines, (number, self.read_offset + position)
            self._give_up_damaged(number, end)
        return None

    def _read_records(self, number: int, end: int, max_lines: int) -> tuple[list[bytes], int, int]:
        """The whole records from the read position, up to ``max_lines`` (at least one), their
        lines, and how many bytes they take. The segment is read in pieces of
        :data:`READ_AHEAD` bytes, not to its end (a batch is a few MiB of a segment that may
        hold many more), and further only for a record cut at the end of a piece."""
        bodies: list[bytes] = []
        lines = 0
        available = end - self.read_offset
        try:
            fd = self._open_segment(number)
        except OSError:
            return bodies, 0, 0  # removed or replaced behind our back: as damaged as it gets
        with open(fd, "rb") as file:
            file.seek(self.read_offset)
            data = file.read(min(available, READ_AHEAD))
            start = position = 0  # data[0] is at start; the next record at start + position
            while True:
                record = _parse(data, position)
                if record is None:
                    if start + len(data) >= available:
                        break  # the end of what was written, or damage
                    rest = len(data) - position  # a record cut at the end of the piece
                    want = _HEADER.size
                    if rest >= _HEADER.size:
                        length = _HEADER.unpack_from(data, position)[1]
                        if length > MAX_RECORD_BYTES:
                            break  # damaged: never read that much
                        want += length
                    more = min(max(want - rest, READ_AHEAD), available - start - len(data))
                    piece = file.read(more)
                    if not piece:
                        break  # cut behind our back: as damaged as it gets
                    start += position
                    data = data[position:] + piece
                    position = 0
                    continue
                body, count, next_position = record
                if bodies and lines + count > max_lines:
                    break
                bodies.append(body)
                lines += count
                position = next_position
        return bodies, lines, start + position

    def _give_up_damaged(self, number: int, end: int) -> None:
        """The record at the read position is damaged (changed or cut after it was written):
        count it, drop what is left of its segment, and never append there again."""
        lost = self._lines[number] - self._read_lines
        self._counts.add(Reason.CORRUPT_RECORDS)
        self._counts.add(Reason.DROPPED_CORRUPT, lost)
        _logger.warning(
            "otel-luna spool: %s is damaged at byte %d; dropping the %d lines left in it",
            self._path(number),
            self.read_offset,
            lost,
        )
        self.pending_bytes -= end - self.read_offset
        self.pending_lines -= lost
        if number == self.segments[-1]:
            self.close()  # sealed: the next append starts a new segment
            self.read_offset, self._read_lines = end, self._lines[number]
        else:
            self._drop_segment(number)
        self._store_ack()

    def ack(self, upto: tuple[int, int], lines: int) -> None:
        number, offset = upto
        self.reading = None
        if number != self.read_segment or number not in self.segments:
            return  # its segment was given up meanwhile (spool full): already accounted for
        self.pending_bytes -= offset - self.read_offset  # read() stays within one segment
        self.pending_lines -= lines
        self._read_lines += lines
        self.read_segment, self.read_offset = number, offset
        if offset >= self._sizes.get(number, 0) and number != self.segments[-1]:
            self._drop_segment(number)
        self._store_ack()

    def drop_oldest_segment(self) -> int:
        """Give up the oldest segment (spool full); returns the lines dropped. Never the one
        being written to, nor the one a batch in flight was read from."""
        candidates = [n for n in self.segments[:-1] if n != self.reading]
        if not candidates:
            return 0
        number = candidates[0]
        is_read = number == self.read_segment
        self.pending_bytes -= self._sizes[number] - (self.read_offset if is_read else 0)
        dropped = self._lines[number] - (self._read_lines if is_read else 0)
        self.pending_lines -= dropped
        self._drop_segment(number)
        self._store_ack()
        return dropped

    def _drop_segment(self, number: int) -> None:
        if number in self.segments:
            self.segments.remove(number)
        self._sizes.pop(number, None)
        self._lines.pop(number, None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_segment_name(number), dir_fd=self.dir_fd)
        if self.read_segment == number:
            self.read_segment = self.segments[0] if self.segments else number + 1
            self.read_offset = self._read_lines = 0

    def close(self) -> None:
        if self._write_fd is not None:
            os.close(self._write_fd)
            self._write_fd = None

    def release(self) -> None:
        """Close the segment being written and the directory's descriptor."""
        self.close()
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1


def _segment_name(number: int) -> str:
    return f"{number:020d}{_SEGMENT_SUFFIX}"


def _scan_record(file: Any, left: int) -> tuple[int, int] | None:
    """(lines, bytes) of the record at ``file``'s position, read in bounded pieces (its
    checksum computed as they come), or None if it is damaged; ``left``: bytes to the end."""
    header = file.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    magic, length, lines, checksum = _HEADER.unpack(header)
    total = _HEADER.size + length
    if magic != _MAGIC or not length or not lines or length > MAX_RECORD_BYTES or total > left:
        return None
    crc, remaining = 0, length
    while remaining:
        piece = file.read(min(remaining, READ_AHEAD))
        if not piece:
            return None
        crc = zlib.crc32(piece, crc)
        remaining -= len(piece)
    return (lines, total) if crc == checksum else None


@dataclass(frozen=True)
class _DiskToken:
    log: _SegmentLog
    upto: tuple[int, int]
    lines: int


class DiskSpool:
    """Records in ``<root>/<pid>-<random>/``, a directory this process holds a lock on.

    At start, directories under ``root`` whose lock is free (their process is gone) are adopted
    and replayed before this process's own records. Several processes may share ``root``: each
    writes only its own directory, and exactly one of them adopts a dead one.
    """

    durable = True

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
        self._adopted: list[tuple[_SegmentLog, int]] = []
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
            fd = _try_lock(dir_fd)
            if fd is None:
                os.close(dir_fd)
                continue
            try:
                log = _SegmentLog(directory, dir_fd, self.counts, self._segment_bytes)
            except OSError as error:  # unreadable: not ours to take
                _refuse(directory, error.strerror or str(error), self.counts)
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
                _remove(log, fd, self._root_fd)
        return adopted

    def _new_own(self) -> tuple[_SegmentLog, int]:
        # Made and locked under a hidden name, then renamed: no other process ever sees it
        # unlocked (and adopts or removes it) between mkdir and lock.
        name = f"{os.getpid()}-{os.urandom(4).hex()}"
        hidden = f".{name}"
        os.mkdir(hidden, 0o700, dir_fd=self._root_fd)
        dir_fd = os.open(hidden, _DIRECTORY_FLAGS, dir_fd=self._root_fd)
        try:
            os.fchmod(dir_fd, 0o700)
            fd = _try_lock(dir_fd)
            if fd is None:  # pragma: no cover - a fresh directory nobody else knows
                raise OSError(f"cannot lock {self.root / hidden}")
        except BaseException:
            os.close(dir_fd)
            raise
        with contextlib.suppress(OSError):  # its room, while there is some
            _write_stats(dir_fd, {})
        try:
            os.rename(hidden, name, src_dir_fd=self._root_fd, dst_dir_fd=self._root_fd)
        except OSError:
            os.close(fd)
            os.close(dir_fd)
            raise
        return _SegmentLog(self.root / name, dir_fd, self.counts, self._segment_bytes), fd

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
        _write_stats(self._own.dir_fd, counts)

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
            _remove(log, fd, self._root_fd)
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
                    return Batch(found[0], found[1], _DiskToken(log, found[2], found[1]))
                self._adopted.pop(0)
                _remove(log, fd, self._root_fd)
            found = self._own.read(max_lines)
            if found is None:
                return None
            return Batch(found[0], found[1], _DiskToken(self._own, found[2], found[1]))

    def ack(self, token: object) -> None:
        assert isinstance(token, _DiskToken)
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

    @property
    def pending_volatile_lines(self) -> int:
        return 0

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
                _remove(self._own, self._own_fd, self._root_fd)
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
            _refuse(root / name, f"{_what_is(found.st_mode)}, not a process directory", counts)
        elif not _PROCESS_NAME.fullmatch(name):
            _refuse(root / name, "not named as a process directory (<pid>-<8 hex>)", counts)
        else:
            names.append(name)
    return names


def _open_process_directory(root_fd: int, directory: Path, counts: Counts | None) -> int | None:
    """A descriptor of the process directory (never through a link), if it is this user's;
    None (refused) otherwise."""
    try:
        fd = os.open(directory.name, _DIRECTORY_FLAGS, dir_fd=root_fd)
    except FileNotFoundError:
        return None
    except OSError as error:
        _refuse(directory, error.strerror or str(error), counts)
        return None
    owner = os.fstat(fd).st_uid
    if owner != os.geteuid():
        os.close(fd)
        _refuse(directory, f"owned by uid {owner}, not by this user", counts)
        return None
    return fd


def _try_lock(dir_fd: int, create: bool = True) -> int | None:
    """An open, exclusively locked fd on the directory's ``lock`` (a regular file), or None if
    another process has it (or, with ``create`` false, if there is none, or it is not a
    regular file)."""
    try:
        flags = (os.O_RDWR | os.O_CREAT) if create else os.O_RDONLY
        fd = _open_regular(_LOCK_FILE, dir_fd, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _remove(log: _SegmentLog, fd: int, root_fd: int) -> None:
    """Delete the spool's own files of ``log``'s directory, then the directory if that
    emptied it (what the spool refused stays, and so does the directory)."""
    log.close()
    for name in os.listdir(log.dir_fd):
        if name in log.refused:
            continue
        if name in _OWN_FILES or _SEGMENT_NAME.fullmatch(name):
            with contextlib.suppress(OSError):  # gone, or a directory by that name
                os.unlink(name, dir_fd=log.dir_fd)
    with contextlib.suppress(OSError):
        os.rmdir(log.directory.name, dir_fd=root_fd)
    log.release()
    os.close(fd)


def _write_stats(dir_fd: int, counts: Mapping[str, object]) -> None:
    """``counts`` as ``stats.json`` in the directory ``dir_fd``: a new file padded to
    :data:`STATS_RESERVE_BYTES`, atomically; if the disk refuses that, written over the old
    file in place (it then needs no new space). ``OSError`` if neither can be done."""
    data = json.dumps(dict(counts), sort_keys=True).encode()
    try:
        replace_file(_STATS_FILE, dir_fd, data.ljust(STATS_RESERVE_BYTES - 1) + b"\n")
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(f"{_STATS_FILE}.tmp", dir_fd=dir_fd)
        if not _overwrite(dir_fd, data):
            raise error from None


def _overwrite(dir_fd: int, data: bytes) -> bool:
    """Write ``data`` over the start of the existing regular file ``stats.json``, padding it
    with spaces to the file's size (so no new space is needed); False if it is too small or
    missing."""
    try:
        fd = _open_regular(
            _STATS_FILE, dir_fd, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
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


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written; a write that takes nothing is ``ENOSPC``."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]


def _parse(data: bytes, position: int) -> tuple[bytes, int, int] | None:
    """(payload, lines, next position) of the record at ``position``, or None if damaged."""
    end = position + _HEADER.size
    if end > len(data):
        return None
    magic, length, lines, checksum = _HEADER.unpack_from(data, position)
    if magic != _MAGIC or not length or not lines or end + length > len(data):
        return None
    if length > MAX_RECORD_BYTES:
        return None
    body = data[end : end + length]
    if zlib.crc32(body) != checksum:
        return None
    return body, lines, end + length


class FallbackSpool:
    """A disk spool that keeps new records in memory while the disk refuses them (full, gone).

    The first append the disk refuses goes to memory (counted as ``spool_fallback_memory``,
    logged), and so do the next ones; records already on disk are still read first. Once all
    that went to memory was delivered, and at least :data:`DISK_RETRY_INTERVAL` after the
    switch, the next append tries the disk again: one full-disk episode does not leave the
    process without durability. Switching happens under a lock: threads failing together
    share one memory spool.
    """

    def __init__(
        self,
        disk: DiskSpool,
        max_bytes: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        retry_interval: float = DISK_RETRY_INTERVAL,
    ) -> None:
        self.disk = disk
        self.memory = MemorySpool(max_bytes, disk.counts)
        self._clock = clock
        self._retry_interval = retry_interval
        self._init_state()

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._in_memory = False  # new records go to memory
        self._disk_again_at = 0.0
        self._since = 0.0  # time.time() of the switch to memory
        self._reason = ""  # why the disk refused

    @property
    def durable(self) -> bool:
        """True when nothing waits in memory only."""
        return self.memory.pending_lines == 0

    @property
    def pending_volatile_lines(self) -> int:
        """Lines kept in memory because the disk refused them."""
        return self.memory.pending_lines

    @property
    def fallback(self) -> dict[str, object] | None:
        """While new records go to memory: since when (epoch seconds), why, and how many lines
        wait in memory only; else None. For the stats ``otel-luna status`` shows."""
        if not self._in_memory:
            return None
        return {
            "since": self._since,
            "reason": self._reason,
            "pending_lines": self.memory.pending_lines,
        }

    @property
    def counts(self) -> Counts:
        return self.disk.counts  # shared with the memory spool

    def append(self, body: bytes, lines: int) -> None:
        with self._lock:
            retrying = (
                self._in_memory
                and self.memory.pending_lines == 0
                and self._clock() >= self._disk_again_at
            )
            if not self._in_memory or retrying:
                try:
                    self.disk.append(body, lines)
                except SpoolUnavailable as error:
                    self._disk_again_at = self._clock() + self._retry_interval
                    if not self._in_memory:
                        self._in_memory = True
                        self._since, self._reason = time.time(), str(error)
                        self.counts.add(Reason.SPOOL_FALLBACK_MEMORY)
                        _logger.warning("otel-luna spool: %s; keeping points in memory", error)
                else:
                    if retrying:
                        self._in_memory = False
                        _logger.warning("otel-luna spool: %s takes points again", self.directory)
                    return
            self.memory.append(body, lines)

    @property
    def directory(self) -> Path:
        return self.disk.directory

    def read(self, max_lines: int) -> Batch | None:
        batch = self.disk.read(max_lines)
        return batch if batch is not None else self.memory.read(max_lines)

    def ack(self, token: object) -> None:
        if isinstance(token, _DiskToken):
            self.disk.ack(token)
        else:
            self.memory.ack(token)

    @property
    def pending_bytes(self) -> int:
        return self.disk.pending_bytes + self.memory.pending_bytes

    @property
    def pending_lines(self) -> int:
        return self.disk.pending_lines + self.memory.pending_lines

    def close(self) -> None:
        self.disk.close()

    def adopt_orphans(self) -> int:
        return self.disk.adopt_orphans()

    def write_stats(self, counts: Mapping[str, object]) -> None:
        self.disk.write_stats(counts)

    def after_fork_in_child(self) -> None:
        self.disk.after_fork_in_child()
        self.memory.after_fork_in_child()
        self._init_state()


def open_spool(
    kind: str,
    directory: str,
    max_bytes: int,
    *,
    memory_fallback: bool = True,
    retry_interval: float = DISK_RETRY_INTERVAL,
) -> Spool:
    """The spool the settings ask for.

    With ``memory_fallback`` (the exporter inside an app) a disk spool that cannot start, or
    later refuses a write, keeps points in memory: the application never sees an error.
    Without it (``otel-luna serve``) the disk spool is returned bare: an append the disk
    refuses raises :class:`SpoolUnavailable`, and so does a directory that cannot be used.
    """
    if kind == "memory":
        return MemorySpool(max_bytes)
    try:
        disk = DiskSpool(directory, max_bytes)
    except OSError as error:
        if not memory_fallback:
            raise _unavailable(error, "cannot use the spool directory", directory) from error
        _logger.warning(
            "otel-luna spool: cannot use %s (%s); keeping points in memory", directory, error
        )
        spool = MemorySpool(max_bytes)
        spool.counts.add(Reason.SPOOL_FALLBACK_MEMORY)
        return spool
    if not memory_fallback:
        return disk
    return FallbackSpool(disk, max_bytes, retry_interval=retry_interval)


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
                dest_fd = os.open(destination, _DIRECTORY_FLAGS, dir_fd=root_fd)
            except OSError:
                continue
            try:
                for name in _subdirectories(dest_fd):
                    if _PROCESS_NAME.fullmatch(name) and _has_lock(dest_fd, name):
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
        process_fd = os.open(name, _DIRECTORY_FLAGS, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        lock = os.stat(_LOCK_FILE, dir_fd=process_fd, follow_symlinks=False)
        return stat.S_ISREG(lock.st_mode)
    except OSError:
        return False
    finally:
        os.close(process_fd)


def is_process_directory(directory: Path) -> bool:
    """Whether ``directory`` is one process's spool directory (it holds its lock file, a
    regular file)."""
    try:
        return stat.S_ISREG(os.lstat(Path(directory) / _LOCK_FILE).st_mode)
    except OSError:
        return False


def left_behind(refused: Mapping[str, str]) -> dict[str, str]:
    """What of a process directory's ``refused`` names (as :func:`describe` lists them)
    removing the directory leaves in it — all but the spool's own files, which are removed
    whatever they are: the operator must remove those by hand."""
    return {name: why for name, why in refused.items() if name not in _OWN_FILES}


def root_problem(root: Path | str) -> str | None:
    """Why otel-luna would refuse the spool root ``root`` (writable by group or others, or not
    this user's), else None: for ``otel-luna status``."""
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as error:
        return error.strerror or str(error)
    try:
        _check_owned(fd, root)
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
                entries.append(_refused_entry(destination, None, _what_is(found.st_mode)))
                continue
            try:
                dest_fd = os.open(destination, _DIRECTORY_FLAGS, dir_fd=root_fd)
            except OSError as error:
                entries.append(_refused_entry(destination, None, _why(error)))
                continue
            try:
                entries += _describe_destination(Path(root) / destination, dest_fd)
            finally:
                os.close(dest_fd)
    finally:
        os.close(root_fd)
    return entries


def _why(error: OSError) -> str:
    return error.strerror or str(error)


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
        return [_refused_entry(destination.name, None, f"cannot be read: {_why(error)}")]
    if _LOCK_FILE in names and _PROCESS_NAME.fullmatch(destination.name):
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
            problem = f"{_what_is(found.st_mode)}, not a process directory: never followed"
        elif not _PROCESS_NAME.fullmatch(name):
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
        dir_fd = os.open(name, _DIRECTORY_FLAGS, dir_fd=dest_fd)
    except OSError as error:
        return _refused_entry(destination.name, name, f"cannot be opened: {_why(error)}")
    try:
        try:
            lock = _open_regular(_LOCK_FILE, dir_fd)
        except FileNotFoundError:
            running = False
        except OSError as error:
            return _refused_entry(
                destination.name, name, f"its lock file cannot be used: {_why(error)}"
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
        log = _SegmentLog(destination / name, os.dup(dir_fd), counts, quiet=True)
        log.release()
        stats: dict[str, object] = {}
        try:
            stats = read_stats(dir_fd)
        except OSError as error:
            log.refused[_STATS_FILE] = _why(error)
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
        return _refused_entry(destination.name, name, f"cannot be read: {_why(error)}")
    finally:
        os.close(dir_fd)


class GoneDirectory:
    """A process directory whose process is gone, locked as :meth:`DiskSpool.adopt_orphans`
    locks one (for ``otel-luna spool``): while it is held, no process adopts it. What waits in
    it; moved into another destination's directory (where that destination's processes adopt
    it) or removed, as a drained adopted directory is. Get one with :func:`claim_gone`.

    It holds descriptors of its destination's directory, of itself (through its log) and of
    its lock; every operation is relative to them, never through a link."""

    def __init__(self, directory: Path, parent_fd: int, dir_fd: int, lock_fd: int) -> None:
        counts = Counts()
        self._log = _SegmentLog(directory, dir_fd, counts, quiet=True)  # owns dir_fd from here
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
            _remove(self._log, fd, self._parent_fd)
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
        dir_fd = os.open(directory.name, _DIRECTORY_FLAGS, dir_fd=parent_fd)
        owner = os.fstat(dir_fd).st_uid
        if owner != os.geteuid():
            raise PermissionError(errno.EPERM, f"owned by uid {owner}", str(directory))
        lock = _try_lock(dir_fd)  # made if missing, as a process adopting it makes it
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
