"""The spool the settings ask for (:func:`open_spool`), and :class:`FallbackSpool`: a disk spool
that keeps new records in memory while the disk refuses them."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from otel_luna.delivery._disk_spool import DiskSpool, DiskToken
from otel_luna.delivery._memory_spool import MemorySpool
from otel_luna.delivery._spool import Batch, Spool, SpoolUnavailable, unavailable
from otel_luna.outcomes import Reason

_logger = logging.getLogger(__name__)

#: (and only once what it kept in memory was delivered).
DISK_RETRY_INTERVAL = 5.0
#: Bytes ``stats.json`` keeps, so that it can be rewritten in place on a full disk.


class FallbackSpool(Spool):
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
        self.counts = disk.counts  # shared with the memory spool
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
        if isinstance(token, DiskToken):
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
            raise unavailable(error, "cannot use the spool directory", directory) from error
        _logger.warning(
            "otel-luna spool: cannot use %s (%s); keeping points in memory", directory, error
        )
        spool = MemorySpool(max_bytes)
        spool.counts.add(Reason.SPOOL_FALLBACK_MEMORY)
        return spool
    if not memory_fallback:
        return disk
    return FallbackSpool(disk, max_bytes, retry_interval=retry_interval)
