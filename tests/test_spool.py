"""The spool: order, acknowledgement, replay after a crash, damage, bounds, shared directories."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from otel_luna import spool as spool_module
from otel_luna.spool import DiskSpool, MemorySpool


def drain(spool: DiskSpool | MemorySpool, max_lines: int = 1000) -> list[bytes]:
    bodies = []
    while (batch := spool.read(max_lines)) is not None:
        bodies.append(batch.body)
        spool.ack(batch.token)
    return bodies


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


def test_unacked_records_replay_after_restart(tmp_path: Path) -> None:
    """A new spool on the same root replays what a dead process appended and did not ack."""
    root = tmp_path / "spool"
    script = textwrap.dedent(
        f"""
        import os
        from otel_luna.spool import DiskSpool
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
    first._own.close()
    os.close(first._own_fd)  # the process "dies" without cleaning up
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
    first._own.close()
    os.close(first._own_fd)
    second = DiskSpool(root, max_bytes=10**8)
    assert second.counts["corrupt_records"] == 1
    assert drain(second) == []
    second.close()


def test_full_disk_spool_drops_oldest_segments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond max_bytes whole oldest segments go, counted; the newest data stays."""
    monkeypatch.setattr(spool_module, "SEGMENT_BYTES", 200)
    spool = DiskSpool(tmp_path / "spool", max_bytes=1000)
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
    from otel_luna.cli import main

    root = tmp_path / "spool"
    spool = DiskSpool(root / "dest", max_bytes=10**8)
    spool.append(b"m x=1i\nm x=2i\n", 2)
    spool.write_stats({"written": 7, "retried": 2})
    assert main(["status", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"spool {root}: 1 process directories" in out
    assert f"dest/{spool.directory.name}: running, 2 points / " in out
    assert "retried=2, written=7" in out
    spool._own.close()
    os.close(spool._own_fd)  # the process is gone
    assert main(["status", str(root), "--json"]) == 0
    assert '"running": false' in capsys.readouterr().out


def test_full_spool_never_drops_the_segment_being_written_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Making room while a batch is in flight keeps that batch's segment and exact counts."""
    monkeypatch.setattr(spool_module, "SEGMENT_BYTES", 100)
    spool = DiskSpool(tmp_path / "spool", max_bytes=350)
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
