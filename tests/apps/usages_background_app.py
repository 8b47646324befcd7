"""A FastAPI app whose requests hand work to a ``BackgroundTasks`` task and to a thread started
with the request's context; that work counts SDK estimations in a span of its own that ends
after the response was sent (so after the request's SERVER span). Run it as users do:
``opentelemetry-instrument uvicorn usages_background_app:app --app-dir tests/apps``.

``POST /job?faces=N&id=ID`` records ``face_detector=1`` in the request, ``liveness_estimator=N``
in a background task and ``body_detector=N`` in a thread, and answers
``{"id": ..., "usages": {...}, "later": {...}}``.
"""

from __future__ import annotations

import contextvars
import threading

from fastapi import BackgroundTasks, FastAPI
from opentelemetry import trace

import otel_luna

app = FastAPI()
tracer = trace.get_tracer("usages-background")


def background(faces: int) -> None:
    with tracer.start_as_current_span("background"):
        otel_luna.record_usages(liveness_estimator=faces)


def in_thread(faces: int, go: threading.Event) -> None:
    go.wait(10)  # after the response was sent
    with tracer.start_as_current_span("thread"):
        otel_luna.record_usages(body_detector=faces)


@app.post("/job")
async def job(faces: int, id: str, tasks: BackgroundTasks) -> dict[str, object]:
    otel_luna.set_request_id(id)
    otel_luna.record_usages(face_detector=1)
    go = threading.Event()
    context = contextvars.copy_context()
    threading.Thread(target=context.run, args=(in_thread, faces, go)).start()
    tasks.add_task(background, faces)
    tasks.add_task(go.set)
    later = {"liveness_estimator": faces, "body_detector": faces} if faces else {}
    return {"id": id, "usages": {"face_detector": 1}, "later": later}
