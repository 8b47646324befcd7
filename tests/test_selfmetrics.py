"""otel-luna's own counters as OpenTelemetry metrics (otel_luna.*), never a LUNA series."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from otel_luna.selfmetrics import classify

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
                "luna.field.bad": float("nan")}):
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


def test_counters_are_exported_as_otel_metrics() -> None:
    """Mapped, spooled and written points, drops by reason, and spool depth are observable."""
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=60
    )
    found = json.loads(done.stdout)

    def points(outcome: str, reason: str = "") -> int:
        key = json.dumps({"outcome": outcome, "reason": reason, "signal": "traces"}, sort_keys=True)
        return int(found.get("otel_luna.points" + key, 0))

    assert points("mapped") == 4  # three requests points, one errors point
    assert points("spooled") == 4
    assert points("written") == 4
    assert points("dropped", "nonfinite_field") == 4
    assert found['otel_luna.spool.lines{"signal": "traces"}'] == 0
    assert found['otel_luna.events{"event": "server_spans", "signal": "traces"}'] == 3


def test_classify_counter_keys() -> None:
    """Counter keys map to an outcome and a reason."""
    assert classify("written") == ("written", "")
    assert classify("dropped_spool_full") == ("dropped", "spool_full")
    assert classify("backslash_in_tag_value") == ("dropped", "backslash_in_tag_value")
