"""A FastAPI app for the deployment tests; knows nothing of OpenTelemetry set-up.

Run it as users do: ``opentelemetry-instrument uvicorn fastapi_app:app --app-dir tests/apps``.
``POST /work`` with header ``X-Request-Id: ID`` writes ``ID`` in the ``request_id`` field of its
``requests`` point, counts one ``face_detector`` usage, and answers the worker's pid.
"""

from __future__ import annotations

import os

from fastapi import FastAPI, Header

import otel_luna

app = FastAPI()


@app.post("/work")
async def work(x_request_id: str = Header()) -> dict[str, object]:
    otel_luna.set_request_id(x_request_id)
    otel_luna.record_usages(face_detector=1)
    return {"request_id": x_request_id, "pid": os.getpid()}


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
