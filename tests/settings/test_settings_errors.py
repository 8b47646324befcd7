"""A bad setting where ``opentelemetry-instrument`` builds the exporters: one log line naming the
setting and what it accepts, no traceback, the app running on without the luna exporter; with
``OTEL_EXPORTER_LUNA_STRICT=true`` the process ends at start-up instead."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from otel_luna import _exporter as exporter_module
from otel_luna._exporter import EXIT_BAD_SETTING, LunaMetricExporter, LunaSpanExporter
from otel_luna.settings._settings import strict_requested

pytestmark = pytest.mark.slow  # apps under opentelemetry-instrument

INSTRUMENT = Path(sys.executable).parent / "opentelemetry-instrument"
ROOT = Path(__file__).resolve().parent.parent.parent
APP = textwrap.dedent(
    """
    from opentelemetry import trace
    with trace.get_tracer("app").start_as_current_span("the-app-span"):
        pass
    print("the app ran", flush=True)
    """
)
MESSAGE = (
    "otel-luna: OTEL_EXPORTER_LUNA_FLUSH_INTERVAL: bad value 'abc': not a number; "
    "accepts seconds from 0.01 to 3600; "
)


def run_instrumented(
    tmp_path: Path, *, metrics_exporter: str = "luna", **settings: str
) -> subprocess.CompletedProcess[str]:
    """The app under opentelemetry-instrument with luna (and console) traces, the
    ``metrics_exporter`` (luna) and the OTEL_EXPORTER_LUNA_* ``settings``."""
    (tmp_path / "app.py").write_text(APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        OTEL_TRACES_EXPORTER="luna,console",
        OTEL_METRICS_EXPORTER=metrics_exporter,
        OTEL_LOGS_EXPORTER="none",
        OTEL_EXPORTER_LUNA_SPOOL_DIR=str(tmp_path / "spool"),
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    env.update({f"OTEL_EXPORTER_LUNA_{name.upper()}": value for name, value in settings.items()})
    return subprocess.run(
        [str(INSTRUMENT), sys.executable, "app.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_bad_setting_is_one_line_and_the_app_runs_without_luna(tmp_path: Path) -> None:
    """Both luna exporters refuse the setting in one line together, no traceback; the app runs
    and the other exporter (console) still gets its span."""
    done = run_instrumented(tmp_path, flush_interval="abc")
    assert done.returncode == 0, done.stderr
    assert "the app ran" in done.stdout
    assert '"name": "the-app-span"' in done.stdout  # OpenTelemetry itself still works
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if "otel-luna" in line]
    assert lines == [
        MESSAGE + "the luna exporter is off and the app runs without it "
        "(OTEL_EXPORTER_LUNA_STRICT=true stops the process instead)"
    ]
    assert not (tmp_path / "spool").exists()  # nothing was spooled


def test_strict_ends_the_process_at_start_up(tmp_path: Path) -> None:
    """OTEL_EXPORTER_LUNA_STRICT=true: the same one line, then exit status 2 before the app runs."""
    done = run_instrumented(tmp_path, flush_interval="abc", strict="true")
    assert done.returncode == EXIT_BAD_SETTING == 2
    assert "the app ran" not in done.stdout
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if "otel-luna" in line]
    assert lines == [MESSAGE + "stopping the process (OTEL_EXPORTER_LUNA_STRICT is set)"]


def test_strict_with_good_settings_changes_nothing(tmp_path: Path) -> None:
    """Strict and valid settings: the app runs as usual, nothing is logged."""
    done = run_instrumented(tmp_path, strict="true", endpoint=f"file://{tmp_path}/out.lp")
    assert done.returncode == 0, done.stderr
    assert "the app ran" in done.stdout and "otel-luna" not in done.stderr


def test_in_process_the_exporters_log_once_and_strict_calls_exit(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Built from the environment, both exporters share one log record; strict calls the exit
    with status 2."""
    monkeypatch.setattr(exporter_module, "_refused", set())
    monkeypatch.setenv("OTEL_EXPORTER_LUNA_TIMEOUT", "0")
    with caplog.at_level(logging.ERROR, logger="otel_luna._exporter"):
        spans, metrics = LunaSpanExporter(), LunaMetricExporter()
    assert spans.settings_error is not None and metrics.settings_error is not None
    assert [r.getMessage() for r in caplog.records] == [
        "otel-luna: OTEL_EXPORTER_LUNA_TIMEOUT: bad value '0': out of range; accepts seconds "
        "from 0.1 to 600; the luna exporter is off and the app runs without it "
        "(OTEL_EXPORTER_LUNA_STRICT=true stops the process instead)"
    ]
    spans.shutdown()
    metrics.shutdown()

    exits: list[int] = []
    monkeypatch.setattr(exporter_module, "_exit", exits.append)
    monkeypatch.setenv("OTEL_EXPORTER_LUNA_STRICT", "1")
    LunaSpanExporter().shutdown()
    assert exits == [2]


@pytest.mark.parametrize(
    ("value", "strict"),
    [
        (None, False),
        ("", False),
        ("false", False),
        ("0", False),
        ("true", True),
        ("on", True),
        ("please", True),
    ],
)
def test_strict_is_read_on_its_own(value: str | None, strict: bool) -> None:
    """The strict setting is read apart from the others; a value that is no boolean is true."""
    env = {"OTEL_EXPORTER_LUNA_TIMEOUT": "0"}
    if value is not None:
        env["OTEL_EXPORTER_LUNA_STRICT"] = value
    assert strict_requested(env) is strict


def test_strict_from_the_toml_file(tmp_path: Path) -> None:
    """`strict = true` in the [monitoring] section counts too."""
    config = tmp_path / "luna.toml"
    config.write_text("[monitoring]\nstrict = true\nflushing_period = 'x'\n")
    assert strict_requested({"OTEL_EXPORTER_LUNA_CONFIG": str(config)})
