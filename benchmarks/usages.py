"""record_usages(...) cost per call as a ratio to what it stands for, in both of its paths.

* Outside a request (the counter): ratio to bare Counter.add calls of the same counts, against
  the same SDK MeterProvider (delta temporality, an in-memory reader). Target: <= 1.5x.
* Inside a request (usages = request, the default): ratio to one bare ``span.set_attributes``
  of the same ``luna.usages.*`` keys on the same recording span (which does not sum).

Interleaved in rounds so machine noise hits both alike; the median round ratio is the figure.
Usage: python benchmarks/usages.py [--rounds 15] [--n 20000] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import Counter, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider

import otel_luna
from otel_luna._attributes import ESTIMATOR, USAGES_INSTRUMENT, USAGES_PREFIX

COUNTS = {"face_detector": 1, "liveness_estimator": 2, "mask_estimator": 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--n", type=int, default=20_000, help="calls per round")
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args()

    reader = InMemoryMetricReader(preferred_temporality={Counter: AggregationTemporality.DELTA})
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    otel_luna.record_usages(**COUNTS)  # creates the counter through the global provider
    counter = metrics.get_meter("bench").create_counter(USAGES_INSTRUMENT + ".bare")

    def bare(n: int) -> float:
        add = counter.add
        start = time.perf_counter()
        for _ in range(n):
            add(1, {ESTIMATOR: "face_detector"})
            add(2, {ESTIMATOR: "liveness_estimator"})
            add(1, {ESTIMATOR: "mask_estimator"})
        return time.perf_counter() - start

    def ours(n: int) -> float:
        record = otel_luna.record_usages
        start = time.perf_counter()
        for _ in range(n):
            record(face_detector=1, liveness_estimator=2, mask_estimator=1)
        return time.perf_counter() - start

    tracer = TracerProvider().get_tracer("bench")
    keys = {USAGES_PREFIX + name: count for name, count in COUNTS.items()}

    def bare_span(n: int) -> float:
        with tracer.start_as_current_span("request", kind=trace.SpanKind.SERVER) as span:
            set_attributes = span.set_attributes
            start = time.perf_counter()
            for _ in range(n):
                set_attributes(keys)
            return time.perf_counter() - start

    def ours_span(n: int) -> float:
        with tracer.start_as_current_span("request", kind=trace.SpanKind.SERVER):
            record = otel_luna.record_usages
            start = time.perf_counter()
            for _ in range(n):
                record(face_detector=1, liveness_estimator=2, mask_estimator=1)
            return time.perf_counter() - start

    bare(1000), ours(1000), bare_span(1000), ours_span(1000)
    ratios, bare_us, ours_us, span_ratios, span_us = [], [], [], [], []
    for _ in range(options.rounds):
        b, o = bare(options.n), ours(options.n)
        ratios.append(o / b)
        bare_us.append(b / options.n * 1e6)
        ours_us.append(o / options.n * 1e6)
        reader.get_metrics_data()  # collect, as a periodic reader would
        b, o = bare_span(options.n), ours_span(options.n)
        span_ratios.append(o / b)
        span_us.append(o / options.n * 1e6)
    result = {
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "bare_us_per_call": statistics.median(bare_us),
        "record_usages_us_per_call": statistics.median(ours_us),
        "estimators_per_call": len(COUNTS),
        "target": 1.5,
        "in_request_ratio_median": statistics.median(span_ratios),
        "in_request_ratio_min": min(span_ratios),
        "in_request_ratio_max": max(span_ratios),
        "in_request_us_per_call": statistics.median(span_us),
    }
    if options.json:
        print(json.dumps(result))
        return
    print(f"record_usages({len(COUNTS)} estimators) vs {len(COUNTS)} bare Counter.add calls")
    print(f"  bare Counter.add x{len(COUNTS)}: {result['bare_us_per_call']:.2f} us/call")
    print(f"  record_usages:      {result['record_usages_us_per_call']:.2f} us/call")
    print(
        f"  ratio: {result['ratio_median']:.2f} (min {result['ratio_min']:.2f}, "
        f"max {result['ratio_max']:.2f}; target <= 1.5)"
    )
    print(f"record_usages in a request: {result['in_request_us_per_call']:.2f} us/call")
    print(
        f"  ratio to one bare span.set_attributes: {result['in_request_ratio_median']:.2f} "
        f"(min {result['in_request_ratio_min']:.2f}, max {result['in_request_ratio_max']:.2f})"
    )


if __name__ == "__main__":
    main()
