"""What a process directory holds, and :class:`SegmentLog`, which writes and reads it.

A process directory (``<pid>-<8 hex>``) holds its records in segment files,
``<20 digits>.seg``, rolled over past :data:`SEGMENT_BYTES`; an ``ack`` file with the read
position (segment and offset); a ``lock`` its process holds; ``stats.json``
(:mod:`~otel_luna.delivery._process_directory`).
A record is a header (magic, payload length, line count, CRC-32 of the payload) and the
payload: whole lines. A torn or corrupt record ends its segment: counted, skipped, never a
crash. Every file is opened relative to the directory's descriptor, never through a link.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat
import struct
import zlib
from pathlib import Path
from typing import Any

from otel_luna._files import error_text, open_regular, read_small, replace_file, what_is, write_all
from otel_luna.delivery._spool import SpoolUnavailable, check_record, refuse, unavailable
from otel_luna.outcomes import Counts, Reason

_logger = logging.getLogger(__name__)

HEADER = struct.Struct("<4sIII")  # magic, payload length, line count, crc32 of payload
_MAGIC = b"OLS1"
_SEGMENT_SUFFIX = ".seg"
ACK_FILE = "ack"
LOCK_FILE = "lock"
STATS_FILE = "stats.json"
#: The only names a process directory holds besides its segments; nothing else is touched.
OWN_FILES = frozenset({ACK_FILE, f"{ACK_FILE}.tmp", LOCK_FILE, STATS_FILE, f"{STATS_FILE}.tmp"})
#: A process directory: ``<pid>-<8 hex digits>`` (``.`` in front while it is being made).
PROCESS_NAME = re.compile(r"[0-9]{1,10}-[0-9a-f]{8}")
#: A segment: its number in 20 digits.
SEGMENT_NAME = re.compile(r"[0-9]{20}\.seg")
#: Segment files roll over past this size.
SEGMENT_BYTES = 8 * 1024 * 1024
#: Bytes of a segment read at once for a batch (more only for a record larger than that).
READ_AHEAD = 1024 * 1024
#: Largest record payload: bigger is refused on append (:class:`SpoolUnavailable`) and read as
#: damage. A record holds at most one batch of lines.
MAX_RECORD_BYTES = 256 * 1024 * 1024


class SegmentLog:
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
        return max(self._segment_bytes, SEGMENT_BYTES) + HEADER.size + MAX_RECORD_BYTES

    def _list_segments(self) -> list[int]:
        numbers = []
        for name in os.listdir(self.dir_fd):
            if name in OWN_FILES:
                continue
            why = "not a file of the spool"
            if SEGMENT_NAME.fullmatch(name):
                try:
                    found = os.stat(name, dir_fd=self.dir_fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(found.st_mode):
                    why = f"a segment that is {what_is(found.st_mode)}"
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
            refuse(self.directory / name, why, self._counts)

    def _open_segment(self, number: int) -> int:
        """The segment's descriptor (a regular file, opened without following a link)."""
        return open_regular(_segment_name(number), self.dir_fd)

    def _load_ack(self) -> tuple[int, int]:
        try:
            segment, offset = (int(part) for part in read_small(ACK_FILE, self.dir_fd, 64).split())
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
                ACK_FILE, self.dir_fd, f"{self.read_segment} {self.read_offset}\n".encode()
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
            self._refuse(_segment_name(number), error_text(error))
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
        check_record(body, lines)
        if len(body) > MAX_RECORD_BYTES:  # it would read back as damage
            raise SpoolUnavailable(
                errno.EFBIG,
                f"a record of {len(body)} bytes is larger than {MAX_RECORD_BYTES}",
                str(self.directory),
            )
        record = HEADER.pack(_MAGIC, len(body), lines, zlib.crc32(body)) + body
        try:
            try:
                number = self._write(record)
            except OSError:
                if not self._free_delivered():
                    raise
                number = self._write(record)
        except OSError as error:
            raise unavailable(error, "cannot append to the spool", self.directory) from error
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
        self._write_fd = open_regular(_segment_name(number), self.dir_fd, flags | os.O_CLOEXEC)
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
                record = parse_record(data, position)
                if record is None:
                    if start + len(data) >= available:
                        break  # the end of what was written, or damage
                    rest = len(data) - position  # a record cut at the end of the piece
                    want = HEADER.size
                    if rest >= HEADER.size:
                        length = HEADER.unpack_from(data, position)[1]
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
    header = file.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    magic, length, lines, checksum = HEADER.unpack(header)
    total = HEADER.size + length
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


def parse_record(data: bytes, position: int) -> tuple[bytes, int, int] | None:
    """(payload, lines, next position) of the record at ``position``, or None if damaged."""
    end = position + HEADER.size
    if end > len(data):
        return None
    magic, length, lines, checksum = HEADER.unpack_from(data, position)
    if magic != _MAGIC or not length or not lines or end + length > len(data):
        return None
    if length > MAX_RECORD_BYTES:
        return None
    body = data[end : end + length]
    if zlib.crc32(body) != checksum:
        return None
    return body, lines, end + length
