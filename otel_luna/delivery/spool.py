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
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from otel_luna.outcomes import Counts, Reason

_logger = logging.getLogger(__name__)

_HEADER = struct.Struct("<4sIII")  # magic, payload length, line count, crc32 of payload
_MAGIC = b"OLS1"
_SEGMENT_SUFFIX = ".seg"
_ACK_FILE = "ack"
_LOCK_FILE = "lock"
_STATS_FILE = "stats.json"
#: Segment files roll over past this size.
SEGMENT_BYTES = 8 * 1024 * 1024
#: Bytes of a segment read at once for a batch (more only for a record larger than that).
READ_AHEAD = 1024 * 1024
#: Seconds a :class:`FallbackSpool` keeps new records in memory before trying the disk again
#: (and only once what it kept in memory was delivered).
DISK_RETRY_INTERVAL = 5.0
#: Bytes ``stats.json`` keeps, so that it can be rewritten in place on a full disk.
STATS_RESERVE_BYTES = 4096


class SpoolUnavailable(OSError):
    """The spool cannot take a record now (the disk refused it); nothing of it was stored.

    ``errno`` is the disk's error (``ENOSPC`` …); ``filename`` the spool directory.
    """


def _unavailable(error: OSError, what: str, directory: Path | str) -> SpoolUnavailable:
    return SpoolUnavailable(error.errno, f"{what}: {error.strerror or error}", str(directory))


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
    """The records of one directory: ``<n>.seg`` files and an ``ack`` file (segment, offset)."""

    def __init__(self, directory: Path, counts: Counts, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = directory
        self._counts = counts
        self._segment_bytes = segment_bytes
        self._ack_write_errors = 0
        self.segments = sorted(
            int(path.stem) for path in directory.glob(f"*{_SEGMENT_SUFFIX}") if path.stem.isdigit()
        )
        self.read_segment, self.read_offset = self._load_ack()
        self.segments = [n for n in self.segments if n >= self.read_segment]
        self.pending_bytes = 0
        self.pending_lines = 0
        self._read_lines = 0  # lines acked in read_segment since read_offset was loaded
        self._sizes: dict[int, int] = {}
        self._lines: dict[int, int] = {}
        self._write_fd: int | None = None
        self.reading: int | None = None  # segment of the batch handed out and not yet acked
        for number in self.segments:
            self._scan(number)

    # -- state on disk ----------------------------------------------------------------------

    def _path(self, number: int) -> Path:
        return self.directory / f"{number:020d}{_SEGMENT_SUFFIX}"

    def _load_ack(self) -> tuple[int, int]:
        try:
            segment, offset = (
                int(part) for part in (self.directory / _ACK_FILE).read_text().split()
            )
            if segment < 0 or offset < 0:
                raise ValueError("a negative position")
            return segment, offset
        except (OSError, ValueError):  # gone or damaged: replay the directory from its start
            return (self.segments[0] if self.segments else 0), 0

    def _store_ack(self) -> None:
        """Persist the read position; if the disk refuses, it lives on in memory (counted):
        the worst outcome is a replay after a restart, never a stalled writer."""
        temporary = self.directory / f"{_ACK_FILE}.tmp"
        try:
            temporary.write_text(f"{self.read_segment} {self.read_offset}\n")
            os.replace(temporary, self.directory / _ACK_FILE)
        except OSError as error:
            self._ack_write_errors += 1
            self._counts.add(Reason.ACK_WRITE_ERRORS)
            if self._ack_write_errors == 1:
                _logger.warning(
                    "otel-luna spool: cannot record progress in %s: %s", self.directory, error
                )

    def _scan(self, number: int) -> None:
        """Count the valid records of a segment; a torn or corrupt tail is cut off and counted."""
        data = self._path(number).read_bytes()
        offset = self.read_offset if number == self.read_segment else 0
        valid_end, lines, records = offset, 0, 0
        while valid_end < len(data):
            record = _parse(data, valid_end)
            if record is None:
                self._counts.add(Reason.CORRUPT_RECORDS)
                _logger.warning(
                    "otel-luna spool: %s is damaged at byte %d; skipping the rest of it",
                    self._path(number),
                    valid_end,
                )
                break
            _, count, end = record
            lines += count
            records += 1
            valid_end = end
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
        self._write_fd = os.open(self._path(number), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
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
            file = open(self._path(number), "rb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:
            return bodies, 0, 0  # removed behind our back: as damaged as it gets
        with file:
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
                        want += _HEADER.unpack_from(data, position)[1]
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
            self._path(number).unlink()
        if self.read_segment == number:
            self.read_segment = self.segments[0] if self.segments else number + 1
            self.read_offset = self._read_lines = 0

    def close(self) -> None:
        if self._write_fd is not None:
            os.close(self._write_fd)
            self._write_fd = None


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
        self.root.mkdir(parents=True, exist_ok=True)
        self._adopted: list[tuple[_SegmentLog, int]] = []
        self.adopt_orphans()
        self._own, self._own_fd = self._new_own()

    def adopt_orphans(self) -> int:
        """Take over the directories of processes that are gone; returns the lines adopted.

        Called at start and periodically by the writer, so what a forked child spooled and
        did not deliver before it exited is delivered by a living process.
        """
        adopted = 0
        for directory in _process_directories(self.root):
            fd = _try_lock(directory)
            if fd is None:
                continue
            log = _SegmentLog(directory, self.counts, self._segment_bytes)
            if log.pending_lines:
                with self._lock:
                    self._adopted.append((log, fd))
                adopted += log.pending_lines
                _logger.warning(
                    "otel-luna spool: replaying %d lines left in %s", log.pending_lines, directory
                )
            else:
                _remove(log, fd)
        return adopted

    def _new_own(self) -> tuple[_SegmentLog, int]:
        # Made and locked under a hidden name, then renamed: no other process ever sees it
        # unlocked (and adopts or removes it) between mkdir and lock.
        name = f"{os.getpid()}-{os.urandom(4).hex()}"
        hidden = self.root / f".{name}"
        hidden.mkdir(mode=0o700)
        fd = _try_lock(hidden)
        if fd is None:  # pragma: no cover - a fresh directory nobody else knows
            raise OSError(f"cannot lock {hidden}")
        with contextlib.suppress(OSError):  # its room, while there is some
            _write_stats(hidden, {})
        directory = self.root / name
        try:
            hidden.rename(directory)
        except OSError:
            os.close(fd)
            raise
        return _SegmentLog(directory, self.counts, self._segment_bytes), fd

    def after_fork_in_child(self) -> None:
        """A forked child gets a directory of its own; the parent keeps its records. A closed
        spool stays closed (its descriptors may be other files' by now)."""
        if self._closed:
            return
        for _, fd in self._adopted:
            os.close(fd)
        self._own.close()
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
        _write_stats(self._own.directory, counts)

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
            _remove(log, fd)
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
                _remove(log, fd)
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
                log.close()
                os.close(fd)
            self._adopted = []
            if self._own.pending_lines == 0:
                _remove(self._own, self._own_fd)
            else:
                self._own.close()
                os.close(self._own_fd)


def _process_directories(root: Path) -> list[Path]:
    """The process directories under a destination's spool root (not those being made)."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _try_lock(directory: Path, create: bool = True) -> int | None:
    """An open, exclusively locked fd on ``directory/lock``, or None if another process has it
    (or, with ``create`` false, if there is no lock file)."""
    try:
        flags = os.O_RDWR | (os.O_CREAT if create else 0)
        fd = os.open(directory / _LOCK_FILE, flags, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _remove(log: _SegmentLog, fd: int) -> None:
    log.close()
    for path in log.directory.iterdir():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    with contextlib.suppress(OSError):
        log.directory.rmdir()
    os.close(fd)


def _write_stats(directory: Path, counts: Mapping[str, object]) -> None:
    """``counts`` as ``directory/stats.json``: a new file padded to
    :data:`STATS_RESERVE_BYTES`, atomically; if the disk refuses that, written over the old
    file in place (it then needs no new space). ``OSError`` if neither can be done."""
    data = json.dumps(dict(counts), sort_keys=True).encode()
    path = directory / _STATS_FILE
    temporary = directory / f"{_STATS_FILE}.tmp"
    try:
        temporary.write_bytes(data.ljust(STATS_RESERVE_BYTES - 1) + b"\n")
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            temporary.unlink()
        if not _overwrite(path, data):
            raise error from None


def _overwrite(path: Path, data: bytes) -> bool:
    """Write ``data`` over the start of the existing file ``path``, padding it with spaces to
    the file's size (so no new space is needed); False if it is too small or missing."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
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
    holding its lock file); directories that cannot be read, or hold no lock file, are none."""
    found: list[Path] = []
    try:
        destinations = sorted(p for p in Path(root).iterdir() if p.is_dir())
    except OSError:
        return found
    for destination in destinations:
        try:
            directories = _process_directories(destination)
        except OSError:
            continue
        found += [d for d in directories if is_process_directory(d)]
    return found


def is_process_directory(directory: Path) -> bool:
    """Whether ``directory`` is one process's spool directory (it holds its lock file)."""
    return (directory / _LOCK_FILE).is_file()


def describe(root: Path | str) -> list[dict[str, object]]:
    """What waits under a spool root: one entry per process directory, for ``otel-luna status``.

    Reads only; a directory whose process is gone is briefly locked to tell it apart from a
    live one, and left as it is.
    """
    entries: list[dict[str, object]] = []
    for directory in process_directories(root):
        destination = directory.parent
        fd = _try_lock(directory, create=False)
        if fd is not None:
            os.close(fd)
        counts = Counts()
        try:
            log = _SegmentLog(directory, counts)
        except OSError:  # unreadable: not ours to describe
            continue
        try:
            stats = json.loads((directory / _STATS_FILE).read_text())
        except (OSError, ValueError):
            stats = {}
        if not isinstance(stats, dict):
            stats = {}
        entries.append(
            {
                "destination": destination.name,
                "process": directory.name,
                "running": fd is None,
                "pending_lines": log.pending_lines,
                "pending_bytes": log.pending_bytes,
                "corrupt_records": counts["corrupt_records"],
                "counts": stats,
            }
        )
    return entries


class GoneDirectory:
    """A process directory whose process is gone, locked as :meth:`DiskSpool.adopt_orphans`
    locks one (for ``otel-luna spool``): while it is held, no process adopts it. What waits in
    it; moved into another destination's directory (where that destination's processes adopt
    it) or removed, as a drained adopted directory is. Get one with :func:`claim_gone`."""

    def __init__(self, directory: Path, fd: int) -> None:
        self.directory = directory
        self._fd: int | None = fd
        counts = Counts()
        self._log = _SegmentLog(directory, counts)
        self.pending_lines = self._log.pending_lines
        self.pending_bytes = self._log.pending_bytes
        self.corrupt_records = counts["corrupt_records"]

    def move_to(self, destination: Path) -> Path:
        """Rename it into ``destination`` (a destination's directory, made 0700 if missing) on
        the same file system, keeping its name and the lock; its new path."""
        destination.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = destination / self.directory.name
        if target.exists():
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
        os.rename(self.directory, target)
        self.directory = self._log.directory = target
        return target

    def discard(self) -> None:
        """Remove it and everything in it (its points are lost); releases it."""
        fd, self._fd = self._fd, None
        if fd is not None:
            _remove(self._log, fd)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            self._log.close()
            os.close(fd)

    def __enter__(self) -> GoneDirectory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def claim_gone(directory: Path) -> GoneDirectory | None:
    """``directory`` (a process directory) locked if its process — or a process that adopted
    it — is gone; None while one is alive (then it must not be touched)."""
    fd = _try_lock(directory, create=False)
    if fd is None:
        return None
    try:
        return GoneDirectory(directory, fd)
    except BaseException:
        os.close(fd)
        raise
