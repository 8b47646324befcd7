"""A FastAPI app that counts SDK estimations in 3 of its 4 routes; knows nothing of
OpenTelemetry set-up. Run it as users do:
``opentelemetry-instrument uvicorn usages_fastapi_app:app --app-dir tests/apps``.

Each ``POST`` takes ``faces`` (how many faces the image has) and ``id`` (written as the
request's ``request_id``) and answers what it recorded: ``{"id": ..., "usages": {...}}``.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from fastapi import FastAPI
from opentelemetry import trace

import otel_luna

app = FastAPI()
tracer = trace.get_tracer("usages-fastapi")


def counted(usages: Counter[str], **counts: int) -> None:
    otel_luna.record_usages(**counts)
    usages.update({name: count for name, count in counts.items() if count})


@app.post("/detector")
async def detector(faces: int, id: str) -> dict[str, object]:
    otel_luna.set_request_id(id)
    usages: Counter[str] = Counter()
    counted(usages, face_detector=1)
    with tracer.start_as_current_span("estimate"):
        await asyncio.sleep(0)
        counted(usages, head_pose_estimator=faces, liveness_estimator=faces)
    return {"id": id, "usages": usages}


@app.post("/extractor")
async def extractor(faces: int, id: str) -> dict[str, object]:
    otel_luna.set_request_id(id)
    usages: Counter[str] = Counter()

    async def extract(index: int) -> None:
        await asyncio.sleep(0)
        counted(usages, face_descriptor_extractor=1, face_warp_quality_estimator=1)

    await asyncio.gather(*(extract(index) for index in range(faces)))
    return {"id": id, "usages": usages}


@app.post("/events")
async def events(faces: int, id: str) -> dict[str, object]:
    otel_luna.set_request_id(id)
    usages: Counter[str] = Counter()
    for _ in range(faces):
        counted(usages, face_detector=1)
    if faces:
        counted(usages, body_detector=2)
    return {"id": id, "usages": usages}


@app.post("/health")
async def health(faces: int, id: str) -> dict[str, object]:
    otel_luna.set_request_id(id)
    return {"id": id, "usages": {}}
