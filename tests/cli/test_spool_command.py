"""``otel-luna spool`` against a real InfluxDB 1.x (issue 18): a misspelled database strands
points in a spool no corrected configuration reads; ``spool move`` to the right database and
``spool replay`` store every point exactly once; ``spool discard`` deletes them, counted; a
process directory whose process is alive is never touched."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from otel_luna import _cli as cli
from otel_luna.delivery import destination_slug, open_delivery
from otel_luna.delivery._disk_spool import DiskSpool
from otel_luna.delivery._spool_status import process_directories
from otel_luna.encoding._lineprotocol import encode
from otel_luna.schema._point import Point
from otel_luna.settings import Settings, env_name
from otel_luna.sinks import load_sink
from tests.support.servers import InfluxDB1

T0 = 1_795_953_600 * 1_000_000_000


def configure(
    monkeypatch: pytest.MonkeyPatch, influxdb1: InfluxDB1, database: str, root: Path
) -> None:
    for name in [key for key in os.environ if key.startswith("OTEL_EXPORTER_LUNA_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv(env_name("endpoint"), influxdb1.url)
    monkeypatch.setenv(env_name("database"), database)
    monkeypatch.setenv(env_name("spool_dir"), str(root))


def strand(count: int, first: int = 0) -> list[int]:
    """Write ``count`` points with the current settings and end the process's delivery: the
    destination refuses them (no such database), so they stay in a spool of a gone process."""
    settings = Settings.load()
    writer = open_delivery(settings, load_sink(settings), memory_fallback=False)
    stamps = [T0 + first + i for i in range(count)]
    points = [
        Point("requests", (("route", "GET:/x"), ("service", "s")), {"execution_time": 0.1}, t)
        for t in stamps
    ]
    writer.submit(encode(points).decode().splitlines())
    assert not writer.force_flush(1.0)  # blocked: 404 database not found
    assert writer.blocked is not None
    writer.shutdown(0.0)
    return stamps


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def test_a_stranded_spool_is_moved_replayed_once_and_a_live_one_left_alone(
    influxdb1: InfluxDB1,
    influxdb1_database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = tmp_path / "spool"
    misspelled = influxdb1_database + "_typo"
    configure(monkeypatch, influxdb1, misspelled, root)
    wrong = destination_slug(Settings.load())
    # A running process of the misspelled destination (this one holds its lock).
    live = DiskSpool(root / wrong, 1 << 20)
    live.append(b"requests,service=live execution_time=1 1\n", 1)
    try:
        stamps = strand(300)
        code, out, _ = run(["spool", "list", "--json"], capsys)
        assert code == cli.EXIT_OK
        (entry,) = json.loads(out)["destinations"]
        assert entry["destination"] == wrong and entry["configured"] is True
        assert entry["pending_lines"] == 301
        states = sorted((p["running"], p["pending_lines"]) for p in entry["processes"])
        assert states == [(False, 300), (True, 1)]
        code, out, _ = run(["spool", "list"], capsys)
        assert f"  {wrong} (the configured destination): 301 points" in out
        assert ": gone, 300 points" in out and ": running, 1 points" in out

        right = destination_slug(Settings.load(None, database=influxdb1_database))
        # A running process of the corrected destination, holding nothing.
        other = DiskSpool(root / right, 1 << 20)
        code, out, err = run(
            ["spool", "move", wrong, "--to", f"database={influxdb1_database}"], capsys
        )
        assert out.startswith("moved 1 process directories (300 points / ") and right in out
        assert code == cli.EXIT_FAILED  # one directory was left to its running process
        assert err == (
            f"otel-luna spool move: left 1 process directories of running processes alone: "
            f"{live.directory.name}\n"
        )
        assert live.directory.parent == root / wrong and live.directory.is_dir()
        assert live.pending_lines == 1

        monkeypatch.setenv(env_name("database"), influxdb1_database)
        code, out, err = run(["spool", "replay", right], capsys)
        # Review 18 #8: the running process's directory left alone is said, not a failure.
        assert code == cli.EXIT_OK, err
        assert err == (
            f"otel-luna spool replay: left 1 process directories of running processes alone: "
            f"{other.directory.name}\n"
        )
        other.close()
        assert "written=300" in out and "left_in_spool" not in out
        rows = influxdb1.select('SELECT "execution_time" FROM "requests"', influxdb1_database)
        assert sorted(row["time"] for row in rows) == stamps  # every point, each once
        assert [d for d in process_directories(root) if d.parent.name == right] == []
        code, out, _ = run(["spool", "list", "--json"], capsys)
        assert [e["destination"] for e in json.loads(out)["destinations"]] == [wrong]
    finally:
        live.close()


def test_replay_to_a_destination_that_still_refuses_keeps_them_and_discard_deletes_them(
    influxdb1: InfluxDB1,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = tmp_path / "spool"
    configure(monkeypatch, influxdb1, "no_such_database_here", root)
    wrong = destination_slug(Settings.load())
    strand(120)
    code, out, err = run(["spool", "replay", wrong, "--timeout", "1"], capsys)
    assert code == cli.EXIT_FAILED and "left_in_spool=120" in out
    assert err.startswith("otel-luna spool replay: the destination refused: ")
    assert "database not found" in err
    code, out, err = run(["spool", "discard", wrong], capsys)
    assert code == cli.EXIT_USAGE and out == ""
    assert "(120 points waiting); add --yes to delete them" in err
    assert len(process_directories(root)) == 1
    # A process of that destination starts: it adopts the directory, and has its own.
    live = DiskSpool(root / wrong, 1 << 20)
    try:
        code, out, err = run(["spool", "discard", wrong, "--yes"], capsys)
        assert code == cli.EXIT_FAILED and out.startswith("discarded 0 process directories")
        assert "left 2 process directories of running processes alone" in err
        assert live.pending_lines == 120
    finally:
        live.close()
    code, out, err = run(["spool", "discard", wrong, "--yes"], capsys)
    assert code == cli.EXIT_OK, err
    assert out.startswith(f"discarded 1 process directories of {wrong}: 120 points / ")
    assert process_directories(root) == []
    code, out, _ = run(["spool", "list"], capsys)
    assert out == f"spool {root}: 0 destinations\n"


def test_bad_names_and_settings_are_one_line(
    influxdb1: InfluxDB1,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = tmp_path / "spool"
    root.mkdir()
    configure(monkeypatch, influxdb1, "db", root)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    for name in ("../outside", "link", "nothing"):
        code, out, err = run(["spool", "discard", name, "--yes"], capsys)
        assert code == cli.EXIT_FAILED and len(err.splitlines()) == 1, err
    assert outside.is_dir()
    # A link posing as a process directory is never followed (nothing of its target removed).
    (outside / "lock").write_bytes(b"")
    (outside / "victim").write_bytes(b"keep me")
    (root / "dest").mkdir()
    (root / "dest" / "1-deadbeef").symlink_to(outside)
    code, out, err = run(["spool", "discard", "dest", "--yes"], capsys)
    assert code == cli.EXIT_FAILED and out.startswith("discarded 0 process directories"), err
    assert err == (
        "otel-luna spool discard: left dest/1-deadbeef: a symbolic link, not a process "
        "directory: never followed; remove it by hand\n"
    )
    assert (outside / "victim").read_bytes() == b"keep me"
    code, _, err = run(["spool", "move", "x", "--to", "no_such_setting=1"], capsys)
    assert code == cli.EXIT_USAGE and "--to: no setting named 'no_such_setting'" in err
    code, _, err = run(["spool", "replay", destination_slug(Settings.load()), "--to", "x"], capsys)
    assert code == cli.EXIT_USAGE and "expected SETTING=VALUE" in err
    here = destination_slug(Settings.load())
    (root / here).mkdir()
    code, out, err = run(["spool", "replay", here, "--to", "database=other"], capsys)
    assert code == cli.EXIT_OK and out.splitlines()[-1].endswith(": nothing waited"), out
    code, _, err = run(["spool", "replay", here], capsys)
    assert code == cli.EXIT_OK, err
    code, _, err = run(["spool", "replay", here + "x"], capsys)
    assert code == cli.EXIT_FAILED and "no destination directory" in err
    code, _, err = run(["spool", "move", here, "--to", "database=db"], capsys)
    assert code == cli.EXIT_FAILED and "already the spool of that destination" in err
