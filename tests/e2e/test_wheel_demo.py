"""``pip install 'otel-luna[demo]'`` then ``otel-luna demo``, as a user runs them: the wheel of this
checkout in a fresh venv, the demo started from a directory of its own."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from otel_luna import demo
from otel_luna.demo import _app as demo_app
from otel_luna.demo import _verify as verify
from tests.support.wheelvenv import fresh_venv


def test_installed_wheel_runs_the_demo_from_any_directory(tmp_path: Path) -> None:
    """The wheel ships the example service: installed with the demo extra, `otel-luna demo`
    run elsewhere exits 0, writes luna-demo.lp in its working directory and prints the summary
    of the four series."""
    venv = fresh_venv(tmp_path)
    work = tmp_path / "somewhere else"
    work.mkdir()
    installed = subprocess.run(
        ["pip", "install", "--quiet", "otel-luna[demo]"],
        cwd=work,
        env=venv.env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    done = subprocess.run(
        [str(venv.bin / "otel-luna"), "demo", "--requests", "60", "--seed", "4"],
        cwd=work,
        env=venv.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    app = venv.path / "lib"
    assert (
        str(app)
        in subprocess.run(
            [
                str(venv.bin / "python"),
                "-c",
                "from otel_luna.demo import EXAMPLE_APP; print(EXAMPLE_APP)",
            ],
            cwd=work,
            env=venv.env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )  # the installed copy, not this checkout's
    lp = work / demo_app.DEFAULT_FILE_NAME
    summary = verify.summarize(verify.read_line_protocol(lp))
    assert summary.points["requests"] == 60
    assert summary.points["usages_statistic"] >= 1 and summary.points["licensing"] == 1
    assert verify.format_summary(summary) in done.stdout
    assert f"series in {lp}:" in done.stdout
    assert ": ok" in done.stdout
    bar = re.search(r"60/60 requests +([\d.]+) s", done.stderr)
    sent = re.search(r"sent 60 requests \(\d+ failing\) in ([\d.]+) s", done.stdout)
    assert bar and sent and bar.group(1) == sent.group(1)  # one time, shown twice
    # ... and ends with `otel-luna report luna` of those points, charted beside them
    assert f"luna report: file {lp}, service luna-handlers" in done.stdout
    assert re.search(r"^  all routes +60 ", done.stdout, re.M)
    chart = work / demo.DEFAULT_PNG_NAME
    assert f"chart: {chart}" in done.stdout
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 50_000
