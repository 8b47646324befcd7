"""The spool between encoding and the sinks: encoded batches wait here until a sink takes them.

This module is the interface (:class:`Spool`, with defaults for what a spool may add) and its
errors; the spools and their parts are apart:

* :mod:`~otel_luna.delivery._segments` — the record format and the segment files of one
  process directory (:class:`~otel_luna.delivery._segments.SegmentLog`);
* :mod:`~otel_luna.delivery._process_directory` — a process directory's lock, stats and
  removal, and the destination's directory that holds them;
* :mod:`~otel_luna.delivery._disk_spool`, :mod:`~otel_luna.delivery._memory_spool`,
  :mod:`~otel_luna.delivery._fallback_spool` (and :func:`open_spool`) — the spools;
* :mod:`~otel_luna.delivery._spool_status` — reading a spool root for ``otel-luna status``;
* :mod:`otel_luna._files` — the file helpers (no link followed, atomic replace).

Two kinds, one interface:

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
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from otel_luna.outcomes import Counts, Reason
from otel_luna.redact import printable

_logger = logging.getLogger(__name__)

#: The setting that names the spool root, for messages.
_SPOOL_DIR_SETTING = "OTEL_EXPORTER_LUNA_SPOOL_DIR"


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


def unavailable(error: OSError, what: str, directory: Path | str) -> SpoolUnavailable:
    """``error`` as the :class:`SpoolUnavailable` it means (a :class:`SpoolRefused` as it is)."""
    if isinstance(error, SpoolRefused):
        return error
    return SpoolUnavailable(error.errno, f"{what}: {error.strerror or error}", str(directory))


_refused: set[tuple[str, str]] = set()
_refused_lock = threading.Lock()


def refuse(path: Path | str, why: str, counts: Counts | None) -> None:
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


def check_record(body: bytes, lines: int) -> None:
    """``ValueError`` unless ``body`` holds at least one line: a read never hands out none."""
    if not body or lines < 1:
        raise ValueError(
            f"a spool record holds at least one line, not {lines} in {len(body)} bytes"
        )


@dataclass(frozen=True)
class Batch:
    """Records read together: their bodies concatenated, line count, and what to ack."""

    body: bytes
    lines: int
    token: object


class Spool:
    """What delivery asks of a spool. Those that raise ``NotImplementedError`` here every spool
    does; the others are capabilities a spool may have, with defaults for one that has not:
    callers use them all alike, never probing."""

    counts: Counts

    def append(self, body: bytes, lines: int) -> None:
        """Store one record of ``lines`` (≥ 1) lines, or raise :class:`SpoolUnavailable`."""
        raise NotImplementedError

    def read(self, max_lines: int) -> Batch | None:
        """The oldest records not acknowledged, up to ``max_lines`` (at least one record), or
        None when nothing waits."""
        raise NotImplementedError

    def ack(self, token: object) -> None:
        """The records of a :class:`Batch` (its ``token``) were delivered."""
        raise NotImplementedError

    @property
    def pending_bytes(self) -> int:
        """Bytes waiting to be delivered."""
        raise NotImplementedError

    @property
    def pending_lines(self) -> int:
        """Lines waiting to be delivered."""
        raise NotImplementedError

    def after_fork_in_child(self) -> None:
        """In a forked child: a spool of the child's own; the parent keeps its records."""
        raise NotImplementedError

    @property
    def pending_volatile_lines(self) -> int:
        """Lines among ``pending_lines`` held in memory only: lost if the process ends."""
        return 0

    @property
    def durable(self) -> bool:
        """True when every record waiting in the spool survives the process."""
        return self.pending_volatile_lines == 0

    @property
    def directory(self) -> Path | None:
        """The directory this process's records are written to; None in memory."""
        return None

    @property
    def fallback(self) -> dict[str, object] | None:
        """While new records go to memory because the disk refused them: since when, why and
        how many lines wait in memory only; else None."""
        return None

    def adopt_orphans(self) -> int:
        """Take over the records of processes that are gone; the lines adopted."""
        return 0

    def write_stats(self, counts: Mapping[str, object]) -> None:
        """Leave ``counts`` where ``otel-luna status`` reads them (nowhere in memory)."""

    def close(self) -> None:
        """Release what the spool holds (files, locks)."""
