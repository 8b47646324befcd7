"""Serves N requests as SERVER spans (nested spans, awaits, a thread with the request's
context) recording random usages, plus a background job outside any request; prints what it
recorded, exits.

Knows nothing of OpenTelemetry set-up: run it under ``opentelemetry-instrument`` with
``OTEL_TRACES_EXPORTER=luna OTEL_METRICS_EXPORTER=luna`` (and ``OTEL_EXPORTER_LUNA_USAGES``).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import threading
from collections import Counter

from opentelemetry import context, trace

import otel_luna
from otel_luna.schema.luna import ESTIMATORS

COUNT = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
HTTP = {"http.request.method": "POST", "http.route": "/detector", "http.response.status_code": 200}

tracer = trace.get_tracer("usages-requests")


def record(rng: random.Random, totals: Counter[str]) -> None:
    counts = {name: rng.randint(0, 3) for name in rng.sample(ESTIMATORS, rng.randint(0, 3))}
    otel_luna.record_usages(**counts)
    totals.update({name: count for name, count in counts.items() if count})


async def request(index: int, totals: Counter[str]) -> bool:
    """One request; whether it recorded a usage."""
    rng = random.Random(index)
    mine: Counter[str] = Counter()
    with tracer.start_as_current_span("POST /detector", kind=trace.SpanKind.SERVER) as span:
        span.set_attributes(HTTP)
        otel_luna.set_request_id(f"r{index}")
        if index % 5 == 0:
            pass  # no estimation
        else:
            record(rng, mine)
            with tracer.start_as_current_span("stage"):
                await asyncio.sleep(0)
                record(rng, mine)
            await asyncio.sleep(0)
            record(rng, mine)
            if index % 7 == 0:  # a thread working for the request, in its context
                ctx = context.get_current()
                seed = rng.random()

                def work() -> None:
                    token = context.attach(ctx)
                    try:
                        record(random.Random(seed), mine)
                    finally:
                        context.detach(token)

                thread = threading.Thread(target=work)
                thread.start()
                thread.join()
    totals.update(mine)
    return bool(mine)


async def main() -> None:
    totals: Counter[str] = Counter()
    with_usages = 0
    for start in range(0, COUNT, 50):
        done = await asyncio.gather(
            *(request(index, totals) for index in range(start, min(start + 50, COUNT)))
        )
        with_usages += sum(done)
    job: Counter[str] = Counter({"body_detector": 7, "face_detector": 2})
    otel_luna.record_usages(**job)  # a background job outside any request: the counter
    totals.update(job)
    print(json.dumps({"usages": totals, "requests_with_usages": with_usages}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
