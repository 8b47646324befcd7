"""The README's quick start, run as written: its lines (between ``<!-- quickstart`` and
``<!-- end of quickstart -->``) in a fresh venv with the wheel of this checkout, on an app of the
test's own, against a real InfluxDB 1.x. Only the endpoint's URL and the database name are
replaced (the test's InfluxDB listens on a free port)."""

from __future__ import annotations

import re
import signal
import subprocess
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.servers import InfluxDB1
from tests.support.wheelvenv import ROOT, Venv, fresh_venv

README = ROOT / "README.md"
#: The values of the README that the test replaces with its own server's.
README_ENDPOINT = "http://127.0.0.1:8086"
README_DATABASE = "luna_monitoring"
START_TIMEOUT = 600.0  # pip install runs first
STOP_TIMEOUT = 60.0

APP = textwrap.dedent(
    '''
    """A small aiohttp service: two routes, a failing one, usages and a licence check."""
    import asyncio
    import os
    import signal

    from aiohttp import web

    import otel_luna


    async def item(request):
        otel_luna.add_tags(item_id=request.match_info["item_id"])
        with otel_luna.monitor_time("download_images_time"):
            await asyncio.sleep(0.001)
        otel_luna.record_usages(face_detector=2)
        return web.json_response({"ok": True}, status=201)


    async def missing(request):
        otel_luna.set_error(22002)
        return web.json_response({"error_code": 22002}, status=404)


    async def main():
        otel_luna.record_license("ok", 7)
        app = web.Application()
        app.router.add_post("/items/{item_id}", item)
        app.router.add_get("/missing", missing)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", int(os.environ.get("APP_PORT", "0")))
        await site.start()
        print(f"listening on http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await runner.cleanup()


    asyncio.run(main())
    '''
)


def quickstart_lines() -> list[str]:
    """The command lines of the README's quick-start block."""
    text = README.read_text()
    block = r"<!-- quickstart.*?-->\n```sh\n(.*?)```\n<!-- end of quickstart -->"
    found = re.search(block, text, re.S)
    assert found, "README.md has no quick-start block"
    return [line for line in found.group(1).splitlines() if line.strip()]


def run_quick_start(venv: Venv, work: Path, endpoint: str, database: str) -> str:
    """Run the README's quick-start lines in ``venv`` on :data:`APP` in ``work`` (its endpoint
    and database replaced), send it three good requests and a failing one, stop it with SIGTERM
    (it must exit 0); its standard error."""
    lines = quickstart_lines()
    script = (
        # aiohttp is the test app's own framework: otel-luna (its core) does not bring it
        "\n".join(["set -eu", "pip install --quiet aiohttp", *lines[:-1], "exec " + lines[-1]])
        .replace(README_ENDPOINT, endpoint)
        .replace(README_DATABASE, database)
    )
    work.mkdir()
    (work / "app.py").write_text(APP)

    app = subprocess.Popen(
        ["bash", "-c", script],
        cwd=work,
        env=venv.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    output: list[str] = []
    errors: list[str] = []
    listening = threading.Event()

    def read_stdout() -> None:
        assert app.stdout is not None
        for line in app.stdout:
            output.append(line)
            if line.startswith("listening on "):
                listening.set()

    def read_stderr() -> None:
        assert app.stderr is not None
        errors.extend(app.stderr)

    readers = [threading.Thread(target=read_stdout), threading.Thread(target=read_stderr)]
    for reader in readers:
        reader.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not listening.wait(0.1):
            assert app.poll() is None, "".join(output + errors)[-3000:]
            assert time.monotonic() < deadline, "the app did not start"
        url = next(line for line in output if line.startswith("listening on ")).split()[-1]
        for item_id in ("a", "b", "a"):
            request = urllib.request.Request(f"{url}/items/{item_id}", data=b"{}", method="POST")
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 201
        try:
            urllib.request.urlopen(f"{url}/missing", timeout=10)
        except urllib.error.HTTPError as error:
            assert error.code == 404
        app.send_signal(signal.SIGTERM)
        assert app.wait(timeout=STOP_TIMEOUT) == 0, "".join(errors)[-3000:]
    finally:
        if app.poll() is None:
            app.kill()
            app.wait()
        for reader in readers:
            reader.join(timeout=10)

    return "".join(errors)


def test_quick_start_block_has_the_documented_shape() -> None:
    """The block installs with pip, selects luna for traces and metrics and no logs, and starts
    the app under opentelemetry-instrument."""
    lines = quickstart_lines()
    assert lines[0].startswith("pip install otel-luna ")
    assert "opentelemetry-distro" in lines[0].split()
    exports = " ".join(line for line in lines if line.startswith("export "))
    for setting in (
        "OTEL_TRACES_EXPORTER=luna",
        "OTEL_METRICS_EXPORTER=luna",
        "OTEL_LOGS_EXPORTER=none",
        f"OTEL_EXPORTER_LUNA_ENDPOINT={README_ENDPOINT}",
        f"OTEL_EXPORTER_LUNA_DATABASE={README_DATABASE}",
    ):
        assert setting in exports.split()
    assert lines[-1] == "opentelemetry-instrument python app.py"


def test_readme_quick_start_writes_the_luna_series(influxdb1: InfluxDB1, tmp_path: Path) -> None:
    """The README's lines, run in a fresh venv (opentelemetry-distro installed, no OTLP
    exporter), instrument an app with no code change: requests, errors, usages_statistic and
    licensing points land in InfluxDB, and nothing fails at start-up."""
    venv = fresh_venv(tmp_path)
    database = influxdb1.fresh_database("quickstart")
    stderr = run_quick_start(venv, tmp_path / "work", influxdb1.url, database)
    assert "Traceback" not in stderr and "not found in entry point" not in stderr, stderr
    installed = subprocess.run(
        ["pip", "list", "--format=freeze"], env=venv.env, capture_output=True, text=True, check=True
    ).stdout
    assert "opentelemetry-distro==" in installed
    assert "opentelemetry-exporter-otlp" not in installed  # the case the README warns about

    try:
        requests = influxdb1.select("SELECT * FROM requests", database)
        errors_rows = influxdb1.select("SELECT * FROM errors", database)
        usages = influxdb1.select("SELECT * FROM usages_statistic", database)
        licensing = influxdb1.select("SELECT * FROM licensing", database)
    finally:
        influxdb1.drop_database(database)
    assert sorted((row["route"], row["status_code"]) for row in requests) == [
        ("GET:/missing", "404"),
        ("POST:/items/{item_id}", "201"),
        ("POST:/items/{item_id}", "201"),
        ("POST:/items/{item_id}", "201"),
    ]
    assert {row["service"] for row in requests} == {"luna-handlers"}
    assert sorted(row["item_id"] or "" for row in requests) == ["", "a", "a", "b"]
    assert all(
        isinstance(row["download_images_time"], float)
        for row in requests
        if row["route"] == "POST:/items/{item_id}"
    )
    assert [(row["route"], row["error_code"]) for row in errors_rows] == [("GET:/missing", "22002")]
    assert sum(row["face_detector_usages"] for row in usages) == 6
    assert [(row["license_status"], row["liveness_balance"]) for row in licensing] == [("ok", 7)]
