"""Fork safety: each forked child delivers through its own spool and worker; nothing lost or
written twice, also when a child exits without flushing."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import multiprocessing, os, sys
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    import otel_luna
    from otel_luna import LunaSpanExporter, Settings
    from otel_luna import delivery

    delivery.ADOPT_INTERVAL = 0.2
    target, spool = sys.argv[1], sys.argv[2]
    exporter = LunaSpanExporter(Settings.load(
        {}, endpoint="file://" + target, spool_dir=spool, flush_interval=0.1))
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("fork-test")

    def request(request_id):
        attributes = {"http.method": "GET", "http.route": "/v", "http.status_code": 200}
        with tracer.start_as_current_span("r", kind=trace.SpanKind.SERVER, attributes=attributes):
            otel_luna.set_request_id(request_id)

    for index in range(5):
        request(f"parent-{index}")

    def child(name, flush):
        for index in range(20):
            request(f"{name}-{index}")
        if flush:
            provider.force_flush()
        # multiprocessing ends the child with os._exit: no atexit, no shutdown

    context = multiprocessing.get_context("fork")
    children = [context.Process(target=child, args=(f"child{n}", n == 0)) for n in range(3)]
    for process in children:
        process.start()
    for process in children:
        process.join()
        assert process.exitcode == 0, process.exitcode
    for index in range(5):
        request(f"parent-late-{index}")
    # The parent delivers its own lines and adopts what the children left in their spools.
    import time
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        exporter.force_flush(5000)
        lines = open(target).read().count(chr(10))
        if lines >= 70:
            break
        time.sleep(0.1)
    provider.shutdown()
    """
)


def test_forked_children_deliver_everything_once(tmp_path: Path) -> None:
    """Parent and 3 forked children: every request's point exactly once, none lost."""
    target = tmp_path / "out.lp"
    spool = tmp_path / "spool"
    subprocess.run([sys.executable, "-c", SCRIPT, str(target), str(spool)], check=True, timeout=120)
    ids = Counter(
        line.split('request_id="')[1].split('"')[0] for line in target.read_text().splitlines()
    )
    expected = {f"parent-{i}" for i in range(5)} | {f"parent-late-{i}" for i in range(5)}
    expected |= {f"child{n}-{i}" for n in range(3) for i in range(20)}
    assert set(ids) == expected
    assert max(ids.values()) == 1
    leftover = [path for path in spool.rglob("*.seg") if path.stat().st_size]
    assert leftover == []
