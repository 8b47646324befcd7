"""A Flask (WSGI) app for gunicorn in the deployment tests; knows nothing of OpenTelemetry set-up.

Importing it checks the licence, as luna services do at start: with ``gunicorn --preload`` that
happens once, in the master, before the workers are forked. ``POST /work?hold=SECONDS`` with
header ``X-Request-Id: ID`` writes ``ID`` in the ``request_id`` field of its ``requests`` point,
keeps the worker busy for ``hold`` seconds (so concurrent requests reach both sync workers) and
answers the worker's pid.
"""

from __future__ import annotations

import os
import time

from flask import Flask, jsonify, request

import otel_luna

LIVENESS_BALANCE = 4242

otel_luna.record_license("ok", liveness_balance=LIVENESS_BALANCE)

app = Flask(__name__)


@app.post("/work")
def work():  # type: ignore[no-untyped-def]
    request_id = request.headers["X-Request-Id"]
    otel_luna.set_request_id(request_id)
    time.sleep(float(request.args.get("hold", "0")))
    return jsonify(request_id=request_id, pid=os.getpid())
