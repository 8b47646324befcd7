"""A Flask app for the reliability tests: each request's point carries the client's request id.

``POST /work`` with header ``X-Request-Id: ID`` answers 200 and writes ``ID`` in the
``request_id`` field of its ``requests`` point, so a test can compare the exact set of ids it
sent with the set InfluxDB holds. Run it unchanged under ``opentelemetry-instrument``; it prints
``listening on URL`` once bound and exits cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from flask import Flask, jsonify, request
from werkzeug.serving import make_server

import otel_luna

app = Flask(__name__)


@app.post("/work")
def work():  # type: ignore[no-untyped-def]
    request_id = request.headers["X-Request-Id"]
    otel_luna.set_request_id(request_id)
    with otel_luna.monitor_time("save_samples_time"):
        pass
    return jsonify(request_id=request_id), 200


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    port = parser.parse_args().port
    server = make_server("127.0.0.1", port, app, threaded=True)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"listening on http://127.0.0.1:{server.server_port}", flush=True)
    server.serve_forever()
    sys.exit(0)


if __name__ == "__main__":
    main()
