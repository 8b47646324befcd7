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
acknowledged up to a position once a sink has taken them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import struct
import threading
import zlib
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

_logger = logging.getLogger(__name__)

_HEADER = struct.Struct("<4sIII")  # magic, payload length, line count, crc32 of payload
_MAGIC = b"OLS1"
_SEGMENT_SUFFIX = ".seg"
_ACK_FILE = "ack"
_LOCK_FILE = "lock"
_STATS_FILE = "stats.json"
#: Segment files roll over past this size.
SEGMENT_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Batch:
    """Records read together: their bodies concatenated, line count, and what to ack."""

    body: bytes
    lines: int
    token: object


class Spool(Protocol):
    @property
    def counts(self) -> Counter[str]: ...

    @property
    def durable(self) -> bool:
        """True when appended records survive the process."""

    def append(self, body: bytes, lines: int) -> None: ...

    def read(self, max_lines: int) -> Batch | None: ...

    def ack(self, token: object) -> None: ...

    @property
    def pending_bytes(self) -> int: ...

    @property
    def pending_lines(self) -> int: ...

    def close(self) -> None: ...

    def adopt_orphans(self) -> int: ...

    def write_stats(self, counts: dict[str, int]) -> None: ...

    def after_fork_in_child(self) -> None: ...


class MemorySpool:
    """A bounded in-memory queue of encoded records."""

    durable = False

    def __init__(self, max_bytes: int) -> None:
        self.counts: Counter[str] = Counter()
        self.max_bytes = max_bytes
        self._records: deque[tuple[bytes, int]] = deque()
        self._bytes = 0
        self._lines = 0
        self._reading = 0  # records handed out by read() and not yet acked
        self._lock = threading.Lock()

    def append(self, body: bytes, lines: int) -> None:
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
                self.counts["dropped_spool_full"] += old_lines

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

    def close(self) -> None:
        pass

    def adopt_orphans(self) -> int:
        return 0

    def write_stats(self, counts: dict[str, int]) -> None:
        pass  # nothing on disk to show

    def after_fork_in_child(self) -> None:
        """The parent keeps the records; the child starts empty."""
        self.__init__(self.max_bytes)  # type: ignore[misc]


class _SegmentLog:
    """The records of one directory: ``<n>.seg`` files and an ``ack`` file (segment, offset)."""

    def __init__(self, directory: Path, counts: Counter[str]) -> None:
        self.directory = directory
        self._counts = counts
        self.segments = sorted(
            int(path.stem) for path in directory.glob(f"*{_SEGMENT_SUFFIX}") if path.stem.isdigit()
        )
        self.read_segment, self.read_offset = self._load_ack()
        self.segments = [n for n in self.segments if n >= self.read_segment]
        self.pending_bytes = 0
        self.pending_lines = 0
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
            segment, offset = (self.directory / _ACK_FILE).read_text().split()
            return int(segment), int(offset)
        except (OSError, ValueError):
            return (self.segments[0] if self.segments else 0), 0

    def _store_ack(self) -> None:
        """Persist the read position; if the disk refuses, it lives on in memory (counted):
        the worst outcome is a replay after a restart, never a stalled writer."""
        temporary = self.directory / f"{_ACK_FILE}.tmp"
        try:
            temporary.write_text(f"{self.read_segment} {self.read_offset}\n")
            os.replace(temporary, self.directory / _ACK_FILE)
        except OSError as error:
            self._counts["ack_write_errors"] += 1
            if self._counts["ack_write_errors"] == 1:
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
                self._counts["corrupt_records"] += 1
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
        self._counts["replayed_lines"] += lines

    # -- appending --------------------------------------------------------------------------

    def append(self, body: bytes, lines: int) -> None:
        if self._write_fd is None or self._sizes[self.segments[-1]] >= SEGMENT_BYTES:
            self._roll()
        number = self.segments[-1]
        record = _HEADER.pack(_MAGIC, len(body), lines, zlib.crc32(body)) + body
        assert self._write_fd is not None
        os.write(self._write_fd, record)
        self._sizes[number] += len(record)
        self._lines[number] += lines
        self.pending_bytes += len(record)
        self.pending_lines += lines

    def _roll(self) -> None:
        if self._write_fd is not None:
            os.close(self._write_fd)
        number = (self.segments[-1] + 1) if self.segments else max(1, self.read_segment)
        self._write_fd = os.open(self._path(number), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.segments.append(number)
        self._sizes[number] = 0
        self._lines[number] = 0
        if len(self.segments) == 1:
            self.read_segment, self.read_offset = number, 0

    # -- reading ----------------------------------------------------------------------------

    def read(self, max_lines: int) -> tuple[bytes, int, tuple[int, int]] | None:
        """Records from the read position, up to ``max_lines`` (at least one record)."""
        while self.segments:
            number = self.read_segment
            end = self._sizes.get(number, 0)
            if self.read_offset < end:
                break
            if number == self.segments[-1]:
                return None
            self._drop_segment(number)
        else:
            return None
        with open(self._path(number), "rb") as file:
            file.seek(self.read_offset)
            data = file.read(end - self.read_offset)
        bodies: list[bytes] = []
        lines, position = 0, 0
        while position < len(data):
            record = _parse(data, position)
            if record is None:  # cannot happen for scanned/appended bytes; be safe
                self._counts["corrupt_records"] += 1
                position = len(data)
                break
            body, count, next_position = record
            if bodies and lines + count > max_lines:
                break
            bodies.append(body)
            lines += count
            position = next_position
        self.reading = number
        return b"".join(bodies), lines, (number, self.read_offset + position)

    def ack(self, upto: tuple[int, int], lines: int) -> None:
        number, offset = upto
        self.reading = None
        if number != self.read_segment or number not in self.segments:
            return  # its segment was given up meanwhile (spool full): already accounted for
        self.pending_bytes -= offset - self.read_offset  # read() stays within one segment
        self.pending_lines -= lines
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
        unread = self._sizes[number] - (self.read_offset if number == self.read_segment else 0)
        self.pending_bytes -= unread
        dropped = self._lines[number] if number != self.read_segment else self._unread_lines(number)
        self.pending_lines -= dropped
        self._drop_segment(number)
        self._store_ack()
        return dropped

    def _unread_lines(self, number: int) -> int:
        data = self._path(number).read_bytes()
        lines, position = 0, self.read_offset
        while (record := _parse(data, position)) is not None:
            lines += record[1]
            position = record[2]
        return lines

    def _drop_segment(self, number: int) -> None:
        if number in self.segments:
            self.segments.remove(number)
        self._sizes.pop(number, None)
        self._lines.pop(number, None)
        with contextlib.suppress(FileNotFoundError):
            self._path(number).unlink()
        if self.read_segment == number:
            self.read_segment = self.segments[0] if self.segments else number + 1
            self.read_offset = 0

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

    def __init__(self, root: Path | str, max_bytes: int) -> None:
        self.root = Path(root)
        self.counts: Counter[str] = Counter()
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
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
        for directory in sorted(p for p in self.root.iterdir() if p.is_dir()):
            fd = _try_lock(directory)
            if fd is None:
                continue
            log = _SegmentLog(directory, self.counts)
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
        directory = self.root / f"{os.getpid()}-{os.urandom(4).hex()}"
        directory.mkdir(mode=0o700)
        fd = _try_lock(directory)
        if fd is None:  # pragma: no cover - a fresh directory nobody else knows
            raise OSError(f"cannot lock {directory}")
        return _SegmentLog(directory, self.counts), fd

    def after_fork_in_child(self) -> None:
        """A forked child gets a directory of its own; the parent keeps its records."""
        for _, fd in self._adopted:
            os.close(fd)
        self._own.close()
        os.close(self._own_fd)
        self._lock = threading.Lock()
        self.counts = Counter()
        self._adopted = []
        self._own, self._own_fd = self._new_own()

    @property
    def directory(self) -> Path:
        return self._own.directory

    def write_stats(self, counts: dict[str, int]) -> None:
        """Leave this process's counters beside its records, for ``otel-luna status``."""
        temporary = self._own.directory / f"{_STATS_FILE}.tmp"
        temporary.write_text(json.dumps(counts, sort_keys=True))
        os.replace(temporary, self._own.directory / _STATS_FILE)

    def append(self, body: bytes, lines: int) -> None:
        with self._lock:
            self._own.append(body, lines)
            while self._pending_bytes() > self._max_bytes:
                dropped = self._drop_oldest()
                if dropped is None:
                    break
                self.counts["dropped_spool_full"] += dropped
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

    def close(self) -> None:
        """Release the directory; it is removed if nothing waits in it."""
        with self._lock:
            for log, fd in self._adopted:
                log.close()
                os.close(fd)
            self._adopted = []
            if self._own.pending_lines == 0:
                _remove(self._own, self._own_fd)
            else:
                self._own.close()
                os.close(self._own_fd)


def _try_lock(directory: Path) -> int | None:
    """An open, exclusively locked fd on ``directory/lock``, or None if another process has it."""
    try:
        fd = os.open(directory / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
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


def _parse(data: bytes, position: int) -> tuple[bytes, int, int] | None:
    """(payload, lines, next position) of the record at ``position``, or None if damaged."""
    end = position + _HEADER.size
    if end > len(data):
        return None
    magic, length, lines, checksum = _HEADER.unpack_from(data, position)
    if magic != _MAGIC or end + length > len(data):
        return None
    body = data[end : end + length]
    if zlib.crc32(body) != checksum:
        return None
    return body, lines, end + length


class FallbackSpool:
    """A disk spool that falls back to memory when the disk stops taking writes (full, gone).

    Records already on disk are still read first; new ones go to memory from the first failed
    append on (counted as ``spool_fallback_memory``, logged once).
    """

    def __init__(self, disk: DiskSpool, max_bytes: int) -> None:
        self.disk = disk
        self.memory: MemorySpool | None = None
        self._max_bytes = max_bytes

    @property
    def durable(self) -> bool:
        return self.memory is None

    @property
    def counts(self) -> Counter[str]:
        total = Counter(self.disk.counts)
        if self.memory is not None:
            total.update(self.memory.counts)
            total["spool_fallback_memory"] = 1
        return total

    def append(self, body: bytes, lines: int) -> None:
        if self.memory is None:
            try:
                self.disk.append(body, lines)
                return
            except OSError as error:
                _logger.warning(
                    "otel-luna spool: cannot write to %s (%s); keeping points in memory",
                    self.disk.directory,
                    error,
                )
                self.memory = MemorySpool(self._max_bytes)
        self.memory.append(body, lines)

    def read(self, max_lines: int) -> Batch | None:
        batch = self.disk.read(max_lines)
        if batch is None and self.memory is not None:
            batch = self.memory.read(max_lines)
        return batch

    def ack(self, token: object) -> None:
        if isinstance(token, _DiskToken):
            self.disk.ack(token)
        elif self.memory is not None:
            self.memory.ack(token)

    @property
    def pending_bytes(self) -> int:
        memory = self.memory.pending_bytes if self.memory is not None else 0
        return self.disk.pending_bytes + memory

    @property
    def pending_lines(self) -> int:
        memory = self.memory.pending_lines if self.memory is not None else 0
        return self.disk.pending_lines + memory

    def close(self) -> None:
        self.disk.close()

    def adopt_orphans(self) -> int:
        return self.disk.adopt_orphans()

    def write_stats(self, counts: dict[str, int]) -> None:
        if self.memory is None:
            self.disk.write_stats(counts)

    def after_fork_in_child(self) -> None:
        self.disk.after_fork_in_child()
        self.memory = None


def open_spool(kind: str, directory: str, max_bytes: int) -> Spool:
    """The spool the settings ask for; a disk spool that cannot start falls back to memory."""
    if kind == "memory":
        return MemorySpool(max_bytes)
    try:
        return FallbackSpool(DiskSpool(directory, max_bytes), max_bytes)
    except OSError as error:
        _logger.warning(
            "otel-luna spool: cannot use %s (%s); keeping points in memory", directory, error
        )
        spool = MemorySpool(max_bytes)
        spool.counts["spool_fallback_memory"] = 1
        return spool


def describe(root: Path | str) -> list[dict[str, object]]:
    """What waits under a spool root: one entry per process directory, for ``otel-luna status``.

    Reads only; a directory whose process is gone is briefly locked to tell it apart from a
    live one, and left as it is.
    """
    entries: list[dict[str, object]] = []
    root = Path(root)
    if not root.is_dir():
        return entries
    for destination in sorted(p for p in root.iterdir() if p.is_dir()):
        for directory in sorted(p for p in destination.iterdir() if p.is_dir()):
            fd = _try_lock(directory)
            if fd is not None:
                os.close(fd)
            counts: Counter[str] = Counter()
            log = _SegmentLog(directory, counts)
            try:
                stats = json.loads((directory / _STATS_FILE).read_text())
            except (OSError, ValueError):
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
