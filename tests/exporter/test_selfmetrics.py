"""otel-luna's own counters as OpenTelemetry metrics (otel_luna.*), never a LUNA series."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from otel_luna.outcomes import Outcome, Reason

SCRIPT = textwrap.dedent(
    """
    import json
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from otel_luna.testing import in_memory_exporter

    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    exporter, sink = in_memory_exporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    for status in (200, 200, 500):
        with tracer.start_as_current_span("r", kind=trace.SpanKind.SERVER, attributes={
                "http.method": "GET", "http.route": "/v", "http.status_code": status,
                "luna.field.bad_seconds": float("nan")}):
            pass
    exporter.force_flush()
    found = {}
    for rm in reader.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for point in metric.data.data_points:
                    key = metric.name + json.dumps(dict(point.attributes), sort_keys=True)
                    found[key] = point.value
    print(json.dumps(found))
    """
)


@pytest.mark.slow  # a child process
def test_counters_are_exported_as_otel_metrics() -> None:
    """Mapped, spooled and written points, drops by reason, and spool depth are observable."""
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=60
    )
    found = json.loads(done.stdout)

    def points(outcome: str, reason: str = "", signal: str | None = "traces") -> int:
        attributes = {"outcome": outcome, "reason": reason}
        if signal is not None:
            attributes["signal"] = signal
        return int(found.get("otel_luna.points" + json.dumps(attributes, sort_keys=True), 0))

    assert points("mapped") == 4  # three requests points, one errors point
    assert points("spooled", signal=None) == 4  # delivery is one per destination: no signal
    assert points("written", signal=None) == 4
    assert points("value_dropped", "nonfinite_field") == 4  # written without the field
    assert found["otel_luna.spool.lines{}"] == 0
    assert found['otel_luna.events{"event": "server_spans", "signal": "traces"}'] == 3


def test_every_counter_has_an_outcome_and_a_reason_label() -> None:
    """The self-metric labels come from the Reason itself, never guessed from a name."""
    assert (Reason.WRITTEN.outcome, Reason.WRITTEN.label) == (Outcome.WRITTEN, "")
    assert (Reason.DROPPED_SPOOL_FULL.outcome, Reason.DROPPED_SPOOL_FULL.label) == (
        Outcome.DROPPED,
        "spool_full",
    )
    assert Reason.BACKSLASH_IN_TAG_VALUE.outcome is Outcome.REJECTED
    assert Reason.TRUNCATED_STRING.outcome is Outcome.VALUE_DROPPED  # the point is written
    assert Reason.WRITER_ERRORS.outcome is Outcome.EVENT  # not a dropped point
    assert Reason.of("replayed_lines") is Reason.REPLAYED_LINES
    assert all(isinstance(reason.outcome, Outcome) for reason in Reason)


APP = textwrap.dedent(
    """
    from opentelemetry import metrics, trace

    tracer = trace.get_tracer("t")
    for status in (200, 500):
        with tracer.start_as_current_span("GET /v", kind=trace.SpanKind.SERVER, attributes={
                "http.request.method": "GET", "http.route": "/v",
                "http.response.status_code": status}):
            pass
    trace.get_tracer_provider().force_flush()
    metrics.get_meter_provider().force_flush()
    """
)


@pytest.mark.slow  # an app under opentelemetry-instrument
def test_in_an_app_the_counters_reach_the_other_metric_exporter(tmp_path: Path) -> None:
    """Under opentelemetry-instrument with ``OTEL_METRICS_EXPORTER=luna,console`` the
    ``otel_luna.*`` counters reach the console exporter (the app's own pipeline); the luna
    exporter writes no series of them."""
    script = tmp_path / "app.py"
    script.write_text(APP)
    output = tmp_path / "points.lp"
    env = {
        **os.environ,
        "OTEL_TRACES_EXPORTER": "luna",
        "OTEL_METRICS_EXPORTER": "luna,console",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_METRIC_EXPORT_INTERVAL": "60000",
        "OTEL_EXPORTER_LUNA_ENDPOINT": output.as_uri(),
    }
    done = subprocess.run(
        [str(Path(sys.executable).parent / "opentelemetry-instrument"), sys.executable, script],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    decoder = json.JSONDecoder()
    text, exports = done.stdout.strip(), []
    while text:
        document, end = decoder.raw_decode(text)
        exports.append(document)
        text = text[end:].lstrip()
    written = [
        point["value"]
        for metric in _metrics(exports[0])  # the app's force_flush: after its spans were written
        if metric["name"] == "otel_luna.points"
        for point in metric["data"]["data_points"]
        if point["attributes"] == {"outcome": "written", "reason": ""}
    ]
    assert written == [3]  # two requests points and one errors point
    assert [line.split(",")[0] for line in output.read_text().splitlines()].count("requests") == 2
    assert "otel_luna" not in output.read_text()


def _metrics(export: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        metric
        for resource in export["resource_metrics"]
        for scope in resource["scope_metrics"]
        for metric in scope["metrics"]
    ]
