"""Records SDK usages from 8 threads and some licence checks, prints what it recorded, exits.

Knows nothing of OpenTelemetry set-up: run it under ``opentelemetry-instrument`` with
``OTEL_METRICS_EXPORTER=luna OTEL_TRACES_EXPORTER=luna``.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from collections import Counter

import otel_luna
from otel_luna.schema.luna import ESTIMATORS

THREADS = 8
DURATION = float(sys.argv[1]) if len(sys.argv) > 1 else 1.5
LICENSE_CHECKS = 17


def work(seed: int, totals: Counter[str]) -> None:
    rng = random.Random(seed)
    mine: Counter[str] = Counter()
    deadline = time.monotonic() + DURATION
    while time.monotonic() < deadline:
        counts = {name: rng.randint(1, 3) for name in rng.sample(ESTIMATORS, 3)}
        otel_luna.record_usages(**counts)
        mine.update(counts)
        time.sleep(0.0005)
    totals.update(mine)  # Counter.update under the GIL from one call per thread


def main() -> None:
    totals: Counter[str] = Counter()
    threads = [threading.Thread(target=work, args=(seed, totals)) for seed in range(THREADS)]
    for thread in threads:
        thread.start()
    for index in range(LICENSE_CHECKS):
        otel_luna.record_license(
            ("ok", "warning", "error", "exception")[index % 4],
            liveness_balance=1000 - index,
            warnings=["balance is low", "expires soon"] if index % 4 == 1 else [],
            errors=["licence expired"] if index % 4 == 2 else [],
        )
    for thread in threads:
        thread.join()
    print(json.dumps({"usages": totals, "license_checks": LICENSE_CHECKS}), flush=True)


if __name__ == "__main__":
    main()
