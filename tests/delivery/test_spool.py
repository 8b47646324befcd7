"""The spool: order, acknowledgement, replay after a crash, damage, bounds, shared directories,
short and refused writes, the memory fallback and its return to the disk."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from otel_luna.delivery import _segments
from otel_luna.delivery._disk_spool import DiskSpool
from otel_luna.delivery._fallback_spool import DISK_RETRY_INTERVAL, FallbackSpool, open_spool
from otel_luna.delivery._memory_spool import MemorySpool
from otel_luna.delivery._process_directory import STATS_RESERVE_BYTES
from otel_luna.delivery._spool import SpoolUnavailable
from otel_luna.delivery._spool_status import describe
from tests.support.spoolhelpers import DiskFaults, die, drain, use_disk

RECORD_HEADER = _segments.HEADER.size


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> DiskFaults:
    faults = DiskFaults()
    use_disk(monkeypatch, faults)
    return faults


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record_size(body: bytes) -> int:
    return RECORD_HEADER + len(body)


def segment_bytes(directory: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(directory.glob("*.seg")))


@pytest.fixture(params=["disk", "memory"])
def any_spool(request: pytest.FixtureRequest, tmp_path: Path) -> DiskSpool | MemorySpool:
    if request.param == "disk":
        return DiskSpool(tmp_path / "spool", max_bytes=10**8)
    return MemorySpool(max_bytes=10**8)


def test_reads_in_order_and_batches_by_lines(any_spool: DiskSpool | MemorySpool) -> None:
    """Records come back in order, several per batch up to max_lines, each once."""
    for index in range(10):
        any_spool.append(f"m x={index}i\nm y={index}i\n".encode(), 2)
    batch = any_spool.read(5)
    assert batch is not None and batch.lines == 4  # whole records only
    assert any_spool.read(5) == batch  # unacked: read again
    any_spool.ack(batch.token)
    rest = b"".join(drain(any_spool))
    assert batch.body + rest == b"".join(f"m x={i}i\nm y={i}i\n".encode() for i in range(10))
    assert any_spool.pending_lines == 0 and any_spool.pending_bytes == 0


@pytest.mark.parametrize("seed", range(4))
def test_a_batch_reads_pieces_of_its_segment_and_records_cut_between_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """A batch reads its segment a piece at a time, not to the end: records cut at the end of
    a piece, and records larger than a piece, come back whole, in order, each once; a damaged
    record after them still ends its segment."""
    import random

    monkeypatch.setattr(_segments, "READ_AHEAD", 300)
    rng = random.Random(seed)
    spool = DiskSpool(tmp_path / "spool", max_bytes=10**8, segment_bytes=20_000)
    sent: list[bytes] = []
    got: list[bytes] = []
    for index in range(400):
        lines = rng.randint(1, 3)
        pad = b"p" * (rng.randint(300, 2000) if rng.random() < 0.1 else rng.randint(0, 30))
        body = b"".join(b'm f="%s" %d\n' % (pad, index) for _ in range(lines))
        spool.append(body, lines)
        sent.append(body)
        if rng.random() < 0.2:
            got += drain(spool, max_lines=rng.randint(1, 10))
    got += drain(spool, max_lines=7)
    assert b"".join(got) == b"".join(sent)
    assert spool.counts["corrupt_records"] == 0
    for index in range(3):
        spool.append(b"m x=%di\n" % index + b"q" * 400 + b"\n", 1)
    segment = sorted(spool.directory.glob("*.seg"))[-1]
    data = bytearray(segment.read_bytes())
    data[-5] ^= 0xFF  # the last record, in another piece than the first
    segment.write_bytes(bytes(data))
    assert len(drain(spool, max_lines=1)) == 2
    assert spool.counts["corrupt_records"] == 1 and spool.counts["dropped_corrupt"] == 1
    spool.close()


@pytest.mark.slow  # a child process
def test_unacked_records_replay_after_restart(tmp_path: Path) -> None:
    """A new spool on the same root replays what a dead process appended and did not ack."""
    root = tmp_path / "spool"
    script = textwrap.dedent(
        f"""
        import os
        from otel_luna.delivery._disk_spool import DiskSpool
        spool = DiskSpool({str(root)!r}, max_bytes=10**8)
        for i in range(5):
            spool.append(b"m x=%di\\n" % i, 1)
        batch = spool.read(2)
        spool.ack(batch.token)
        os._exit(0)  # as if killed: no close
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    spool = DiskSpool(root, max_bytes=10**8)
    assert spool.counts["replayed_lines"] == 3
    assert b"".join(drain(spool)) == b"m x=2i\nm x=3i\nm x=4i\n"
    spool.close()
    assert [p for p in root.iterdir()] == []  # empty directories are cleaned up


def test_torn_tail_is_skipped_and_counted(tmp_path: Path) -> None:
    """A half-written or corrupt record ends its segment: counted, the rest still replayed."""
    root = tmp_path / "spool"
    first = DiskSpool(root, max_bytes=10**8)
    first.append(b"m x=1i\n", 1)
    first.append(b"m x=2i\n", 1)
    segment = next(first.directory.glob("*.seg"))
    data = segment.read_bytes()
    segment.write_bytes(data[:-3])  # tear the last record
    die(first)  # the process "dies" without cleaning up
    second = DiskSpool(root, max_bytes=10**8)
    assert second.counts["corrupt_records"] == 1
    assert drain(second) == [b"m x=1i\n"]
    second.close()


def test_corrupt_checksum_is_detected(tmp_path: Path) -> None:
    """A flipped byte in a record fails its checksum and is not replayed."""
    root = tmp_path / "spool"
    first = DiskSpool(root, max_bytes=10**8)
    first.append(b"m x=1i\n", 1)
    segment = next(first.directory.glob("*.seg"))
    data = bytearray(segment.read_bytes())
    data[-2] ^= 0xFF
    segment.write_bytes(bytes(data))
    die(first)
    second = DiskSpool(root, max_bytes=10**8)
    assert second.counts["corrupt_records"] == 1
    assert drain(second) == []
    second.close()


def test_full_disk_spool_drops_oldest_segments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond max_bytes whole oldest segments go, counted; the newest data stays."""
    spool = DiskSpool(tmp_path / "spool", max_bytes=1000, segment_bytes=200)
    for index in range(100):
        spool.append(b"m x=%03di\n" % index, 1)
    assert spool.pending_bytes <= 1000 + 200
    assert spool.counts["dropped_spool_full"] > 0
    bodies = b"".join(drain(spool))
    assert bodies.endswith(b"m x=099i\n")
    assert bodies.count(b"\n") + spool.counts["dropped_spool_full"] == 100


def test_full_memory_spool_drops_oldest() -> None:
    """The memory spool keeps the newest records within its byte bound."""
    spool = MemorySpool(max_bytes=50)
    for index in range(20):
        spool.append(b"m x=%03di\n" % index, 1)
    assert spool.pending_bytes <= 50
    assert b"".join(drain(spool)) == b"".join(b"m x=%03di\n" % i for i in range(15, 20))
    assert spool.counts["dropped_spool_full"] == 15


def test_live_directories_are_not_adopted(tmp_path: Path) -> None:
    """Two live spools on one root keep their own records; neither replays the other's."""
    root = tmp_path / "spool"
    one = DiskSpool(root, max_bytes=10**8)
    one.append(b"a x=1i\n", 1)
    two = DiskSpool(root, max_bytes=10**8)
    two.append(b"b x=1i\n", 1)
    assert drain(two) == [b"b x=1i\n"]
    assert drain(one) == [b"a x=1i\n"]
    one.close()
    two.close()


def test_status_shows_waiting_points_and_counters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """otel-luna status lists each process directory: running or gone, what waits, counters."""
    from otel_luna._cli import main

    root = tmp_path / "spool"
    spool = DiskSpool(root / "dest", max_bytes=10**8)
    spool.append(b"m x=1i\nm x=2i\n", 2)
    spool.write_stats({"written": 7, "retried": 2})
    assert main(["status", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"spool {root}: 1 process directories" in out
    assert f"dest/{spool.directory.name}: running, 2 points / " in out
    assert "retried=2, written=7" in out
    assert "points by outcome: written=7, retried=2" in out  # the Outcome of each counter
    die(spool)  # the process is gone
    assert main(["status", str(root), "--json"]) == 0
    assert '"running": false' in capsys.readouterr().out


def test_full_spool_never_drops_the_segment_being_written_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Making room while a batch is in flight keeps that batch's segment and exact counts."""
    spool = DiskSpool(tmp_path / "spool", max_bytes=350, segment_bytes=100)
    for index in range(6):
        spool.append(b"m x=%03di\n" % index, 1)  # 26 bytes a record: 4 per segment
    batch = spool.read(2)
    assert batch is not None and batch.body == b"m x=000i\nm x=001i\n"
    for index in range(6, 20):
        spool.append(b"m x=%03di\n" % index, 1)  # forces drops while the batch is out
    spool.ack(batch.token)
    rest = drain(spool)
    delivered = batch.lines + b"".join(rest).count(b"\n")
    assert delivered + spool.counts["dropped_spool_full"] == 20
    assert spool.pending_lines == 0 and spool.pending_bytes == 0
    assert b"".join(rest).endswith(b"m x=019i\n")
    on_disk = sum(path.stat().st_size for path in spool.directory.glob("*.seg"))
    assert on_disk <= 350 + 100


# ------------------------------------------------------------------------ short and refused writes


def test_short_writes_are_continued_until_the_record_is_whole(
    tmp_path: Path, disk: DiskFaults
) -> None:
    """A write that takes only part of a record is continued; the record is whole on disk."""
    disk.max_write = 5
    spool = DiskSpool(tmp_path / "spool", max_bytes=10**8)
    bodies = [b"m x=%di\n" % index for index in range(3)]
    for body in bodies:
        spool.append(body, 1)
    assert disk.writes > 3 * (RECORD_HEADER + 7) // 5
    die(spool)
    again = DiskSpool(tmp_path / "spool", max_bytes=10**8)
    assert again.counts["corrupt_records"] == 0
    assert drain(again) == [b"".join(bodies)]


@pytest.mark.parametrize("torn", [0, 7], ids=["refused", "cut-short-then-refused"])
def test_a_refused_record_leaves_nothing_behind(
    tmp_path: Path, disk: DiskFaults, torn: int
) -> None:
    """ENOSPC on the 2nd record (after part of it was written, or none): SpoolUnavailable, the
    segment is cut back to the 1st record, nothing counted; the next record fits after it."""
    spool = DiskSpool(tmp_path / "spool", max_bytes=10**8)
    disk.room = record_size(b"m x=1i\n") + torn
    spool.append(b"m x=1i\n", 1)
    with pytest.raises(SpoolUnavailable) as refused:
        spool.append(b"m x=2i\n", 1)
    assert refused.value.errno == errno.ENOSPC
    assert len(segment_bytes(spool.directory)) == record_size(b"m x=1i\n")
    assert spool.pending_lines == 1 and spool.pending_bytes == record_size(b"m x=1i\n")
    assert spool.counts.snapshot() == Counter()
    disk.room = None  # room again
    spool.append(b"m x=3i\n", 1)
    die(spool)
    again = DiskSpool(tmp_path / "spool", max_bytes=10**8)
    assert again.counts["corrupt_records"] == 0
    assert drain(again) == [b"m x=1i\nm x=3i\n"]


def test_a_failed_write_that_cannot_be_cut_seals_its_segment(
    tmp_path: Path, disk: DiskFaults
) -> None:
    """If even ftruncate fails, nothing is appended after the torn bytes: the next record goes
    to a new segment, reads skip the garbage, a restart counts it and replays the rest."""
    spool = DiskSpool(tmp_path / "spool", max_bytes=10**8)
    disk.room = record_size(b"m x=1i\n") + 7
    disk.truncate_fails = True
    spool.append(b"m x=1i\n", 1)
    with pytest.raises(SpoolUnavailable):
        spool.append(b"m x=2i\n", 1)
    assert len(segment_bytes(spool.directory)) == record_size(b"m x=1i\n") + 7  # torn tail
    disk.room = None
    spool.append(b"m x=3i\n", 1)
    assert len(list(spool.directory.glob("*.seg"))) == 2
    assert spool.pending_lines == 2
    batch = spool.read(10)
    assert batch is not None and batch.body == b"m x=1i\n"  # the torn bytes are not read
    die(spool)
    again = DiskSpool(tmp_path / "spool", max_bytes=10**8)
    assert again.counts["corrupt_records"] == 1
    assert b"".join(drain(again)) == b"m x=1i\nm x=3i\n"


# --------------------------------------------------------------------------- never an empty batch


def test_records_without_lines_are_refused(any_spool: DiskSpool | MemorySpool) -> None:
    """An empty record cannot enter the spool, so no read can hand out an empty batch."""
    for body, lines in ((b"", 0), (b"", 1), (b"m x=1i\n", 0)):
        with pytest.raises(ValueError):
            any_spool.append(body, lines)
    assert any_spool.read(10) is None and any_spool.pending_lines == 0


@pytest.mark.parametrize("damage", ["flipped", "cut"])
def test_damage_at_run_time_is_counted_and_skipped_once(tmp_path: Path, damage: str) -> None:
    """A record damaged behind the spool's back: the rest of its segment is given up and
    counted (no empty batch, no endless re-read), and new records go to a new segment."""
    spool = DiskSpool(tmp_path / "spool", max_bytes=10**8)
    for index in range(3):
        spool.append(b"m x=%di\n" % index, 1)
    segment = next(spool.directory.glob("*.seg"))
    data = bytearray(segment.read_bytes())
    second = record_size(b"m x=0i\n")
    if damage == "flipped":
        data[second + RECORD_HEADER] ^= 0xFF
    else:
        del data[second + 3 :]
    segment.write_bytes(bytes(data))
    assert drain(spool, max_lines=1) == [b"m x=0i\n"]
    assert spool.counts["corrupt_records"] == 1 and spool.counts["dropped_corrupt"] == 2
    assert spool.pending_lines == 0 and spool.pending_bytes == 0
    spool.append(b"m x=3i\n", 1)
    assert drain(spool) == [b"m x=3i\n"]
    assert spool.counts["corrupt_records"] == 1


# --------------------------------------------------------------------------- memory fallback


def test_fallback_keeps_points_in_memory_and_returns_to_the_disk_once_drained(
    tmp_path: Path, disk: DiskFaults
) -> None:
    """While the disk refuses, records go to memory (not durable); once memory has drained and
    DISK_RETRY_INTERVAL has passed, the disk is tried again and takes records (durable)."""
    clock = Clock()
    spool = FallbackSpool(DiskSpool(tmp_path / "spool", 10**8), 10**8, clock=clock)
    spool.append(b"m x=1i\n", 1)
    disk.room = 0
    spool.append(b"m x=2i\n", 1)
    assert not spool.durable and spool.counts["spool_fallback_memory"] == 1
    disk.room = None  # the disk has room again, but memory still holds a record
    clock.now += DISK_RETRY_INTERVAL
    spool.append(b"m x=3i\n", 1)
    assert spool.memory.pending_lines == 2
    assert drain(spool) == [b"m x=1i\n", b"m x=2i\nm x=3i\n"]  # disk first, then memory
    assert spool.durable
    disk.room = 0  # memory drained, the interval has passed, the disk still refuses
    spool.append(b"m x=4i\n", 1)
    assert spool.memory.pending_lines == 1 and spool.counts["spool_fallback_memory"] == 1
    writes = disk.writes
    disk.room = None
    assert drain(spool) == [b"m x=4i\n"]
    spool.append(b"m x=5i\n", 1)  # drained, but not DISK_RETRY_INTERVAL since the last try
    assert disk.writes == writes and spool.memory.pending_lines == 1
    assert drain(spool) == [b"m x=5i\n"]
    clock.now += DISK_RETRY_INTERVAL
    spool.append(b"m x=6i\n", 1)
    assert spool.durable and spool.memory.pending_lines == 0
    assert spool.disk.pending_lines == 1 and b"m x=6i\n" in segment_bytes(spool.directory)
    assert spool.counts["spool_fallback_memory"] == 1


def test_threads_failing_together_lose_no_record(tmp_path: Path, disk: DiskFaults) -> None:
    """Many threads whose appends the disk refuses at once: one memory spool takes them all."""
    disk.room = 0
    spool = FallbackSpool(DiskSpool(tmp_path / "spool", 10**8), 10**8)
    start = threading.Barrier(8)

    def append_many(thread: int) -> None:
        start.wait()
        for index in range(100):
            spool.append(b"m t=%di,x=%di\n" % (thread, index), 1)

    threads = [threading.Thread(target=append_many, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = b"".join(drain(spool)).splitlines()
    assert len(lines) == len(set(lines)) == 800
    assert spool.counts["spool_fallback_memory"] == 1


def test_serve_spool_refuses_what_the_disk_refuses(tmp_path: Path, disk: DiskFaults) -> None:
    """memory_fallback=False: an append the disk refuses raises SpoolUnavailable, nothing is
    counted or stored; once the disk takes writes again, so does the spool."""
    spool = open_spool("disk", str(tmp_path / "spool"), 10**8, memory_fallback=False)
    assert isinstance(spool, DiskSpool) and spool.durable
    disk.room = 0
    with pytest.raises(SpoolUnavailable) as refused:
        spool.append(b"m x=1i\n", 1)
    assert isinstance(refused.value, OSError) and refused.value.errno == errno.ENOSPC
    assert spool.pending_lines == 0 and spool.counts.snapshot() == Counter()
    assert segment_bytes(spool.directory) == b""
    disk.room = None
    spool.append(b"m x=2i\n", 1)
    assert drain(spool) == [b"m x=2i\n"]


def test_serve_spool_in_an_unusable_directory_fails_at_start(tmp_path: Path) -> None:
    """memory_fallback=False and a directory that cannot be made: SpoolUnavailable at once;
    with the fallback, a memory spool, counted."""
    not_a_directory = tmp_path / "afile"
    not_a_directory.write_text("")
    with pytest.raises(SpoolUnavailable):
        open_spool("disk", str(not_a_directory / "spool"), 10**8, memory_fallback=False)
    fallback = open_spool("disk", str(not_a_directory / "spool"), 10**8)
    assert isinstance(fallback, MemorySpool) and fallback.counts["spool_fallback_memory"] == 1


# --------------------------------------------------------------------------- stats and fork


def test_stats_take_any_json_mapping_and_status_shows_them(tmp_path: Path) -> None:
    """write_stats keeps nested entries (blocked destination, dead letters) for status."""
    spool = DiskSpool(tmp_path / "spool" / "dest", max_bytes=10**8)
    stats = {
        "written": 3,
        "blocked": {"reason": "HTTP 401", "since": 1700000000.5},
        "dead_letter": {"path": "/x/dead.jsonl", "bytes": 120},
    }
    spool.write_stats(stats)
    [entry] = describe(tmp_path / "spool")
    assert entry["counts"] == stats
    spool.close()


def test_after_fork_every_lock_is_new(tmp_path: Path) -> None:
    """Locks held (by another thread of the parent) at fork are re-created in the child."""
    spool = FallbackSpool(DiskSpool(tmp_path / "spool", 10**8), 10**8)
    held = [spool._lock, spool.disk._lock, spool.memory._lock]
    for lock in held:
        lock.acquire()
    spool.after_fork_in_child()
    for lock in (spool._lock, spool.disk._lock, spool.memory._lock):
        assert lock not in held and lock.acquire(blocking=False)
        lock.release()
    spool.append(b"m x=1i\n", 1)
    assert drain(spool) == [b"m x=1i\n"]


def test_a_closed_disk_spool_does_nothing_after_a_fork(tmp_path: Path) -> None:
    """A spool closed before a fork touches no descriptor in the child (its numbers may belong
    to other files by then) and makes no directory."""
    root = tmp_path / "spool"
    spool = DiskSpool(root, max_bytes=10**8)
    spool.close()
    reader, writer = os.pipe()
    os.dup2(reader, spool._own_fd)  # the old number now names another file
    try:
        spool.after_fork_in_child()
        os.fstat(spool._own_fd)  # still open
        assert list(root.iterdir()) == []
    finally:
        for fd in {reader, writer, spool._own_fd}:
            os.close(fd)


def test_volatile_lines_are_those_held_in_memory_only(tmp_path: Path, disk: DiskFaults) -> None:
    """pending_volatile_lines: all of a memory spool's lines, none of a disk spool's, and a
    fallback spool's memory part; its fallback state says since when and why, and clears once
    the disk takes records again."""
    memory = MemorySpool(10**8)
    memory.append(b"m x=1i\nm x=2i\n", 2)
    assert memory.pending_volatile_lines == 2
    clock = Clock()
    spool = FallbackSpool(DiskSpool(tmp_path / "spool", 10**8), 10**8, clock=clock)
    spool.append(b"m x=1i\n", 1)
    assert spool.disk.pending_volatile_lines == 0
    assert spool.pending_volatile_lines == 0 and spool.fallback is None
    disk.room = 0
    spool.append(b"m x=2i\nm x=3i\n", 2)
    assert (spool.pending_lines, spool.pending_volatile_lines) == (3, 2)
    fallback = spool.fallback
    assert fallback is not None and fallback["pending_lines"] == 2
    assert "No space left on device" in str(fallback["reason"])
    disk.room = None
    drain(spool)
    clock.now += DISK_RETRY_INTERVAL
    spool.append(b"m x=4i\n", 1)
    assert spool.fallback is None and spool.pending_volatile_lines == 0


def test_stats_are_rewritten_in_place_when_no_new_file_can_be_written(
    tmp_path: Path, disk: DiskFaults
) -> None:
    """A disk that refuses the new stats file (full): the stats are written over the old file,
    in the room it keeps, and status reads them; stats larger than that room raise."""
    spool = DiskSpool(tmp_path / "spool" / "dest", max_bytes=10**8)
    assert describe(tmp_path / "spool")[0]["counts"] == {}  # the file and its room exist

    def replace(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    disk.replace = replace  # type: ignore[attr-defined] # the atomic rename fails
    spool.write_stats({"written": 7, "memory_fallback": {"pending_lines": 3}})
    [entry] = describe(tmp_path / "spool")
    assert entry["counts"] == {"written": 7, "memory_fallback": {"pending_lines": 3}}
    assert not (spool.directory / "stats.json.tmp").exists()
    with pytest.raises(OSError):
        spool.write_stats({"x" * STATS_RESERVE_BYTES: 1})
    assert describe(tmp_path / "spool")[0]["counts"]["written"] == 7
    spool.close()


def test_a_damaged_ack_replays_the_directory_instead_of_raising(tmp_path: Path) -> None:
    """An ``ack`` file with a negative or unreadable position is damage like any other: the
    directory is replayed from its start, never an exception at start-up."""
    root = tmp_path / "spool"
    first = DiskSpool(root, max_bytes=10**8)
    first.append(b"m x=1i\n", 1)
    directory = first.directory
    die(first)  # the process is gone
    for damage in ("1 -100", "-1 0", "x y", "1 2 3"):
        (directory / "ack").write_text(damage)
        spool = DiskSpool(root, max_bytes=10**8)
        assert spool.pending_lines == 1
        spool.close()  # releases the adopted directory, still holding the line


def test_status_survives_a_stats_file_written_by_hand(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from otel_luna._cli import main

    root = tmp_path / "spool"
    spool = DiskSpool(root / "dest", max_bytes=10**8)
    for since in ("yesterday", 1e300, -1e20, [1], None):
        spool.write_stats({"blocked": {"since": since, "reason": "r"}, "written": "many"})
        assert main(["status", str(root)]) == 0
        assert "BLOCKED since" in capsys.readouterr().out
    spool.close()
