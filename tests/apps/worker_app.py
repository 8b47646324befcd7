"""A plain Python worker for the deployment tests: no web server, no signal handler of its own.

It reads request ids from standard input, one a line, and records one SERVER span per id (as a
queue consumer would), answering ``recorded ID`` on standard output. It prints ``ready`` first.
Run it unchanged under ``opentelemetry-instrument``; nothing in it flushes or shuts down the SDK.

``--own-handler`` installs, after start-up (so after the exporter), a SIGTERM handler that
prints ``app handler ran`` and exits with status 0 through ``sys.exit``.
"""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

from opentelemetry import trace

import otel_luna


def own_handler(signum: int, frame: FrameType | None) -> None:
    print("app handler ran", flush=True)
    sys.exit(0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--own-handler", action="store_true")
    if parser.parse_args().own_handler:
        signal.signal(signal.SIGTERM, own_handler)
    tracer = trace.get_tracer("worker_app")
    attributes: dict[str, str | int] = {
        "http.method": "POST",
        "http.route": "/jobs",
        "http.status_code": 200,
    }
    print("ready", flush=True)
    for line in sys.stdin:
        request_id = line.strip()
        with tracer.start_as_current_span("job", kind=trace.SpanKind.SERVER, attributes=attributes):
            otel_luna.set_request_id(request_id)
        print(f"recorded {request_id}", flush=True)
    # Standard input closed: wait for the signal like a server would.
    signal.pause()


if __name__ == "__main__":
    main()
