"""LunaSpanExporter: loads by name, never raises into the SDK, flushes at shutdown."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.util._importlib_metadata import entry_points

from otel_luna._exporter import LunaSpanExporter
from otel_luna.settings import Settings, SettingsError
from otel_luna.testing import InMemorySink, in_memory_exporter


def test_registered_under_the_luna_name() -> None:
    """Entry point opentelemetry_traces_exporter/luna loads LunaSpanExporter."""
    (found,) = entry_points(group="opentelemetry_traces_exporter", name="luna")
    assert found.load() is LunaSpanExporter


def test_no_argument_constructor_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """LunaSpanExporter() takes its settings from OTEL_EXPORTER_LUNA_* variables."""
    target = tmp_path / "out.lp"
    monkeypatch.setenv("OTEL_EXPORTER_LUNA_ENDPOINT", f"file://{target}")
    exporter = LunaSpanExporter()
    assert exporter.settings.sink_name == "file"
    exporter.shutdown()


def test_bad_setting_fails_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad value is found when the exporter is built, naming the setting: settings given in
    code raise; read from the environment, the exporter says why and does nothing (see
    tests/settings/test_settings_errors.py)."""
    with pytest.raises(SettingsError, match="OTEL_EXPORTER_LUNA_BATCH_SIZE"):
        LunaSpanExporter(Settings.load({"OTEL_EXPORTER_LUNA_BATCH_SIZE": "many"}))
    monkeypatch.setenv("OTEL_EXPORTER_LUNA_BATCH_SIZE", "many")
    exporter = LunaSpanExporter()
    assert exporter.settings_error is not None
    assert exporter.settings_error.setting == "OTEL_EXPORTER_LUNA_BATCH_SIZE"
    assert not exporter.settings.enabled
    exporter.shutdown()


def test_export_never_raises() -> None:
    """Garbage handed to export() gives FAILURE and a count, not an exception."""
    exporter, _ = in_memory_exporter()
    garbage: Any = [object(), None]
    assert exporter.export(garbage) is SpanExportResult.FAILURE
    assert exporter.counts["export_error"] == 2
    exporter.shutdown()


def test_disabled_exporter_writes_nothing() -> None:
    """send_data_for_monitoring = false makes the exporter a no-op."""
    sink = InMemorySink()
    exporter = LunaSpanExporter(Settings.load({}, enabled=False), sink=sink)
    spans: list[ReadableSpan] = []
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    exporter.shutdown()
    assert sink.lines == []


@pytest.mark.slow  # a child process
def test_process_exit_flushes(tmp_path: Path) -> None:
    """A script that records a request and exits at once still has its points written."""
    target = tmp_path / "exit.lp"
    script = textwrap.dedent(
        """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from otel_luna import LunaSpanExporter
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(LunaSpanExporter()))
        tracer = provider.get_tracer("t")
        for _ in range(25):
            with tracer.start_as_current_span("r", kind=trace.SpanKind.SERVER,
                    attributes={"http.method": "GET", "http.route": "/v", "http.status_code": 200}):
                pass
        """
    )
    env = {
        **os.environ,
        "OTEL_EXPORTER_LUNA_ENDPOINT": f"file://{target}",
        "OTEL_EXPORTER_LUNA_FLUSH_INTERVAL": "3600",
        "OTEL_SERVICE_NAME": "svc",
    }
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)
    lines = target.read_text().splitlines()
    assert len(lines) == 25
    assert all(
        line.startswith("requests,route=GET:/v,service=svc,status_code=200 ") for line in lines
    )
