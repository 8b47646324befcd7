"""``otel-luna demo``: its line-protocol file read back, its summary, whole runs (file, CLI,
InfluxDB)."""

from __future__ import annotations

import dataclasses
import io
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from otel_luna import _cli as cli
from otel_luna import demo
from otel_luna.demo import _app as demo_app
from otel_luna.demo import _load as demo_load
from otel_luna.demo import _verify as verify
from otel_luna.schema import luna as schema
from otel_luna.schema._point import Point
from otel_luna.settings import Settings
from tests.support.servers import InfluxDB1, unique_name

OTEL_LUNA = Path(sys.executable).parent / "otel-luna"


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any OTEL_* setting, plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    return {**env, **extra}


# -- the line-protocol file ---------------------------------------------------------------------


def test_read_line_protocol_names_the_bad_line(tmp_path: Path) -> None:
    """A bad line in a file is reported with the file and its line number."""
    path = tmp_path / "x.lp"
    path.write_text("m x=1i 1\nm x=what 2\n")
    with pytest.raises(demo.DemoError, match=r"x\.lp: line 2: bad field value 'what'"):
        verify.read_line_protocol(path)
    with pytest.raises(demo.DemoError, match=r"x\.lp: line 2: "):
        verify.read_line_protocol(path, offset=len("m x=1i 1\n"))
    assert verify.read_line_protocol(path, offset=path.stat().st_size) == []


# -- the summary --------------------------------------------------------------------------------


def _point(measurement: str, route: str, seconds: float = 0.0, code: str = "") -> Point:
    tags = {"route": route, "service": "luna-handlers", "status_code": "201"}
    if code:
        tags["error_code"] = code
    return Point(measurement, tuple(sorted(tags.items())), {"execution_time": seconds}, 1)


def test_summary_counts_series_routes_and_error_codes() -> None:
    """The summary counts points per series (as printed), requests per route and errors per
    code."""
    points = [_point("requests", "POST:/detector", s / 1000) for s in (1, 2, 3, 4)]
    points += [_point("requests", "GET:/version", 0.0005)]
    points += [_point("errors", "POST:/extractor", code="12031")] * 2
    points += [_point("errors", "POST:/x", code="22002")]
    points += [Point("requests", (("service", "other"),), {"execution_time": 1.0}, 1)]
    points += [Point("licensing", (("service", "luna-handlers"),), {"warnings": ""}, 1)]
    summary = verify.summarize(points)
    assert summary.points == {"requests": 5, "errors": 3, "usages_statistic": 0, "licensing": 1}
    assert summary.routes == {"GET:/version": 1, "POST:/detector": 4}
    assert summary.error_codes == {"12031": 2, "22002": 1}
    assert summary.usages == {} and summary.usages_off_request == 0
    assert verify.format_summary(summary) == (
        "requests           5 points\n"
        "errors             3 points\n"
        "usages_statistic   0 points\n"
        "licensing          1 points"
    )


def test_summary_sums_usages_per_estimator_and_counts_points_at_no_request_time() -> None:
    """Estimations are summed per estimator over the usages points (an integer InfluxQL answers
    as 2.0 too); a usages point at no requests point's time (of the service) is counted; the
    printed summary says one point per request with estimations."""
    service = (("service", "luna-handlers"),)
    points = [Point("requests", (("route", "POST:/detector"), *service), {}, t) for t in (1, 2, 3)]
    points += [
        Point("usages_statistic", service, {"face_detector_usages": 1}, 1),
        Point("usages_statistic", service, {"face_detector_usages": 2.0}, 2),
        Point("usages_statistic", service, {"face_detector_usages": 1, "x_usages": 4}, 9),
        Point("usages_statistic", (("service", "other"),), {"face_detector_usages": 7}, 3),
    ]
    summary = verify.summarize(points)
    assert summary.usages == {"face_detector": 4, "x": 4}
    assert summary.usages_off_request == 1
    assert verify.format_summary(summary).splitlines()[2] == (
        "usages_statistic   3 points: one per request with estimations (face_detector 4, x 4)"
    )


def test_check_reports_lost_points() -> None:
    """A missing requests or errors point, a wrong error code, a usages_statistic point missing,
    a wrong sum of estimations, a usages point at no request's time, or no licensing point is
    reported as a problem."""
    calls = demo_load.plan_requests(40, ["h"], ["x"], random.Random(1))
    statuses: list[int | None] = [call.expect_status for call in calls]
    routes, codes = verify.expected_summary_counts(calls, statuses)
    with_usages, usages = verify.expected_usages(calls, statuses)
    assert with_usages == sum(1 for call in calls if call.kind in ("detector", "extractor"))
    assert set(usages) == {
        "face_detector",
        "face_descriptor_extractor",
        "face_basic_attributes_extractor",
    }
    good = verify.Summary(
        {
            "requests": 40,
            "errors": sum(codes.values()),
            "usages_statistic": with_usages,
            "licensing": 1,
        },
        dict(routes),
        dict(codes),
        dict(sorted(usages.items())),
    )
    assert verify.check(good, calls, statuses) == []
    lost = verify.Summary({**good.points, "requests": 39}, good.routes, good.error_codes)
    assert verify.check(lost, calls, statuses)[0] == "39 requests points for 40 requests"
    wrong = dataclasses.replace(good, error_codes={"0": sum(codes.values())})
    assert len(verify.check(wrong, calls, statuses)) == 1
    quiet = dataclasses.replace(
        good, points={**good.points, "usages_statistic": with_usages - 1, "licensing": 0}
    )
    assert verify.check(quiet, calls, statuses) == [
        f"{with_usages - 1} usages_statistic points for {with_usages} requests that counted "
        "estimations",
        "0 licensing points for the app's one licence check",
    ]
    more = dataclasses.replace(good, usages={**good.usages, "face_detector": 0})
    assert verify.check(more, calls, statuses) == [
        f"estimations per estimator {more.usages} != counted {good.usages}"
    ]
    elsewhere = dataclasses.replace(good, usages_off_request=2)
    assert verify.check(elsewhere, calls, statuses) == [
        "2 usages_statistic points at no requests point's time"
    ]


def test_endpoint_comes_from_option_then_environment_then_default(tmp_path: Path) -> None:
    """--endpoint beats OTEL_EXPORTER_LUNA_ENDPOINT, which beats file://$PWD/luna-demo.lp; the
    app gets the luna traces exporter with usages per request, and no metrics exporter."""
    key = "OTEL_EXPORTER_LUNA_ENDPOINT"
    env = demo_app.app_environment({}, tmp_path)
    assert env[key] == (tmp_path / "luna-demo.lp").as_uri()
    assert env["OTEL_TRACES_EXPORTER"] == "luna" and env["OTEL_METRICS_EXPORTER"] == "none"
    assert env["OTEL_EXPORTER_LUNA_USAGES"] == "request"
    assert env["OTEL_LOGS_EXPORTER"] == "none" and env["OTEL_SERVICE_NAME"] == "luna-handlers"
    assert demo_app.app_environment({key: "console"}, tmp_path)[key] == "console"
    assert demo_app.app_environment({key: "console"}, tmp_path, "http://h:1")[key] == "http://h:1"


def test_the_demo_app_gets_its_own_spool_unless_one_is_set(tmp_path: Path) -> None:
    """The app's spool and dead letters go to the demo's state directory, or where env says."""
    spool, dead = "OTEL_EXPORTER_LUNA_SPOOL_DIR", "OTEL_EXPORTER_LUNA_DEAD_LETTER"
    env = demo_app.app_environment({}, tmp_path, None, tmp_path / "state")
    assert env[spool] == str(tmp_path / "state" / "spool")
    assert env[dead] == str(tmp_path / "state" / "dead-letter.jsonl")
    env = demo_app.app_environment({spool: "/var/spool/x"}, tmp_path, None, tmp_path / "state")
    assert env[spool] == "/var/spool/x"
    assert spool not in demo_app.app_environment({}, tmp_path)


def test_summary_source_follows_the_sink() -> None:
    """Files, console and InfluxDB 1.x are read back; the 2.x API gets a note instead."""
    load, source = Settings.load, verify.SummarySource
    assert verify.summary_source(load({}, endpoint="file:///tmp/x.lp")) is source.FILE
    assert verify.summary_source(load({}, endpoint="console")) is source.CONSOLE
    assert verify.summary_source(load({}, endpoint="http://h:8086")) is source.INFLUXDB1
    v2 = load({}, endpoint="http://h:8086", token="t", org="o")
    assert verify.summary_source(v2) is source.NONE
    assert "reads the 1.x API" in verify.summary_note(v2)


def test_cli_rejects_a_bad_endpoint(capsys: pytest.CaptureFixture[str]) -> None:
    """A bad --endpoint exits 2 with a message naming the setting, before anything starts."""
    assert cli.main(["demo", "--endpoint", "ftp://example"]) == 2
    error = capsys.readouterr().err
    assert "OTEL_EXPORTER_LUNA_ENDPOINT" in error and "--endpoint" in error


def test_cli_rejects_bad_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    """--requests and --concurrency must be positive integers (argparse exits 2)."""
    with pytest.raises(SystemExit) as stopped:
        cli.main(["demo", "--requests", "0"])
    assert stopped.value.code == 2
    assert "--requests" in capsys.readouterr().err


# -- whole runs ---------------------------------------------------------------------------------


def printed_table(text: str) -> dict[str, int]:
    """Route -> requests from the route table of the report the demo printed."""
    number = r" +(?:[\d.]+|-)"
    rows = re.findall(rf"^  ([A-Z]+:/\S*) +(\d+){number * 5} +\d+ \(", text, re.M)
    return {route: int(count) for route, count in rows}


def printed_error_codes(text: str) -> dict[str, int]:
    """error_code -> errors points from the report's top error_code lines."""
    rows = re.findall(r"^    [A-Z]+:/\S* +(\d+) x(\d+)$", text, re.M)
    found: Counter[str] = Counter()
    for code, count in rows:
        found[code] += int(count)
    return dict(found)


def test_run_demo_writes_one_point_per_request_and_prints_its_summary(tmp_path: Path) -> None:
    """The default run empties luna-demo.lp, fills it with the app's points (one usages point
    per request with estimations, at its time, sums exact) and prints them."""
    lp = tmp_path / "luna-demo.lp"
    lp.write_text("left over from an earlier run\n")
    out, bar = io.StringIO(), io.StringIO()
    result = demo.run_demo(60, cwd=tmp_path, environ=clean_env(), out=out, progress=bar, seed=11)
    assert result.problems == [] and result.app_returncode == 0
    assert result.endpoint == lp.as_uri()
    assert result.drive.statuses == [call.expect_status for call in result.calls]

    points = verify.read_line_protocol(lp)
    requests = [p for p in points if p.measurement == schema.REQUESTS]
    errors = [p for p in points if p.measurement == schema.ERRORS]
    others = Counter(p.measurement for p in points if p not in requests and p not in errors)
    with_usages, usages = verify.expected_usages(result.calls, result.drive.statuses)
    assert len(requests) == 60 and others["licensing"] == 1
    assert others["usages_statistic"] == with_usages > 0  # one per request with estimations
    assert set(others) == {"licensing", "usages_statistic"}
    request_times = {p.time_ns for p in requests}
    used = [p for p in points if p.measurement == schema.USAGES_STATISTIC]
    assert all(p.time_ns in request_times for p in used)
    recorded: Counter[str] = Counter()
    for point in used:
        recorded.update({k.removesuffix("_usages"): v for k, v in point.fields.items()})
    assert recorded == usages
    expected_codes = Counter(
        str(call.expect_error_code) for call in result.calls if call.expect_error_code
    )
    assert Counter(dict(p.tags)["error_code"] for p in errors) == expected_codes
    assert set(expected_codes) == {"12031", "22002"}

    summary = verify.summarize(points)
    assert result.summary == summary
    text = out.getvalue()
    assert verify.format_summary(summary) in text
    assert re.search(r"^requests +60 points$", text, re.M)
    assert re.search(rf"^errors +{len(errors)} points$", text, re.M)
    assert printed_table(text) == dict(Counter(call.route for call in result.calls))
    assert printed_error_codes(text) == dict(expected_codes)
    assert "luna report: file " in text and "service luna-handlers" in text
    chart = tmp_path / "luna-demo.png"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 50_000
    assert "check: " in text and ": ok" in text
    assert bar.getvalue().strip().startswith("[##############################] 60/60 requests")
    # the bar and the summary line show one time: first request sent to last answer
    shown = re.search(r"60/60 requests +([\d.]+) s", bar.getvalue())
    assert shown and f"in {shown.group(1)} s;" in text
    assert shown.group(1) == f"{result.drive.seconds:.1f}"


def test_run_demo_reads_only_its_own_points_from_a_given_file(tmp_path: Path) -> None:
    """A file endpoint given by the user is appended to; the summary reads the new points only."""
    lp = tmp_path / "mine.lp"
    old = "requests,route=GET:/old,service=luna-handlers,status_code=200 execution_time=0.5 1\n"
    lp.write_text(old)
    env = clean_env(OTEL_EXPORTER_LUNA_ENDPOINT=lp.as_uri())
    result = demo.run_demo(20, cwd=tmp_path, environ=env, out=io.StringIO(), seed=2)
    assert result.problems == []
    assert lp.read_text().startswith(old)
    assert result.summary is not None and result.summary.points["requests"] == 20
    assert "GET:/old" not in result.summary.routes
    assert not (tmp_path / "luna-demo.lp").exists()


@pytest.mark.slow  # a child process
def test_cli_demo_in_a_subprocess(tmp_path: Path) -> None:
    """`otel-luna demo --requests 60` exits 0 and prints the summary of the file it wrote."""
    done = subprocess.run(
        [str(OTEL_LUNA), "demo", "--requests", "60", "--concurrency", "4"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = verify.summarize(verify.read_line_protocol(tmp_path / "luna-demo.lp"))
    assert summary.points["requests"] == 60
    assert verify.format_summary(summary) in done.stdout
    assert printed_table(done.stdout) == summary.routes
    assert "60/60 requests" in done.stderr


def test_run_demo_reads_back_from_influxdb1(influxdb1: InfluxDB1, tmp_path: Path) -> None:
    """With an InfluxDB 1.x endpoint the demo creates the database and summarises by InfluxQL."""
    database = unique_name("demo")
    env = clean_env(OTEL_EXPORTER_LUNA_DATABASE=database)
    out = io.StringIO()
    try:
        result = demo.run_demo(
            60, endpoint=influxdb1.url, cwd=tmp_path, environ=env, out=out, seed=13
        )
        rows = influxdb1.select("SELECT * FROM requests", database)
        error_rows = influxdb1.select("SELECT * FROM errors", database)
        other_rows = [
            (name, row)
            for name in ("usages_statistic", "licensing")
            for row in influxdb1.select(f"SELECT * FROM {name}", database)
        ]
    finally:
        if database in influxdb1.databases():
            influxdb1.drop_database(database)
    assert result.problems == []
    assert f"created database {database}" in out.getvalue()
    points = [
        Point(
            "requests",
            (("route", row["route"]), ("service", row["service"])),
            {"execution_time": row["execution_time"]},
            row["time"],
        )
        for row in rows
    ]
    points += [
        Point("errors", (("error_code", row["error_code"]), ("service", row["service"])), {}, 0)
        for row in error_rows
    ]
    points += [
        Point(
            name,
            (("service", row["service"]),),
            {k: v for k, v in row.items() if k.endswith("_usages") and v is not None},
            row["time"],
        )
        for name, row in other_rows
    ]
    assert len(rows) == 60
    assert {name for name, _ in other_rows} == {"usages_statistic", "licensing"}
    assert result.summary == verify.summarize(points)
    assert verify.format_summary(result.summary) in out.getvalue()
    assert not (tmp_path / "luna-demo.lp").exists()


def test_run_demo_reports_points_the_database_rejected(
    influxdb1: InfluxDB1, tmp_path: Path
) -> None:
    """Points InfluxDB rejects (a field type conflict) make the run fail and say where they are."""
    database = influxdb1.fresh_database("demo_conflict")
    influxdb1.write(
        f'requests,service=other execution_time="a string" {time.time_ns() - 10**9}', database
    )
    env = clean_env(OTEL_EXPORTER_LUNA_DATABASE=database)
    out = io.StringIO()
    try:
        result = demo.run_demo(
            20, endpoint=influxdb1.url, cwd=tmp_path, environ=env, out=out, seed=3
        )
    finally:
        influxdb1.drop_database(database)
    # No requests point was stored (InfluxDB 1.6 does not even run percentile() over the field
    # stored as a string): reported either way.
    assert any("reading the series back" in p or "0 requests points" in p for p in result.problems)
    (rejected,) = [p for p in result.problems if "rejected by the destination" in p]
    kept = Path(rejected.rsplit("see ", 1)[1])
    try:
        assert kept.is_file() and len(kept.read_text().splitlines()) == 20
        assert f"kept in {kept.parent}" in out.getvalue()
    finally:
        shutil.rmtree(kept.parent)


# -- otel-luna status ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["missing", "a file"])
def test_status_of_no_spool_directory_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """`otel-luna status DIR` for a DIR that is no directory names it and exits non-zero."""
    path = tmp_path / "no" / "such" / "dir"
    if kind == "a file":
        path = tmp_path / "file"
        path.write_text("")
    assert cli.main(["status", str(path)]) == cli.EXIT_FAILED
    captured = capsys.readouterr()
    problem = "does not exist" if kind == "missing" else "is not a directory"
    assert captured.err == f"otel-luna status: spool directory {path} {problem}\n"
    assert captured.out == ""


def test_status_of_a_directory_that_is_no_spool_reads_it_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`otel-luna status` on any directory only reads it: no lock file is created in
    directories two levels down (it used to create one in each), unreadable ones are skipped
    without a traceback, and no process directory is "0 process directories"."""
    tree = tmp_path / "home" / "user" / "projects"
    tree.mkdir(parents=True)
    unreadable = tmp_path / "home" / "locked"
    unreadable.mkdir(mode=0)
    try:
        assert cli.main(["status", str(tmp_path / "home")]) == cli.EXIT_OK
        assert cli.main(["status", "/proc"]) == cli.EXIT_OK
    finally:
        unreadable.chmod(0o700)
    assert list(tree.iterdir()) == []
    captured = capsys.readouterr()
    assert f"spool {tmp_path / 'home'}: 0 process directories" in captured.out
    assert "Traceback" not in captured.err


def test_status_of_one_level_of_a_spool_says_which_root_to_give(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Given a destination's directory (or a process's) instead of the spool root, status says
    so instead of a bare "0 process directories"."""
    from otel_luna.delivery._disk_spool import DiskSpool

    root = tmp_path / "spool"
    spool = DiskSpool(root / "file_x", max_bytes=10**6)
    spool.append(b"m x=1i\n", 1)
    try:
        assert cli.main(["status", str(root)]) == cli.EXIT_OK
        assert "1 process directories" in capsys.readouterr().out
        assert cli.main(["status", str(root / "file_x")]) == cli.EXIT_OK
        assert "looks like one destination's directory" in capsys.readouterr().out
        assert cli.main(["status", str(spool.directory)]) == cli.EXIT_OK
        assert "looks like one process's directory" in capsys.readouterr().out
    finally:
        spool.close()


@pytest.mark.parametrize("kind", ["symlink", "directory"])
def test_the_demo_never_empties_a_file_through_a_link(tmp_path: Path, kind: str) -> None:
    """luna-demo.lp as a symbolic link (to someone's file) or a directory: the demo refuses
    before it starts the app, naming it, and the link's target keeps its content."""
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    work = tmp_path / "work"
    work.mkdir()
    if kind == "symlink":
        (work / demo_app.DEFAULT_FILE_NAME).symlink_to(precious)
    else:
        (work / demo_app.DEFAULT_FILE_NAME).mkdir()
    with pytest.raises(demo.DemoError, match=r"luna-demo\.lp is a symbolic link or no regular"):
        demo.run_demo(5, cwd=work, environ=clean_env(), out=io.StringIO(), seed=1)
    assert precious.read_text() == "keep me\n"
