"""``otel-luna report`` bounds what it reads and answers every bad input in one line (issue 18):
hostile answers of a server claiming to be InfluxDB, served by a local aiohttp stub (a fake of
a hostile server: no real InfluxDB answers like this), a file of NULs, and the line-protocol
reader fuzzed with Hypothesis (any bytes, cut anywhere: parsed or skipped, never an exception).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import re
import threading
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_luna import _cli as cli
from otel_luna.encoding._lineprotocol import encode
from otel_luna.encoding._reader import (
    LineProtocolSyntaxError,
    LineReader,
    parse_line,
    read_bytes,
)
from otel_luna.report import ReportError
from otel_luna.report import _png as png_module
from otel_luna.report import _source as sources
from otel_luna.schema._point import Point

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
GOOD = b'requests,route=GET:/a,service=s execution_time=0.5,request_id="r" 1000\n'


class HostileServer:
    """An aiohttp server on 127.0.0.1 answering every POST with the handler of ``shape``."""

    def __init__(self) -> None:
        self.shape: Handler = _html
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def handle(request: web.Request) -> web.StreamResponse:
            await request.read()
            return await self.shape(request)

        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", handle)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        self._ready.set()
        self._loop.run_forever()

    def report_argv(self, shape: Handler, profile: str = "luna", *more: str) -> list[str]:
        """Answer with ``shape`` from now on; the ``otel-luna report PROFILE`` arguments that
        read from this server within :data:`LIMITS` (``more`` added)."""
        self.shape = shape
        return ["report", profile, "--endpoint", self.url, *more, *LIMITS]

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()


def _fixed(body: bytes, status: int = 200, **headers: str) -> Handler:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, status=status, headers=headers)

    return answer


def _forever(piece: bytes, status: int = 200, pause: float = 0.0) -> Handler:
    """A chunked answer that never ends."""

    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=status)
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            while True:
                await response.write(piece)
                await asyncio.sleep(pause)
        except (ConnectionError, asyncio.CancelledError):
            pass
        return response

    return answer


_html = _fixed(b"<html><body><h1>Welcome to nginx!</h1></body></html>", content_type="text/html")
ROW = '{"results":[{"statement_id":0,"series":[{"name":"requests","columns":%s,"values":%s}]}]}'
INFLUXQL_SHAPES: dict[str, Handler] = {
    "html": _html,
    "truncated JSON": _fixed(b'{"results":[{"statement_id":0,"series":[{"name":"requ'),
    "results not a list": _fixed(b'{"results": 5}'),
    "a chunk not an object": _fixed(b"[1, 2]"),
    "tags not strings": _fixed(
        (ROW % ('["time","a"]', "[[1,2]]")).replace('"name"', '"tags":[1],"name"').encode()
    ),
    "a row short of a column": _fixed((ROW % ('["time","a"]', "[[1]]")).encode()),
    "no time column": _fixed((ROW % ('["a"]', "[[1]]")).encode()),
    "a time not an integer": _fixed((ROW % ('["time","a"]', '[["x",1]]')).encode()),
    "values not a list": _fixed((ROW % ('["time","a"]', '"x"')).encode()),
    "deeply nested JSON": _fixed(b"[" * 200_000),
    "huge single line": _fixed(b'{"results":"' + b"x" * (3 * 1024 * 1024) + b'"}'),
    "not UTF-8": _fixed(b'{"results":[{"series":[{"name":"\xff\xfe"}]}]}'),
    "chunked forever": _forever(b'{"results":[]}\n' * 1000),
    "trickling forever": _forever(b" ", pause=0.05),
    "500 with an endless body": _forever(b"Internal error " * 1000, status=500),
    "gzip not asked for": _fixed(gzip.compress(b"{}" * 1000), **{"Content-Encoding": "gzip"}),
}
FLUX_HEADER = "#datatype,string,long,dateTime:RFC3339,double,string,string\r\n"
FLUX_SHAPES: dict[str, Handler] = {
    "html": _html,
    "CSV with other columns": _fixed(b"a,b,c\r\n1,2,3\r\n"),
    "a cell not of its type": _fixed(
        (
            FLUX_HEADER + ",result,table,_time,_value,_field,_measurement\r\n"
            ",,0,not a time,1.0,f,requests\r\n"
        ).encode()
    ),
    "a field larger than csv allows": _fixed(b'a,"' + b"x" * 300_000 + b'"\r\n'),
    "chunked forever": _forever(b",result,table\r\n" * 1000),
}


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileServer]:
    server = HostileServer()
    yield server
    server.stop()


@pytest.fixture(autouse=True, scope="module")
def without_luna_environment() -> Iterator[None]:
    """Every test here reads only the source it names: no ``OTEL_EXPORTER_LUNA_*`` variable."""
    with pytest.MonkeyPatch.context() as patch:
        for name in [key for key in os.environ if key.startswith("OTEL_EXPORTER_LUNA_")]:
            patch.delenv(name)
        yield


def one_line_and_exit_1(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert cli.main(argv) == cli.EXIT_FAILED
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("otel-luna report: "), captured.err
    assert "Traceback" not in captured.err
    assert len(lines[0]) < 500
    return lines[0]


LIMITS = ["--max-bytes", str(1024 * 1024), "--max-time", "2s"]


@pytest.mark.parametrize("shape", INFLUXQL_SHAPES)
@pytest.mark.slow  # waits for read timeouts
def test_every_hostile_influxdb1_answer_is_one_line_and_exit_1(
    shape: str,
    hostile: HostileServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for profile in ("luna", "watchdog"):
        argv = hostile.report_argv(INFLUXQL_SHAPES[shape], profile, "--database", "db")
        line = one_line_and_exit_1(argv, capsys)
        assert hostile.url in line or "InfluxDB" in line


@pytest.mark.parametrize("shape", FLUX_SHAPES)
def test_every_hostile_influxdb2_answer_is_one_line_and_exit_1(
    shape: str,
    hostile: HostileServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_LUNA_API_VERSION", "2")
    argv = hostile.report_argv(FLUX_SHAPES[shape], "luna", "--org", "o", "--bucket", "b")
    one_line_and_exit_1(argv, capsys)


@pytest.mark.slow  # waits for read timeouts
def test_an_answer_past_max_bytes_and_max_time_says_which(
    hostile: HostileServer, capsys: pytest.CaptureFixture[str]
) -> None:
    for shape, said in (
        ("chunked forever", "answered more than 1048576 bytes (--max-bytes)"),
        ("trickling forever", "longer than --max-time"),
        ("500 with an endless body", "answered HTTP 500: Internal error"),
    ):
        argv = hostile.report_argv(INFLUXQL_SHAPES[shape])
        assert said in one_line_and_exit_1(argv, capsys)


def test_a_good_answer_within_the_limits_is_read(
    hostile: HostileServer, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _fixed((ROW % ('["time","execution_time"]', "[[1000,0.5]]")).encode())
    assert cli.main(hostile.report_argv(good)) == cli.EXIT_OK
    assert "points: 1 requests" in capsys.readouterr().out


# -- files --------------------------------------------------------------------------------------


def test_a_file_of_nuls_is_one_line_in_bounded_memory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """64 MiB of NULs (the finding: 1 GiB cost 5.6 GB): one line, exit 1, and the reading
    holds about one line's limit (4 MiB) and a piece (1 MiB), not the file."""
    nuls = tmp_path / "nul.lp"
    with nuls.open("wb") as file:
        file.truncate(64 * 1024 * 1024)
    tracemalloc.start()
    try:
        with pytest.raises(ReportError, match="no line can be read") as raised:
            sources.read_line_protocol(nuls)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024
    assert str(raised.value) == (
        f"{nuls}: no line can be read (first: line 1: longer than 4194304 bytes)"
    )
    line = one_line_and_exit_1(["report", "luna", "--file", str(nuls)], capsys)
    assert line == f"otel-luna report: {raised.value}"


def test_a_file_larger_than_max_bytes_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = tmp_path / "big.lp"
    big.write_bytes(GOOD * 1000)
    for profile in ("luna", "watchdog"):
        argv = ["report", profile, "--file", str(big), "--max-bytes", "1000"]
        line = one_line_and_exit_1(argv, capsys)
        assert line == f"otel-luna report: {big} is larger than 1000 bytes (--max-bytes)"


def test_a_fifo_is_refused_not_waited_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "fifo.lp"
    os.mkfifo(fifo)
    line = one_line_and_exit_1(["report", "luna", "--file", str(fifo)], capsys)
    assert line == f"otel-luna report: cannot read {fifo}: not a regular file"


def test_a_malformed_line_in_a_file_is_skipped_and_counted_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The finding: ``value=--1i`` raised a bare ValueError and the report ended in a
    traceback; every other malformed line (not UTF-8 included) is skipped and counted too."""
    with pytest.raises(LineProtocolSyntaxError, match="bad field value '--1i'"):
        parse_line("requests,service=s value=--1i 1")
    file = tmp_path / "bad.lp"
    file.write_bytes(
        GOOD
        + b"requests,service=s value=--1i 2\n"
        + b"requests,service=s value=1i --5\n"
        + b"requests,service=s value=\xb2i 3\n"
        + b"requests,service=\xff execution_time=1 4\n"
        + GOOD
    )
    assert cli.main(["report", "luna", "--file", str(file), "--json"]) == cli.EXIT_OK
    document = json.loads(capsys.readouterr().out)
    assert document["skipped"] == {
        "lines": 4,
        "first": "line 2: bad field value '--1i' at character 25",
    }
    read = sources.read_line_protocol(file)
    assert len(read.points) == 2
    assert read.skipped.describe().startswith("skipped 4 unreadable lines (first: line 2: ")


# -- the reader, fuzzed -------------------------------------------------------------------------


def _read_in_pieces(data: bytes, cuts: list[int], max_line_bytes: int) -> tuple[list[Point], int]:
    reader = LineReader(max_line_bytes)
    points: list[Point] = []
    start = 0
    for cut in sorted({min(c, len(data)) for c in cuts}):
        points += reader.feed(data[start:cut])
        start = cut
    points += reader.feed(data[start:])
    points += reader.finish()
    return points, reader.skipped


LINEISH = st.lists(
    st.one_of(
        st.binary(max_size=40),
        st.sampled_from(
            [
                GOOD,
                b'm s="a\nb",n=1i 5\n',
                b"m n=--1i\n",
                b'm s="unterminated\n',
                b"# comment\n",
                b"\n",
                b"m,t=\\ x f=1.5e3,b=true -7\n",
                b"\xc3",
                b'"',
                b"\\",
            ]
        ),
    ),
    max_size=30,
).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(data=LINEISH, cuts=st.lists(st.integers(0, 2000), max_size=8))
def test_the_reader_parses_or_skips_any_bytes_wherever_they_are_cut(
    data: bytes, cuts: list[int]
) -> None:
    """Any bytes, fed in any pieces: points or skipped lines, never an exception; and the
    pieces do not change what is read."""
    whole, whole_skipped = _read_in_pieces(data, [], 1 << 20)
    pieced, pieced_skipped = _read_in_pieces(data, cuts, 1 << 20)
    assert (pieced, pieced_skipped) == (whole, whole_skipped)
    # A small line limit: still never an exception.
    _read_in_pieces(data, cuts, 16)


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(
        st.one_of(
            st.integers(-(2**63), 2**63 - 1),
            st.floats(allow_nan=False, allow_infinity=False),
            st.booleans(),
            st.text(max_size=20),
        ),
        min_size=1,
        max_size=10,
    ),
    cuts=st.lists(st.integers(0, 2000), max_size=8),
)
def test_what_the_encoder_writes_the_reader_reads_back_cut_anywhere(
    values: list[int | float | bool | str], cuts: list[int]
) -> None:
    points = [
        Point("requests", (("service", "s, x"),), {"f": value, "n": 1}, 1000 + i)
        for i, value in enumerate(values)
    ]
    body = encode(points)
    read, skipped = _read_in_pieces(body, cuts, 1 << 20)
    assert skipped == 0
    assert read == read_bytes(body)[0]
    assert [p.fields["f"] for p in read] == values


def test_values_influxdb_refuses_are_skipped_and_counted_in_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Review 18 #12: a time beyond 64 bits (a period to the year 3170843), ``nan`` and
    ``1e400`` (p50 nan, max inf) were read; InfluxDB refuses them, and so does the report."""
    file = tmp_path / "odd.lp"
    file.write_bytes(
        GOOD
        + b"requests,route=GET:/x,service=s execution_time=1 99999999999999999999999999\n"
        + b"requests,route=GET:/x,service=s execution_time=nan 3\n"
        + b"requests,route=GET:/x,service=s execution_time=1e400 4\n"
        + b"requests,route=GET:/x,service=s execution_time=inf 5\n"
        + b"requests,route=GET:/x,service=s execution_time=1,n=9223372036854775808i 6\n"
        + GOOD
    )
    assert cli.main(["report", "luna", "--file", str(file), "--json"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    document = json.loads(out, parse_constant=lambda name: pytest.fail(name))
    assert document["skipped"] == {
        "lines": 5,
        "first": "line 2: timestamp out of range at character 49",
    }
    assert len(sources.read_line_protocol(file).points) == 2


def test_the_text_report_escapes_what_it_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 18 #3: a service and a route holding terminal escapes were printed raw."""
    points = [
        Point(
            "requests",
            (("route", "/esc\x1b[2J\x1b[31m"), ("service", "esc\x1b]0;pwned\x07svc\u202e")),
            {"execution_time": 0.5},
            1_795_953_600_000_000_000 + i,
        )
        for i in range(3)
    ]
    points.append(
        Point(
            "licensing",
            (("license_status", "warning"), ("service", "s")),
            {"liveness_balance": 5, "warnings": "low\nfake line\x1b[2J", "errors": ""},
            1_795_953_600_000_000_000,
        )
    )
    file = tmp_path / "escapes.lp"
    file.write_bytes(encode(points))
    assert cli.main(["report", "luna", "--file", str(file)]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "esc\\x1b]0;pwned\\x07svc\\u202e" in out and "/esc\\x1b[2J\\x1b[31m" in out
    assert "    last warnings: low\\nfake line\\x1b[2J\n" in out
    # The chart's labels (legend, titles, tick labels drawn later) hold no control character
    # either, and a "$" in a route is not mathtext.
    drawn: list[str] = []
    write_png = png_module._write_png

    def spy(figure: Any, path: Path) -> None:
        write_png(figure, path)  # draws it: tick labels exist from here
        from matplotlib.text import Text

        drawn.extend(text.get_text() for text in figure.findobj(Text))

    monkeypatch.setattr(png_module, "_write_png", spy)
    png = tmp_path / "escapes.png"
    assert cli.main(["report", "luna", "--file", str(file), "--png", str(png)]) == cli.EXIT_OK
    capsys.readouterr()
    assert any("/esc\\x1b[2J\\x1b[31m" in text for text in drawn), drawn
    assert not [text for text in drawn if re.search("[\x00-\x09\x0b-\x1f\u202e]", text)]
