"""The exporter's own HTTP writes are never traced, even with urllib3 auto-instrumented."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.support.servers import InfluxDB1

SCRIPT = textwrap.dedent(
    """
    import sys, urllib3
    from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from otel_luna.delivery._writer import BatchWriter
    from otel_luna.settings import Settings
    from otel_luna.sinks import load_sink
    from otel_luna.delivery._memory_spool import MemorySpool

    url, database = sys.argv[1], sys.argv[2]
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    URLLib3Instrumentor().instrument(tracer_provider=provider)
    urllib3.PoolManager().request("GET", url + "/ping")  # instrumentation is live
    assert len(memory.get_finished_spans()) == 1, memory.get_finished_spans()
    sink = load_sink(Settings.load({}, endpoint=url, database=database))
    writer = BatchWriter(sink, MemorySpool(10**6), flush_interval=0.05, batch_size=100)
    writer.submit(["m x=1i 1"])
    assert writer.force_flush(10)
    writer.shutdown(10)
    assert writer.counts["written"] == 1
    print(len(memory.get_finished_spans()))
    """
)


def test_writes_are_not_traced(influxdb1: InfluxDB1, influxdb1_database: str) -> None:
    """With urllib3 instrumented, the writer's /write calls produce no span."""
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, influxdb1.url, influxdb1_database],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"  # only the test's own /ping
    assert influxdb1.select("SELECT * FROM m", influxdb1_database)[0]["x"] == 1
