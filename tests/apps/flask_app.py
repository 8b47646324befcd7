"""A luna-handlers-like Flask app for the tests; knows nothing of OpenTelemetry setup.

Run it unchanged under ``opentelemetry-instrument``; it prints ``listening on URL`` once bound.
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


@app.post("/extractor")
def extractor():  # type: ignore[no-untyped-def]
    with otel_luna.monitor_time("save_samples_time"):
        pass
    if request.args.get("bad"):
        otel_luna.set_error(12031)
        return jsonify(error_code=12031), 400
    return jsonify(ok=True), 201


@app.post("/handlers/<handler_id>/events")
def events(handler_id: str):  # type: ignore[no-untyped-def]
    otel_luna.add_tags(handler_id=handler_id)
    with otel_luna.monitor_time("download_images_time"):
        pass
    with otel_luna.monitor_time("event_storage_policy_time"):
        pass
    return jsonify(events=[]), 201


@app.get("/version")
def version():  # type: ignore[no-untyped-def]
    return jsonify(version="5.0.0")


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
