"""The spool trusts no path (serve often runs as root): links, FIFOs, sparse files, names and
owners that others put in a spool directory are refused — logged once, counted, never followed,
read or removed — and ``otel-luna status`` says only what is true about them, printably."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from otel_luna._cli import main
from otel_luna.delivery._disk_spool import DiskSpool
from otel_luna.delivery._fallback_spool import open_spool
from otel_luna.delivery._memory_spool import MemorySpool
from otel_luna.delivery._spool import SpoolRefused
from otel_luna.delivery._spool_status import describe
from otel_luna.serve import ServeSettings, describe_supervisors
from otel_luna.serve._workers import Supervisor
from tests.support.spoolhelpers import dead_directory, drain

ESCAPE = "\x1b]0;owned\x07\x1b[2J"


def victim_directory(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.mkdir()
    for name in ("a.txt", "lock", "stats.json", "00000000000000000001.seg"):
        (victim / name).write_text("precious")
    return victim


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "refusing" in r.getMessage()]


def test_a_link_where_a_process_directory_is_is_never_adopted_nor_emptied(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``<dest>/x -> /some/dir`` (and one named like a process directory): at start and at
    every later look for orphans the files they point at are untouched; each is logged once."""
    victim = victim_directory(tmp_path)
    root = tmp_path / "spool" / "dest"
    root.mkdir(parents=True, mode=0o700)
    (root / "x").symlink_to(victim)
    (root / "123-deadbeef").symlink_to(victim)
    caplog.set_level(logging.WARNING)
    spool = DiskSpool(root, max_bytes=10**8)
    for _ in range(3):  # what the writer does every 5 s
        spool.adopt_orphans()
    spool.close()
    assert sorted(p.name for p in victim.iterdir()) == [
        "00000000000000000001.seg",
        "a.txt",
        "lock",
        "stats.json",
    ]
    assert all(p.read_text() == "precious" for p in victim.iterdir())
    assert len(refusals(caplog)) == 2
    assert spool.counts["spool_files_refused"] == 2
    assert (root / "x").is_symlink() and (root / "123-deadbeef").is_symlink()


def test_links_inside_a_dead_directory_are_neither_followed_nor_written_through(
    tmp_path: Path,
) -> None:
    """``ack.tmp -> victim`` (the ack is replaced through it), a segment, the lock and the
    stats linked to files elsewhere: the victims keep their contents; the records are still
    replayed."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    root = tmp_path / "spool" / "dest"
    directory = dead_directory(root, b"m x=1i\n", b"m x=2i\n")
    (directory / "ack.tmp").symlink_to(victim)
    (directory / "stats.json.tmp").symlink_to(victim)
    (directory / "00000000000000000099.seg").symlink_to(victim)
    spool = DiskSpool(root, max_bytes=10**8)
    assert drain(spool) == [b"m x=1i\nm x=2i\n"]
    spool.write_stats({"written": 2})
    spool.close()
    assert victim.read_text() == "precious"


def test_a_directory_of_another_user_is_not_adopted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "spool" / "dest"
    directory = dead_directory(root, b"m x=1i\n")
    os.chown(directory, 4321, 4321)
    caplog.set_level(logging.WARNING)
    spool = DiskSpool(root, max_bytes=10**8)
    assert spool.pending_lines == 0 and directory.is_dir()
    assert any("owned by uid 4321" in message for message in refusals(caplog))
    spool.close()


def run_python(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``script`` in a fresh interpreter; a hang is a failure (the timeout only guards it)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow  # a child process
def test_a_fifo_in_a_spool_directory_hangs_neither_start_nor_status(tmp_path: Path) -> None:
    """A FIFO as a segment, as the ack and as the stats: start replays the real records and
    ``status`` answers, each naming what it refused."""
    spool_dir = tmp_path / "spool"
    directory = dead_directory(spool_dir / "dest", b"m x=1i\n")
    os.mkfifo(directory / "00000000000000000005.seg")
    (directory / "stats.json").unlink()
    os.mkfifo(directory / "stats.json")
    os.mkfifo(directory / "ack")
    status = run_python(
        "import sys; from otel_luna._cli import main; sys.exit(main(['status', sys.argv[1]]))",
        str(spool_dir),
    )
    assert status.returncode == 0, status.stderr
    assert "00000000000000000005.seg: a segment that is a FIFO" in status.stdout
    assert "stats.json: a FIFO, not a regular file" in status.stdout
    start = run_python(
        """
        import sys
        from otel_luna.delivery._disk_spool import DiskSpool
        spool = DiskSpool(sys.argv[1], max_bytes=10**8)
        batch = spool.read(10)
        print(batch.body.decode(), end="")
        """,
        str(spool_dir / "dest"),
    )
    assert start.returncode == 0, start.stderr
    assert start.stdout == "m x=1i\n"
    assert "refusing" in start.stderr and "a segment that is a FIFO" in start.stderr


@pytest.mark.slow  # a child process
def test_a_sparse_segment_costs_no_memory(tmp_path: Path) -> None:
    """A 2 GiB sparse segment (and one of 200 MiB, under what a segment may hold, scanned in
    bounded pieces): start and status keep their memory small."""
    spool_dir = tmp_path / "spool"
    directory = dead_directory(spool_dir / "dest", b"m x=1i\n")
    with open(directory / "00000000000000000007.seg", "wb") as file:
        file.truncate(2 * 1024**3)
    with open(directory / "00000000000000000006.seg", "wb") as file:
        file.truncate(200 * 1024**2)
    measured = run_python(
        """
        import re, sys
        from otel_luna._cli import main
        from otel_luna.delivery._disk_spool import DiskSpool
        assert main(["status", sys.argv[1]]) == 0
        spool = DiskSpool(sys.argv[1] + "/dest", max_bytes=10**10)
        # VmHWM: this program's peak (ru_maxrss would count the forking test process's RSS).
        status = open("/proc/self/status").read()
        print(spool.pending_lines, re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))
        """,
        str(spool_dir),
    )
    assert measured.returncode == 0, measured.stderr
    pending, max_rss_kib = measured.stdout.split()[-2:]
    assert pending == "1"
    assert int(max_rss_kib) < 150 * 1024
    assert "more than a segment may hold" in measured.stdout
    assert (directory / "00000000000000000007.seg").stat().st_size == 2 * 1024**3


def test_a_supervisor_status_file_cannot_name_a_file_outside_the_spool(tmp_path: Path) -> None:
    """``"pid": "x/../../victim"`` in a killed supervisor's status file: the next supervisor
    deletes only status files whose name is a pid in digits."""
    spool_dir = tmp_path / "spool"
    (spool_dir / "serve-supervisor-x").mkdir(parents=True)
    victim = tmp_path / "victim.json"
    victim.write_text("precious")
    hostile = spool_dir / "serve-supervisor-1.json"
    hostile.write_text(json.dumps({"pid": "x/../../victim"}))
    gone = spool_dir / "serve-supervisor-999999999.json"
    gone.write_text(json.dumps({"pid": 999999999}))
    supervisor = Supervisor(ServeSettings.load({}, spool_dir=str(spool_dir)), {}, 0)
    supervisor.start()
    assert victim.read_text() == "precious"
    assert not gone.exists()
    assert [state["pid"] for state in describe_supervisors(spool_dir)] == [os.getpid()]
    supervisor.stop()


def modes(*paths: Path) -> list[str]:
    return [f"{path.name}:{stat.S_IMODE(path.stat().st_mode):04o}" for path in paths]


def test_modes_are_0700_and_0600_whatever_the_umask(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    old = os.umask(0)
    try:
        spool = DiskSpool(spool_dir / "dest", max_bytes=10**8)
        spool.append(b"m x=1i\n", 1)
        spool.ack(spool.read(10).token)  # type: ignore[union-attr]
        spool.write_stats({"written": 1})
        supervisor = Supervisor(ServeSettings.load({}, spool_dir=str(tmp_path / "other")), {}, 0)
        supervisor.start()
        status_file = next((tmp_path / "other").glob("serve-supervisor-*.json"))
        directory = spool.directory
        files = sorted(p for p in directory.iterdir())
        assert modes(spool_dir, spool_dir / "dest", directory, tmp_path / "other") == [
            "spool:0700",
            "dest:0700",
            f"{directory.name}:0700",
            "other:0700",
        ]
        assert modes(*files, status_file) == [f"{p.name}:0600" for p in (*files, status_file)]
        assert {p.name for p in files} >= {"ack", "lock", "stats.json"}
        supervisor.stop()
        spool.close()
    finally:
        os.umask(old)


@pytest.mark.parametrize("change", ["owner", "group-writable", "world-writable"])
def test_a_spool_root_of_another_user_or_writable_by_others_is_refused_in_one_line(
    tmp_path: Path,
    change: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir(mode=0o700)
    if change == "owner":
        os.chown(spool_dir, 4321, 4321)
        why = "owned by uid 4321"
    else:
        spool_dir.chmod(0o770 if change == "group-writable" else 0o777)
        why = "writable by group or others"
    with pytest.raises(SpoolRefused) as refused:
        DiskSpool(spool_dir / "dest", max_bytes=10**8)
    message = str(refused.value)
    assert str(spool_dir) in message and why in message and "\n" not in message
    assert "OTEL_EXPORTER_LUNA_SPOOL_DIR" in message
    assert not (spool_dir / "dest").exists() or change == "owner"
    # In an app: memory, one warning; serve: one line, exit 2, nothing listening.
    assert isinstance(open_spool("disk", str(spool_dir / "dest"), 10**8), MemorySpool)
    monkeypatch.setenv("OTEL_EXPORTER_LUNA_SPOOL_DIR", str(spool_dir))
    monkeypatch.setenv("OTEL_EXPORTER_LUNA_DEAD_LETTER", str(tmp_path / "dead.jsonl"))
    capsys.readouterr()
    assert main(["serve", "--grpc-port", "0", "--http-port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and why in err and "OTEL_EXPORTER_LUNA_SPOOL_DIR" in err


def test_status_on_hostile_stats_files_answers_printably(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Terminal escapes, wrong types, deep nesting, huge files in the stats of processes and
    supervisors: status answers, without a traceback, and prints no control character."""
    spool_dir = tmp_path / "spool"
    spool = DiskSpool(spool_dir / "dest", max_bytes=10**8)
    spool.write_stats(
        {
            f"written{ESCAPE}": f"many{ESCAPE}",
            "blocked": {"since": ESCAPE, "reason": ESCAPE},
            "memory_fallback": {"since": [1], "reason": ESCAPE, "pending_lines": ESCAPE},
            "dead_letter": {"path": ESCAPE, "bytes": ESCAPE},
        }
    )
    for directory, stats in (
        (dead_directory(spool_dir / "dest", b"m x=1i\n"), "[" * 100_000 + "]" * 100_000),
        (dead_directory(spool_dir / "dest", b"m x=2i\n"), "{}" + " " * 5_000_000),
    ):
        (directory / "stats.json").write_text(stats)
    supervisors = {
        "serve-supervisor-1.json": {
            "pid": 1,
            "worker_pids": 5,
            "workers": ESCAPE,
            "restarts": [ESCAPE],
            "last_exit": {"at": "x", "status": ESCAPE, "pid": ESCAPE},
        },
        "serve-supervisor-2.json": {"pid": 2, "worker_pids": [ESCAPE], "last_exit": {"at": 1e300}},
        "serve-supervisor-3.json": {"pid": 3, "last_exit": {"at": [1]}},
    }
    for name, content in supervisors.items():
        (spool_dir / name).write_text(json.dumps(content))
    assert main(["status", str(spool_dir)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b]0;owned\\x07" in out  # shown, escaped
    assert out.count("serve supervisor") == 3
    assert "stats.json: 5000002 bytes, more than the" in out
    assert main(["status", str(spool_dir), "--json"]) == 0
    json.loads(capsys.readouterr().out)
    spool.close()


def test_status_says_only_what_is_true(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A gone process: replayed if points wait, else nothing waiting; never BLOCKED nor
    counting since when; an empty directory is not "replayed"; a link is shown refused; a
    block that began now is not "0 s" old."""
    spool_dir = tmp_path / "spool"
    root = spool_dir / "dest"
    waiting = dead_directory(root, b"m x=1i\n")
    empty = dead_directory(root)
    for directory in (waiting, empty):
        stats = {"blocked": {"since": 1_700_000_000, "reason": "HTTP 404: database not found"}}
        (directory / "stats.json").write_text(json.dumps(stats))
    (root / "x").symlink_to(tmp_path)
    running = DiskSpool(spool_dir / "live", max_bytes=10**8)
    running.write_stats({"blocked": {"since": time.time(), "reason": "HTTP 401"}})
    capsys.readouterr()
    assert main(["status", str(spool_dir)]) == 0
    out = capsys.readouterr().out
    running.close()
    assert "gone (replayed at next start)" not in out
    assert f"dest/{waiting.name}: gone, 1 points / " in out
    assert f"dest/{empty.name}: gone, nothing waiting (removed by the next process" in out
    assert out.count("BLOCKED since") == 1 and "(just now)" in out and "(0 s)" not in out
    assert "dest/x: refused: a symbolic link" in out


def test_status_of_gone_processes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "spool" / "dest"
    waiting = dead_directory(root, b"m x=1i\n")
    empty = dead_directory(root)
    (empty / "stray").write_text("")
    (waiting / "stats.json").write_text(json.dumps({"blocked": {"since": 1, "reason": "r"}}))
    assert main(["status", str(tmp_path / "spool")]) == 0
    out = capsys.readouterr().out
    assert f"dest/{waiting.name}: gone, 1 points / " in out
    assert "replayed by the next process of this destination" in out
    assert (
        f"dest/{empty.name}: gone, nothing to replay; left: holds files the spool refuses (stray)"
        in out
    )
    assert "stray: not a file of the spool" in out
    assert "BLOCKED" not in out and "refused writes when the process stopped: r" in out
    [entry] = [e for e in describe(tmp_path / "spool") if e["process"] == empty.name]
    assert entry["refused"] == {"stray": "not a file of the spool"}


def test_spool_list_escapes_names_and_shows_what_is_no_process_directory_as_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Review 18 #10: names printed raw, a linked supervisor file listed as a destination with
    a process ``None``, a linked process directory shown as "gone, 0 points"; status said
    "3 process directories" and listed more."""
    root = tmp_path / "spool"
    evil = root / f"evil{ESCAPE}"
    dead_directory(evil)
    dest = root / "dest"
    dead_directory(dest, b"m x=1i\n")
    (dest / "1-deadbeef").symlink_to(victim_directory(tmp_path))
    (root / "serve-supervisor-9999998.json").symlink_to(tmp_path / "victim" / "a.txt")
    assert main(["spool", "list", "--spool-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "evil\\x1b]0;owned\\x07" in out
    assert "serve-supervisor" not in out and "None" not in out
    assert "    1-deadbeef: refused: a symbolic link, not a process directory" in out
    assert out.startswith(f"spool {root}: 2 destinations\n")
    assert main(["status", str(root)]) == 0
    out = capsys.readouterr().out
    listed = [line for line in out.splitlines() if line.startswith("  ") and ": " in line]
    assert out.startswith(f"spool {root}: 2 process directories, 2 other entries refused\n")
    assert len([line for line in listed if not line.startswith("    ")]) == 4


def test_discard_says_what_it_left_and_status_does_not_promise_a_removal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Review 18 #9: discard said "discarded 0 process directories", exit 0, while gone
    directories holding refused files stayed; status said the next process removes them."""
    root = tmp_path / "spool"
    dest = root / "dest"
    fifo = dead_directory(dest)
    os.mkfifo(fifo / "00000000000000000009.seg")
    plain = dead_directory(dest, b"m x=2i\n")
    (fifo / "lock").unlink()  # a directory without its lock is still one to discard
    assert main(["status", str(root)]) == 0
    out = capsys.readouterr().out
    assert "left: holds files the spool refuses (00000000000000000009.seg)" in out
    assert main(["spool", "list", "--spool-dir", str(root)]) == 0
    listed = capsys.readouterr().out
    assert (
        f"    {fifo.name}: gone, 0 points / 0 bytes; holds files the spool refuses "
        "(00000000000000000009.seg: a segment that is a FIFO)"
    ) in listed, listed
    assert main(["spool", "discard", "dest", "--yes", "--spool-dir", str(root)]) == 1
    captured = capsys.readouterr()
    removed = "discarded 1 process directories of dest (1 left, below): 1 points / "
    assert captured.out.startswith(removed)
    assert captured.err == (
        f"otel-luna spool discard: left dest/{fifo.name}: holds files the spool refuses "
        "(00000000000000000009.seg: a segment that is a FIFO); remove it by hand\n"
    )
    assert sorted(os.listdir(fifo)) == ["00000000000000000009.seg"] and not plain.exists()


def test_status_json_is_json_whatever_a_stats_file_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Review 18 #12: a stats.json holding 1e999 made status --json print Infinity."""
    root = tmp_path / "spool"
    directory = dead_directory(root / "dest", b"m x=1i\n")
    (directory / "stats.json").write_text(
        '{"written": 1e999, "blocked": {"since": NaN, "reason": "r"}, "x": [-Infinity]}'
    )
    assert main(["status", str(root), "--json"]) == 0
    document = json.loads(capsys.readouterr().out, parse_constant=lambda name: pytest.fail(name))
    [entry] = document["processes"]
    assert entry["counts"] == {"written": None, "x": [None]}
    assert entry["blocked"]["since"] is None


def test_to_refuses_a_setting_that_does_not_pick_the_destination(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--to spool_dir=/tmp`` was accepted and ignored."""
    root = tmp_path / "spool"
    dead_directory(root / "dest", b"m x=1i\n")
    for action in ("move", "replay"):
        code = main(["spool", action, "dest", "--spool-dir", str(root), "--to", "spool_dir=/tmp"])
        err = capsys.readouterr().err
        assert code == 2 and len(err.splitlines()) == 1, err
        assert "--to" in err and "'spool_dir' does not pick the destination" in err
    assert len(os.listdir(root / "dest")) == 1
