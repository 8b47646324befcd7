"""A small luna-handlers-like aiohttp service that records the LUNA monitoring data.

It never configures OpenTelemetry: run it unchanged under ``opentelemetry-instrument``, which
patches ``aiohttp.web.Application`` so that every request is a SERVER span with ``http.route``
templated (``/handlers/{handler_id}/events``), and select the ``luna`` exporter::

    OTEL_TRACES_EXPORTER=luna OTEL_METRICS_EXPORTER=none OTEL_LOGS_EXPORTER=none \\
    OTEL_SERVICE_NAME=luna-handlers OTEL_EXPORTER_LUNA_ENDPOINT=file://$PWD/luna.lp \\
    opentelemetry-instrument python -m otel_luna.examples.luna_handlers_app --port 8080

It ships inside the package (``otel-luna demo`` runs it), so ``pip install 'otel-luna[demo]'``
is all it needs.

Routes (the work is simulated with sleeps of a few milliseconds):

* ``POST /detector`` — an image in the body; stages ``load_images_for_processing_time``, then
  ``save_warps_time`` and ``save_samples_time`` in two concurrent tasks;
* ``POST /extractor`` — JSON ``{"sample_ids": [...]}``; stages ``load_face_samples_time`` and
  ``save_face_attributes_time`` (inside a child span); a body that is not such JSON is answered
  400 with LUNA error 12031;
* ``POST /handlers/{handler_id}/events`` — tag ``handler_id``; stages ``download_images_time``,
  ``face_sample_storage_policy_time``, ``match_policy_time`` (inside a child span), then
  ``face_storage_policy_time``, ``event_storage_policy_time`` (inside a child span) and
  ``notification_storage_policy_time`` in three concurrent tasks; an unknown handler id is
  answered 404 with LUNA error 22002;
* ``GET /version``.

A ``LUNA-Request-Id`` request header becomes the ``request_id`` field and is echoed back.
The SDK estimations a request would run are counted with ``otel_luna.record_usages`` (the
``usages_statistic`` series: one point per such request, at its time, written by the traces
exporter): ``face_detector`` per detected image, ``face_descriptor_extractor`` and
``face_basic_attributes_extractor`` per extracted sample.
At start-up the app checks its licence once with ``otel_luna.record_license`` (one ``licensing``
point; status ``ok``, liveness balance :data:`LIVENESS_BALANCE`).
The app prints ``listening on http://HOST:PORT`` once bound (``--port 0`` picks a free port)
and shuts down cleanly on SIGTERM or SIGINT, so the SDK flushes the exporter at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web
from opentelemetry import trace

import otel_luna

#: Handlers that exist when ``--handlers`` is not given.
DEFAULT_HANDLER_IDS = (
    "3f1c9a52-6d0e-4c8e-9a61-0d2b7f1e4a10",
    "8b27e0d4-51f3-4f8a-b6c2-9e4d3a7c5b21",
    "c6d45e13-2a9b-47f0-8e1d-5f3b6a2c9d32",
)

#: LUNA error: the input is not what the resource accepts.
BAD_INPUT_DATA = 12031
#: LUNA error: no handler with this id.
HANDLER_NOT_FOUND = 22002

#: Liveness checks left on the licence, as the start-up licence check reports it.
LIVENESS_BALANCE = 100_000

REQUEST_ID_HEADER = "LUNA-Request-Id"
VERSION = {"Version": {"api": 6, "major": 5, "minor": 0, "patch": 0}, "service": "luna-handlers"}

HANDLERS = web.AppKey("handlers", frozenset)

tracer = trace.get_tracer("luna_handlers_app")


async def work(low_ms: float = 0.5, high_ms: float = 3.0) -> None:
    """Pretend to do something for a few milliseconds."""
    await asyncio.sleep(random.uniform(low_ms, high_ms) / 1000)


async def timed(field: str, low_ms: float = 0.5, high_ms: float = 3.0) -> None:
    """One stage of a request, timed into ``field``."""
    with otel_luna.monitor_time(field):
        await work(low_ms, high_ms)


async def timed_in_span(span_name: str, field: str) -> None:
    """One stage in its own child span (as a call to another LUNA service would be)."""
    with tracer.start_as_current_span(span_name), otel_luna.monitor_time(field):
        await work()


def luna_error(status: int, code: int, desc: str, detail: str) -> web.Response:
    """A LUNA error response; marks the request failed with ``code``."""
    otel_luna.set_error(code)
    body = {"error_code": code, "desc": desc, "detail": detail}
    return web.json_response(body, status=status)


@web.middleware
async def request_id_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Take the client's ``LUNA-Request-Id`` as the request id, and echo it back."""
    request_id = request.headers.get(REQUEST_ID_HEADER)
    if request_id:
        otel_luna.set_request_id(request_id)
    response = await handler(request)
    if request_id:
        response.headers[REQUEST_ID_HEADER] = request_id
    return response


async def detector(request: web.Request) -> web.Response:
    image = await request.read()
    with otel_luna.monitor_time("load_images_for_processing_time"):
        await work(1.0, 4.0)
    await asyncio.gather(timed("save_warps_time"), timed("save_samples_time"))
    otel_luna.record_usages(face_detector=1)
    faces = [{"sample_id": str(uuid.uuid4()), "score": round(random.random(), 4)}]
    return web.json_response({"images": [{"size": len(image), "faces": faces}]}, status=201)


async def extractor(request: web.Request) -> web.Response:
    try:
        body = json.loads(await request.read())
        sample_ids = [str(sample_id) for sample_id in body["sample_ids"]]
    except (ValueError, KeyError, TypeError):
        return luna_error(
            400,
            BAD_INPUT_DATA,
            "Bad/incomplete input data",
            'expected a JSON object with a list "sample_ids"',
        )
    await timed("load_face_samples_time")
    await work()
    await timed_in_span("luna-faces: save attributes", "save_face_attributes_time")
    otel_luna.record_usages(
        face_descriptor_extractor=len(sample_ids), face_basic_attributes_extractor=len(sample_ids)
    )
    attributes = [{"attribute_id": str(uuid.uuid4()), "sample_id": s} for s in sample_ids]
    return web.json_response({"faces": attributes}, status=201)


async def handler_events(request: web.Request) -> web.Response:
    handler_id = request.match_info["handler_id"]
    otel_luna.add_tags(handler_id=handler_id)
    if handler_id not in request.app[HANDLERS]:
        return luna_error(
            404, HANDLER_NOT_FOUND, "Object not found", f"Handler with id '{handler_id}' not found"
        )
    await request.read()
    await timed("download_images_time", 1.0, 4.0)
    await timed("face_sample_storage_policy_time")
    await timed_in_span("match policy", "match_policy_time")
    await asyncio.gather(
        timed("face_storage_policy_time"),
        timed_in_span("luna-events: save event", "event_storage_policy_time"),
        timed("notification_storage_policy_time"),
    )
    return web.json_response({"events": [{"event_id": str(uuid.uuid4())}]}, status=201)


async def version(request: web.Request) -> web.Response:
    return web.json_response(VERSION)


def make_app(handler_ids: Iterable[str] = DEFAULT_HANDLER_IDS) -> web.Application:
    """The application; ``web.Application`` is looked up now, so instrumentation applies."""
    app = web.Application(middlewares=[request_id_middleware])
    app[HANDLERS] = frozenset(handler_ids)
    app.router.add_post("/detector", detector)
    app.router.add_post("/extractor", extractor)
    app.router.add_post("/handlers/{handler_id}/events", handler_events)
    app.router.add_get("/version", version)
    return app


async def serve(host: str, port: int, handler_ids: Iterable[str]) -> None:
    """Serve until SIGTERM or SIGINT, then stop accepting, finish requests and clean up."""
    otel_luna.record_license("ok", LIVENESS_BALANCE)  # the licence check of start-up
    runner = web.AppRunner(make_app(handler_ids), handle_signals=False, access_log=None)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = runner.addresses[0][1]
        print(f"listening on http://{host}:{bound_port}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to bind; 0 picks a free one")
    parser.add_argument(
        "--handlers",
        default=",".join(DEFAULT_HANDLER_IDS),
        help="comma-separated ids of the handlers that exist (default: three built-in ids)",
    )
    args = parser.parse_args(argv)
    handler_ids = [item.strip() for item in args.handlers.split(",") if item.strip()]
    asyncio.run(serve(args.host, args.port, handler_ids))
    return 0


if __name__ == "__main__":
    sys.exit(main())
