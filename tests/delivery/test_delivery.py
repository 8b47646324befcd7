"""Delivery: hand-off without waiting, batching, what each failure class does to the spool,
the dead-letter file (private, bounded, never through a link), a writer that dies, shutdown
flush and what it counts, the stats ``otel-luna status`` reads, rate-limited warnings."""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from otel_luna._cli import main, status_entries
from otel_luna.delivery._disk_spool import DiskSpool
from otel_luna.delivery._fallback_spool import FallbackSpool
from otel_luna.delivery._memory_spool import MemorySpool
from otel_luna.delivery._spool import Spool
from otel_luna.delivery._writer import BatchWriter, DeadLetters
from otel_luna.outcomes import Reason
from otel_luna.settings import Settings, SettingsError, env_name
from otel_luna.sinks import Failure, SinkError
from otel_luna.sinks._influx_v1 import InfluxV1Sink
from otel_luna.testing import InMemorySink
from tests.support.servers import InfluxDB1
from tests.support.spoolhelpers import DiskFaults, use_disk
from tests.support.waiting import wait_until


class FlakySink(InMemorySink):
    """Fails the first ``failures`` writes with the given error, then accepts."""

    def __init__(self, failures: int, error: SinkError) -> None:
        super().__init__()
        self.failures = failures
        self.error = error
        self.attempts = 0

    def write(self, body: bytes) -> None:
        self.attempts += 1
        if self.failures > 0:
            self.failures -= 1
            raise self.error
        super().write(body)


class BlockingSink(InMemorySink):
    """Blocks every write until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, body: bytes) -> None:
        self.release.wait(10)
        super().write(body)


def writer(
    sink: InMemorySink,
    spool: Spool | None = None,
    dead_letters: DeadLetters | None = None,
    **options: float,
) -> BatchWriter:
    settings = {"flush_interval": 3600.0, "batch_size": 1000}
    settings.update(options)
    return BatchWriter(
        sink,
        spool if spool is not None else MemorySpool(10**8),
        dead_letters=dead_letters,
        **settings,  # type: ignore[arg-type]
    )


def test_submit_does_not_wait_for_the_sink() -> None:
    """submit() returns while the sink is blocked; the lines arrive once it unblocks."""
    sink = BlockingSink()
    batch = writer(sink, batch_size=1)
    started = time.monotonic()
    for index in range(100):
        batch.submit([f"m x={index}i"])
    assert time.monotonic() - started < 5  # generous: the sink blocks for 10 s
    sink.release.set()
    assert batch.force_flush(10)
    assert len(sink.lines) == 100
    batch.shutdown(10)


def test_batches_respect_batch_size() -> None:
    """No write carries more than batch_size lines; all lines arrive in order."""
    sizes: list[int] = []

    class Recording(InMemorySink):
        def write(self, body: bytes) -> None:
            sizes.append(body.count(b"\n"))
            super().write(body)

    sink = Recording()
    batch = writer(sink, batch_size=7)
    batch.submit([f"m x={index}i" for index in range(50)])
    assert batch.force_flush(10)
    assert max(sizes) <= 7
    assert sink.lines == [f"m x={index}i" for index in range(50)]
    batch.shutdown(10)


def test_flush_interval_writes_without_force_flush() -> None:
    """Lines are written within the flush interval with no explicit flush."""
    sink = InMemorySink()
    batch = writer(sink, flush_interval=0.05)
    batch.submit(["m x=1i"])
    deadline = time.monotonic() + 10
    while not sink.lines and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sink.lines == ["m x=1i"]
    batch.shutdown(10)


@pytest.mark.slow  # waits out retries
def test_retryable_failures_are_retried_until_written() -> None:
    """A retryable error keeps the batch and retries it; nothing is lost or duplicated."""
    sink = FlakySink(3, SinkError("503", retryable=True, status=503))
    batch = writer(sink)
    batch.submit(["m x=1i", "m x=2i"])
    assert batch.force_flush(30)
    assert sink.lines == ["m x=1i", "m x=2i"]
    assert sink.attempts == 4
    assert batch.counts["retried"] == 6
    assert batch.counts["written"] == 2
    batch.shutdown(10)


def test_permanent_failure_drops_and_counts() -> None:
    """A line rejected for good is dead-lettered and counted; later batches still go through."""
    sink = FlakySink(1, SinkError("400 bad", retryable=False, status=400))
    batch = writer(sink)
    batch.submit(["m x=1i"])
    assert batch.force_flush(10)
    batch.submit(["m x=2i"])
    assert batch.force_flush(10)
    assert sink.lines == ["m x=2i"]
    assert batch.counts["dead_lettered"] == 1
    batch.shutdown(10)


def test_full_spool_drops_oldest_and_counts() -> None:
    """Beyond the spool's bound the oldest lines are dropped and counted."""
    sink = BlockingSink()
    batch = writer(sink, MemorySpool(max_bytes=70), batch_size=1000)
    for index in range(15):
        batch.submit([f"m x={index:02d}i"])  # 8 bytes each with the newline: 8 fit
    assert batch.all_counts()["dropped_spool_full"] == 7
    sink.release.set()
    assert batch.force_flush(10)
    assert sink.lines == [f"m x={index:02d}i" for index in range(7, 15)]
    batch.shutdown(10)


def test_shutdown_flushes_and_closes() -> None:
    """shutdown() writes what is queued, closes the sink, and later submits are counted."""
    sink = InMemorySink()
    batch = writer(sink)
    batch.submit(["m x=1i"])
    assert batch.shutdown(10)
    assert sink.lines == ["m x=1i"] and sink.closed
    batch.submit(["m x=2i"])
    assert batch.counts["dropped_after_shutdown"] == 1


def test_force_flush_times_out_while_sink_is_down() -> None:
    """force_flush() reports False instead of hanging while the destination keeps failing."""
    sink = FlakySink(10**9, SinkError("down", retryable=True))
    batch = writer(sink)
    batch.submit(["m x=1i"])
    assert batch.force_flush(0.3) is False
    batch.shutdown(0.1)
    assert batch.counts["dropped_at_shutdown"] == 1


def test_undelivered_lines_stay_in_the_disk_spool(tmp_path: Path) -> None:
    """At shutdown with the destination down, a disk spool keeps the lines for the next start."""
    sink = FlakySink(10**9, SinkError("down", retryable=True))
    batch = writer(sink, DiskSpool(tmp_path / "spool", 10**8))
    batch.submit(["m x=1i", "m x=2i"])
    assert batch.shutdown(0.3) is False
    assert batch.counts["left_in_spool"] == 2
    later = InMemorySink()
    again = writer(later, DiskSpool(tmp_path / "spool", 10**8))
    assert again.force_flush(10)
    assert later.lines == ["m x=1i", "m x=2i"]
    again.shutdown(10)


class PickySink(InMemorySink):
    """Rejects, like InfluxDB, any body holding a line with ``bad``; takes the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, body: bytes) -> None:
        self.writes += 1
        if b"bad" in body:
            raise SinkError("HTTP 400: field type conflict", retryable=False, status=400)
        super().write(body)


def test_bad_lines_are_isolated_and_dead_lettered(tmp_path: Path) -> None:
    """A permanent error splits the batch: good lines land, each bad one is dead-lettered."""
    sink = PickySink()
    letters = DeadLetters(str(tmp_path / "dead.jsonl"))
    batch = writer(sink, dead_letters=letters)
    lines = [f"m x={index}i" for index in range(30)]
    lines[3], lines[17] = "m bad=1i", "m bad=2i"
    batch.submit(lines)
    assert batch.force_flush(10)
    assert sink.lines == [line for line in lines if "bad" not in line]
    assert batch.counts["dead_lettered"] == 2
    records = [json.loads(row) for row in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert [record["line"] for record in records] == ["m bad=1i", "m bad=2i"]
    assert all(
        record["status"] == 400 and "type conflict" in record["reason"] for record in records
    )
    batch.shutdown(10)


@pytest.mark.slow  # waits out a Retry-After
def test_retry_after_is_honoured() -> None:
    """A 429 with Retry-After waits at least that long before the next attempt."""
    times: list[float] = []

    class Throttled(InMemorySink):
        def write(self, body: bytes) -> None:
            times.append(time.monotonic())
            if len(times) == 1:
                raise SinkError("429", retryable=True, status=429, retry_after=0.8)
            super().write(body)

    sink = Throttled()
    batch = writer(sink, flush_interval=0.01)
    batch.submit(["m x=1i"])
    deadline = time.monotonic() + 10
    while not sink.lines and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sink.lines == ["m x=1i"]
    assert times[1] - times[0] >= 0.8
    batch.shutdown(10)


class ScriptedSink(InMemorySink):
    """Raises ``next(script)`` (a SinkError or None) on each write; None writes the body."""

    def __init__(self, script: list[SinkError | None]) -> None:
        super().__init__()
        self.script = script
        self.bodies: list[bytes] = []

    def write(self, body: bytes) -> None:
        self.bodies.append(body)
        error = self.script.pop(0) if self.script else None
        if error is not None:
            raise error
        super().write(body)


@pytest.mark.slow  # waits out retries
def test_blocked_destination_holds_the_whole_batch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """BLOCKED never splits, acks or dead-letters: the same whole batch is retried until it is
    taken; one warning names the cause; the blocked state is set meanwhile, cleared after."""
    blocked = SinkError("HTTP 404: database not found", failure=Failure.BLOCKED, status=404)
    sink = ScriptedSink([blocked] * 3)
    letters = DeadLetters(str(tmp_path / "dead.jsonl"))
    batch = writer(sink, dead_letters=letters)
    lines = [f"m x={index}i" for index in range(40)]
    with caplog.at_level(logging.WARNING, logger="otel_luna.delivery._writer"):
        batch.submit(lines)
        assert batch.force_flush(0.2) is False  # first attempt: blocked
        state = wait_until(lambda: batch.blocked)
        assert state is not None and state["status"] == 404
        assert "database not found" in str(state["reason"])
        assert batch.queued == 40
        assert batch.force_flush(30)
    assert sink.lines == lines
    assert sink.bodies == [sink.bodies[0]] * 4  # never split
    assert batch.blocked is None
    assert batch.counts["dead_lettered"] == 0 and batch.counts["split_writes"] == 0
    assert not (tmp_path / "dead.jsonl").exists()
    warnings = [r.getMessage() for r in caplog.records if "cannot deliver" in r.getMessage()]
    assert len(warnings) == 1 and "database not found" in warnings[0]
    assert "(blocked)" in warnings[0] and " 0 s" not in warnings[0]
    batch.shutdown(10)


def test_blocked_state_is_in_the_stats_status_shows(tmp_path: Path) -> None:
    """While blocked, the stats the disk spool keeps (``otel-luna status``) say since when and
    why; they also give the dead-letter file's path and size."""
    sink = FlakySink(10**9, SinkError("HTTP 401: authorization failed", failure=Failure.BLOCKED))
    letters = DeadLetters(str(tmp_path / "dead.jsonl"))
    batch = writer(sink, DiskSpool(tmp_path / "spool" / "dest", 10**8), dead_letters=letters)
    started = time.time()
    batch.submit(["m x=1i"])
    assert batch.force_flush(0.3) is False
    # the worker writes the stats after each attempt
    entry = wait_until(
        lambda: next(iter(status_entries(str(tmp_path / "spool"))), {}), lambda e: "blocked" in e
    )
    blocked = entry["blocked"]
    assert isinstance(blocked, dict) and "authorization failed" in blocked["reason"]
    assert started <= blocked["since"] <= time.time()
    assert entry["dead_letter"] == {"path": str(tmp_path / "dead.jsonl"), "bytes": 0}
    assert entry["pending_lines"] == 1
    batch.shutdown(0.1)


def test_too_large_splits_until_it_fits() -> None:
    """413: the batch is split until each part fits; only a line too large alone is
    dead-lettered, every other line is written once."""

    class Limited(InMemorySink):
        def write(self, body: bytes) -> None:
            if len(body) > 100:
                raise SinkError("HTTP 413: too large", failure=Failure.TOO_LARGE, status=413)
            super().write(body)

    sink = Limited()
    batch = writer(sink)
    lines = [f"m x={index:03d}i" for index in range(60)]
    huge = "m s=" + "x" * 200
    batch.submit([*lines[:30], huge, *lines[30:]])
    assert batch.force_flush(10)
    assert sorted(sink.lines) == lines
    assert batch.counts["dead_lettered"] == 1 and batch.counts["written"] == 60
    assert batch.counts["split_writes"] > 0
    batch.shutdown(10)


@pytest.mark.parametrize("failure", [Failure.RETRY, Failure.BLOCKED])
def test_retry_during_isolation_keeps_the_whole_batch(tmp_path: Path, failure: Failure) -> None:
    """A sub-write of the isolation that comes back RETRY or BLOCKED stops it: nothing is
    acked or dead-lettered then; the next attempt isolates the bad line once."""
    per_line = SinkError("HTTP 400: unable to parse", failure=Failure.PER_LINE, status=400)
    held = SinkError("HTTP 503", failure=failure, status=503)

    class Sink(PickySink):
        def __init__(self) -> None:
            super().__init__()
            self.script: list[SinkError | None] = [per_line, None, held]

        def write(self, body: bytes) -> None:
            error = self.script.pop(0) if self.script else None
            if error is not None:
                self.writes += 1
                raise error
            super().write(body)

    sink = Sink()
    letters = DeadLetters(str(tmp_path / "dead.jsonl"))
    batch = writer(sink, dead_letters=letters)
    lines = [f"m x={index}i" for index in range(8)]
    lines[6] = "m bad=1i"
    batch.submit(lines)
    assert batch.force_flush(0.2) is False  # whole, first half, second half held back
    assert not (tmp_path / "dead.jsonl").exists() and batch.queued == 8
    assert batch.force_flush(30)
    assert sorted(set(sink.lines)) == sorted(line for line in lines if "bad" not in line)
    records = (tmp_path / "dead.jsonl").read_text().splitlines()
    assert [json.loads(record)["line"] for record in records] == ["m bad=1i"]
    assert batch.counts["dead_lettered"] == 1 and batch.counts["written"] == 7
    batch.shutdown(10)


def test_dead_worker_is_restarted_and_counted() -> None:
    """A writer thread that dies is started again by the next flush, counted, and delivers."""
    sink = InMemorySink()
    batch = writer(sink)
    original = batch._adopt_orphans
    failures = [RuntimeError("bug")]

    def adopt_once_failing() -> None:
        if failures:
            raise failures.pop()
        original()

    batch._adopt_orphans = adopt_once_failing  # type: ignore[method-assign]
    batch.submit(["m x=1i"])
    assert batch.force_flush(10)
    assert sink.lines == ["m x=1i"]
    assert batch.counts["writer_restarts"] == 1 and batch.counts["writer_errors"] == 1
    batch.shutdown(10)


def test_dead_letter_file_is_private(tmp_path: Path) -> None:
    """The dead-letter file is created with mode 0600, whatever the umask allows."""
    path = tmp_path / "letters" / "dead.jsonl"
    letters = DeadLetters(str(path))
    assert not path.parent.exists()  # nothing is created before the first dead letter
    old = os.umask(0o022)
    try:
        letters.write(b"m bad", "HTTP 400: bad", 400)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_dead_letter_file_is_rotated_and_what_is_lost_counted(tmp_path: Path) -> None:
    """Past max_bytes the file becomes <path>.1 and a new one starts; the records of an older
    .1 that is replaced are counted as dead_letters_rotated_out."""
    path = tmp_path / "dead.jsonl"
    letters = DeadLetters(str(path), max_bytes=1024)
    for index in range(40):
        letters.write(f"m n={index}i".encode(), "HTTP 400: bad", 400)
    kept = [
        json.loads(row)["line"]
        for name in (f"{path}.1", str(path))
        for row in Path(name).read_text().splitlines()
    ]
    assert path.stat().st_size <= 1024 and Path(f"{path}.1").stat().st_size <= 1024
    assert kept == [f"m n={index}i" for index in range(40 - len(kept), 40)]
    assert letters.counts["dead_letters_rotated_out"] == 40 - len(kept) > 0
    assert letters.stats() == {
        "path": str(path),
        "bytes": path.stat().st_size + Path(f"{path}.1").stat().st_size,
    }


@pytest.mark.parametrize("where", ["directory", "under_a_file"])
def test_unwritable_dead_letter_path_names_the_setting(tmp_path: Path, where: str) -> None:
    """A dead-letter path that cannot be written fails at once, naming the setting, and leaves
    no file behind."""
    (tmp_path / "file").write_text("")
    path = tmp_path if where == "directory" else tmp_path / "file" / "sub" / "dead.jsonl"
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SettingsError) as caught:
        DeadLetters(str(path))
    assert caught.value.setting == "OTEL_EXPORTER_LUNA_DEAD_LETTER"
    assert sorted(tmp_path.rglob("*")) == before


# --------------------------------------------------------------------------- links, FIFOs


@pytest.mark.parametrize("kind", ["link to a file", "dangling link"])
def test_a_symlink_at_the_dead_letter_path_fails_at_start(tmp_path: Path, kind: str) -> None:
    """A symbolic link at the dead-letter path is refused when the exporter is built, naming
    the setting; what it points at is neither created nor touched."""
    target = tmp_path / "precious"
    if kind == "link to a file":
        target.write_text("precious\n")
        target.chmod(0o644)
    path = tmp_path / "dead.jsonl"
    path.symlink_to(target)
    with pytest.raises(SettingsError) as caught:
        DeadLetters(str(path))
    assert caught.value.setting == env_name("dead_letter")
    assert "symbolic link" in str(caught.value)
    if kind == "link to a file":
        assert target.read_text() == "precious\n"
        assert stat.S_IMODE(target.stat().st_mode) == 0o644
    else:
        assert not target.exists()


def test_a_fifo_at_the_dead_letter_path_fails_at_start(tmp_path: Path) -> None:
    """A FIFO (or anything but a regular file) at the path is refused at start-up."""
    path = tmp_path / "dead.jsonl"
    os.mkfifo(path)
    with pytest.raises(SettingsError) as caught:
        DeadLetters(str(path))
    assert caught.value.setting == env_name("dead_letter")
    assert "not a regular file" in str(caught.value)


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_link_or_fifo_appearing_later_is_never_written_through(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A link (or FIFO) put at the path after start: no write goes through it and nothing it
    points at is appended to or chmod'ed (no hang on a FIFO without reader); each failed write
    is counted (dead_letter_write_errors), the first one logged."""
    path = tmp_path / "dead.jsonl"
    letters = DeadLetters(str(path))
    target = tmp_path / "precious"
    target.write_text("precious\n")
    target.chmod(0o644)
    if kind == "symlink":
        path.symlink_to(target)
    else:
        os.mkfifo(path)
    with caplog.at_level(logging.ERROR, logger="otel_luna.delivery._writer"):
        letters.write(b"m bad=1i", "HTTP 400: bad", 400)
        letters.write(b"m bad=2i", "HTTP 400: bad", 400)
    assert target.read_text() == "precious\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert letters.counts["dead_letter_write_errors"] == 2
    errors = [
        r.getMessage() for r in caplog.records if "cannot write dead letter" in r.getMessage()
    ]
    assert len(errors) == 1
    if kind == "symlink":
        assert "symbolic link" in errors[0]


def test_rotation_never_reads_or_replaces_what_a_link_points_at(tmp_path: Path) -> None:
    """A link at ``<path>.1`` is replaced by the rotated file itself; its target is neither
    read (its lines are not counted as rotated out) nor changed."""
    path = tmp_path / "dead.jsonl"
    target = tmp_path / "precious"
    target.write_text("a\nb\n")
    Path(f"{path}.1").symlink_to(target)
    letters = DeadLetters(str(path), max_bytes=1024)
    for index in range(40):
        letters.write(f"m n={index}i".encode(), "HTTP 400: bad", 400)
    assert target.read_text() == "a\nb\n"
    assert not Path(f"{path}.1").is_symlink()
    kept = sum(len(Path(name).read_text().splitlines()) for name in (f"{path}.1", str(path)))
    assert letters.counts["dead_letters_rotated_out"] == 40 - kept


# --------------------------------------------------------------------------- log flood


def test_many_dead_letters_log_one_warning_and_the_summary_counts_them(
    influxdb1: InfluxDB1, influxdb1_database: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """200 field type conflicts against real InfluxDB 1.x: 200 dead letters, the good lines
    stored, one "rejected for good" warning with InfluxDB's reason, and the summary (forced
    at shutdown) reports dead_lettered=200."""
    influxdb1.write("conflict,k=base x=1i 1700000000000000000", influxdb1_database)
    settings = Settings.load({}, endpoint=influxdb1.url, database=influxdb1_database)
    letters = tmp_path / "dead.jsonl"
    batch = BatchWriter(
        InfluxV1Sink(settings),
        MemorySpool(10**8),
        flush_interval=3600,
        batch_size=1000,
        dead_letters=DeadLetters(str(letters)),
    )
    bad = [f'conflict,k=bad{index} x="text" 1700000000000000000' for index in range(200)]
    good = [f"conflict,k=good{index} x={index}i 1700000000000000000" for index in range(20)]
    with caplog.at_level(logging.DEBUG, logger="otel_luna.delivery._writer"):
        batch.submit([*bad[:100], *good, *bad[100:]])
        assert batch.force_flush(120)
        batch.shutdown(10)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    rejected = [message for message in warnings if "rejected for good" in message]
    assert len(rejected) == 1 and "field type conflict" in rejected[0]
    summaries = [message for message in warnings if "last 60 s:" in message]
    assert len(summaries) == 1 and "dead_lettered=200" in summaries[0]
    assert len(letters.read_text().splitlines()) == 200
    rows = influxdb1.select("SELECT * FROM conflict", influxdb1_database)
    assert sorted(row["k"] for row in rows) == sorted(["base", *(f"good{i}" for i in range(20))])


def test_a_rejection_after_the_interval_is_logged_again(caplog: pytest.LogCaptureFixture) -> None:
    """The warning is rate-limited, not silenced: once SUMMARY_INTERVAL has passed since the
    last one, the next rejection is logged again."""
    batch = writer(PickySink(), summary_interval=0.0)
    with caplog.at_level(logging.WARNING, logger="otel_luna.delivery._writer"):
        for index in range(3):
            batch.submit([f"m bad={index}i"])
            assert batch.force_flush(10)
    rejected = [r for r in caplog.records if "rejected for good" in r.getMessage()]
    assert len(rejected) == 3
    batch.shutdown(10)


# --------------------------------------------------------------------------- memory fallback


def fallback_writer(tmp_path: Path, faults: DiskFaults) -> tuple[BatchWriter, FallbackSpool]:
    """A writer whose destination is down, over a fallback spool whose disk took two lines
    (``m x=1i``, ``m x=2i``) and then refused three (held in memory)."""
    spool = FallbackSpool(DiskSpool(tmp_path / "spool" / "dest", 10**8), 10**8)
    batch = writer(FlakySink(10**9, SinkError("down", failure=Failure.RETRY)), spool)
    batch.submit(["m x=1i", "m x=2i"])
    faults.room = 0
    batch.submit(["m x=3i"])
    batch.submit(["m x=4i", "m x=5i"])
    assert spool.disk.pending_lines == 2 and spool.pending_volatile_lines == 3
    return batch, spool


def test_shutdown_counts_memory_held_lines_as_lost_and_disk_lines_as_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Destination down, the disk full after two lines: shutdown counts the two on disk as
    left_in_spool and the three held in memory as dropped_at_shutdown, logs each as what it
    is, and the next start delivers exactly the two."""
    faults = DiskFaults()
    use_disk(monkeypatch, faults)
    batch, _ = fallback_writer(tmp_path, faults)
    with caplog.at_level(logging.WARNING, logger="otel_luna.delivery._writer"):
        assert batch.shutdown(0.2) is False
    assert batch.counts["left_in_spool"] == 2 and batch.counts["dropped_at_shutdown"] == 3
    messages = [r.getMessage() for r in caplog.records]
    (left,) = [message for message in messages if "stay in the spool" in message]
    (lost,) = [message for message in messages if "held in memory only" in message]
    assert left.startswith("otel-luna: 2 lines not delivered at shutdown stay in the spool")
    assert lost.startswith("otel-luna: 3 lines not delivered at shutdown were held in memory")
    assert "disk refused them" in lost and "No space left on device" in lost
    assert "are lost (dropped_at_shutdown)" in lost
    faults.room = None
    later = InMemorySink()
    again = writer(later, DiskSpool(tmp_path / "spool" / "dest", 10**8))
    assert again.force_flush(10)
    assert later.lines == ["m x=1i", "m x=2i"]
    again.shutdown(10)


def test_status_says_points_are_held_in_memory_while_the_disk_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """While the fallback spool keeps points in memory, the stats say so: since when, why and
    how many lines are in memory only; `otel-luna status` prints it."""
    faults = DiskFaults()
    use_disk(monkeypatch, faults)
    started = time.time()
    batch, _ = fallback_writer(tmp_path, faults)
    try:
        assert batch.force_flush(0.2) is False  # the worker writes the stats after the attempt
        root = str(tmp_path / "spool")
        entry = wait_until(
            lambda: next(iter(status_entries(root)), {}), lambda e: "memory_fallback" in e
        )
        fallback = entry["memory_fallback"]
        assert fallback["pending_lines"] == 3 and "No space left" in fallback["reason"]
        assert started <= fallback["since"] <= time.time()
        assert entry["pending_lines"] == 2  # on disk
        capsys.readouterr()
        assert main(["status", root]) == 0
        output = capsys.readouterr().out
        assert "spool disk REFUSES writes since" in output
        assert "3 points held in memory only, lost if the process ends" in output
    finally:
        batch.shutdown(0.1)


# --------------------------------------------------------------------------- extra counters


@pytest.mark.parametrize("failure", [None, ValueError])
def test_host_counts_go_to_the_stats_only(tmp_path: Path, failure: type[Exception] | None) -> None:
    """What host_counts returns (copied under its owner's lock) is added to the stats status
    shows, not to all_counts(); one that fails only leaves the extras out of the stats."""

    def extra() -> dict[Reason, int]:
        if failure is not None:
            raise failure("broken")
        return {Reason.INVALID_UTF8: 2, Reason.WRITTEN: 5}

    root = tmp_path / "spool"
    batch = BatchWriter(
        InMemorySink(),
        DiskSpool(root / "dest", 10**8),
        flush_interval=3600,
        batch_size=10,
        host_counts=extra,
    )
    batch.submit(["m x=1i"])
    assert batch.force_flush(10)
    counts = wait_until(
        lambda: next(iter(status_entries(str(root))), {}).get("counts"),
        lambda c: bool(c) and "written" in c,
    )
    if failure is None:
        assert counts["invalid_utf8"] == 2 and counts["written"] == 1 + 5  # summed
    else:
        assert "invalid_utf8" not in counts and counts["written"] == 1
    assert "invalid_utf8" not in batch.all_counts() and batch.all_counts()["written"] == 1
    batch.shutdown(10)
