"""Helpers for the spool's tests: drain a spool, end one as a killed process would, a directory
a gone process left behind, a disk that fills up, the records in segment files."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from otel_luna import _files
from otel_luna.delivery import _disk_spool, _process_directory, _segments, _spool_status
from otel_luna.delivery._disk_spool import DiskSpool
from otel_luna.delivery._spool import Spool

#: The modules through which the spool touches the disk: a fake ``os`` goes into each.
DISK_MODULES = (_files, _segments, _process_directory, _disk_spool, _spool_status)


def drain(spool: Spool, max_lines: int = 1000) -> list[bytes]:
    """Read and ack until the spool is empty; every batch must carry lines."""
    bodies = []
    while (batch := spool.read(max_lines)) is not None:
        assert batch.body and batch.lines > 0
        bodies.append(batch.body)
        spool.ack(batch.token)
    return bodies


def die(spool: DiskSpool) -> None:
    """As if the process were killed: the directory stays, its lock is released."""
    spool._own.close()
    os.close(spool._own_fd)


def dead_directory(root: Path, *bodies: bytes) -> Path:
    """A process directory left in ``root`` by a process that is gone, holding ``bodies``
    (made beside it, so that no spool adopts the ones made before)."""
    spool = DiskSpool(root.parent / f"making-{os.urandom(4).hex()}", max_bytes=10**8)
    for body in bodies:
        spool.append(body, body.count(b"\n"))
    die(spool)
    root.mkdir(mode=0o700, exist_ok=True)
    return spool.directory.rename(root / spool.directory.name)


def segment_bodies(root: Path) -> list[bytes]:
    """The bodies of the whole records in the segment files under ``root`` (acknowledged ones
    included), in file order."""
    bodies = []
    for segment in sorted(root.rglob("*.seg")):
        data, position = segment.read_bytes(), 0
        while (record := _segments.parse_record(data, position)) is not None:
            body, _, position = record
            bodies.append(body)
    return bodies


def use_disk(monkeypatch: pytest.MonkeyPatch, fake_os: Any) -> None:
    """The spool (and whatever writes through :mod:`otel_luna._files`) sees ``fake_os`` as
    ``os``, for this test."""
    for module in DISK_MODULES:
        monkeypatch.setattr(module, "os", fake_os)


class DiskFaults:
    """``os`` for the spool modules with a disk that fills up: ``room`` bytes more are
    taken (a write that does not fit is cut short, the next one fails with ENOSPC; None: no
    limit), each write takes at most ``max_write`` bytes, and ``ftruncate`` fails when
    ``truncate_fails``. Everything else is the real ``os``."""

    def __init__(self) -> None:
        self.room: int | None = None
        self.max_write: int | None = None
        self.truncate_fails = False
        self.writes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: bytes) -> int:
        self.writes += 1
        data = bytes(data)
        if self.room is not None:
            if self.room == 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            data = data[: self.room]
        if self.max_write is not None:
            data = data[: self.max_write]
        written = os.write(fd, data)
        if self.room is not None:
            self.room -= written
        return written

    def ftruncate(self, fd: int, length: int) -> None:
        if self.truncate_fails:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        os.ftruncate(fd, length)
