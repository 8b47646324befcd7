"""The luna exporter's cost per request for the span shapes real instrumentations emit, as a
ratio to the SDK's own cost for the same spans.

    .venv/bin/python benchmarks/span_shapes.py [--rounds 15] [--n 2048] [--json]
        [--shape fastapi ...]
    .venv/bin/python benchmarks/span_shapes.py --record     # rewrite benchmarks/shapes/*.json

**Shapes** (``benchmarks/shapes/<name>.json``, recorded once with ``--record`` from the
instrumentations installed with the test extra, opentelemetry-instrumentation-* 0.66b1): every
span one request makes (name, kind, parent, attributes, status, events) in the order they end.

* ``fastapi``: a FastAPI route (``opentelemetry-instrumentation-fastapi``, ASGI): SERVER and
  its ``http receive`` / ``http send`` INTERNAL children;
* ``fastapi_404``: the same app, an unknown path;
* ``fastapi_luna``: a FastAPI handler using ``otel_luna.monitor_time`` (twice) and
  ``otel_luna.record_usages``;
* ``aiohttp_server``: an aiohttp route (``opentelemetry-instrumentation-aiohttp-server``);
* ``flask``: a Flask route (``opentelemetry-instrumentation-flask``);
* ``flask_urllib3_client``: a Flask handler calling another service with urllib3
  (``opentelemetry-instrumentation-urllib3``; ``requests`` goes through urllib3): SERVER + CLIENT;
* ``django``: a Django view (``opentelemetry-instrumentation-django``).

**Each round**, per shape, over the same ``--n`` requests:

* ``sdk``: the SDK's own cost: every span of the shape started (with its parent) with the
  attributes an instrumentation gives at start, the rest (response status, ``luna.*``) set
  with ``set_attribute``, events added, status set, ended, in the recorded order;
  TracerProvider with a SimpleSpanProcessor around an exporter that does nothing;
* ``luna``: ``LunaSpanExporter.export()`` of the finished spans in batches of 512 (as a
  BatchSpanProcessor hands them), a sink that does nothing, disk spool in a temp directory
  (the writer asleep while timed; drained between workloads), as ``exporter_overhead.py``;
* ``otlp encode``: what the OTLP exporters do in process for the same batches before the
  network: ``encode_spans(batch).SerializeToString()``.

Reported per shape: µs per request (orientation) and the per-round ratios ``luna / sdk`` and
``otlp encode / sdk`` (median, min, max). Ratios only; exit status 0 whatever the figures.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _common import (
    NullSink,
    NullSpanExporter,
    arguments,
    dump,
    environment,
    fmt,
    idle_writer_settings,
    per_item_us,
    ratios,
    run_rounds,
    sdk_provider,
    summary,
    table,
)
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

SHAPES_DIR = Path(__file__).resolve().parent / "shapes"
SERVICE = "luna-handlers"
BATCH = 512
#: Attributes an instrumentation sets after the span started (the response, the luna helpers).
LATER = ("http.status_code", "http.response.status_code", "error.type", "luna.")


# --------------------------------------------------------------------------- recording


def _describe(spans: Sequence[ReadableSpan]) -> list[dict[str, Any]]:
    """One request's spans (in the order they ended) as JSON: parents by index."""
    ids = {span.context.span_id: i for i, span in enumerate(spans)}
    out = []
    for span in spans:
        parent = ids.get(span.parent.span_id) if span.parent is not None else None
        out.append(
            {
                "name": span.name,
                "kind": span.kind.name,
                "parent": parent,
                "remote_parent": span.parent is not None and parent is None,
                "attributes": {k: _jsonable(v) for k, v in (span.attributes or {}).items()},
                "events": [
                    {"name": e.name, "attributes": dict(e.attributes or {})} for e in span.events
                ],
                "status": span.status.status_code.name,
                "start_order": sorted(spans, key=lambda s: s.start_time or 0).index(span),
            }
        )
    return out


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def record_shapes() -> dict[str, list[dict[str, Any]]]:
    """Run each instrumented framework once in process; the spans of its second request."""
    import otel_luna

    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    trace.set_tracer_provider(provider)
    otel_luna._helpers.set_usages_mode("request")
    shapes: dict[str, list[dict[str, Any]]] = {}

    def take(name: str, request: Callable[[], object]) -> None:
        request()  # the first request may differ (lazy set-up)
        memory.clear()
        request()
        shapes[name] = _describe(memory.get_finished_spans())
        memory.clear()

    # FastAPI, driven at the ASGI level as uvicorn drives it
    from fastapi import FastAPI
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    app = FastAPI()

    @app.get("/items/{item}")
    async def item(item: int) -> dict[str, int]:
        return {"item": item}

    @app.post("/6/handlers/{handler_id}/events")
    async def events(handler_id: str) -> dict[str, str]:
        with otel_luna.monitor_time("load_images_for_processing_time"):
            pass
        with otel_luna.monitor_time("event_storage_policy_time"):
            pass
        otel_luna.record_usages(face_detector=1, liveness_estimator=1)
        return {"handler_id": handler_id}

    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)
    take("fastapi", lambda: _asgi(app, "GET", "/items/42"))
    take("fastapi_404", lambda: _asgi(app, "GET", "/missing/42"))
    take(
        "fastapi_luna",
        lambda: _asgi(app, "POST", "/6/handlers/1b0e4c6a-7f0a-4d47-9e53-0a3c1f3f1e11/events"),
    )

    # aiohttp server, on 127.0.0.1
    from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor

    AioHttpServerInstrumentor().instrument(tracer_provider=provider)
    take("aiohttp_server", _aiohttp_request)
    AioHttpServerInstrumentor().uninstrument()

    # Flask; a Flask handler calling another service with urllib3
    import urllib3
    from flask import Flask
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor

    upstream, upstream_url = _upstream()
    URLLib3Instrumentor().instrument(tracer_provider=provider)
    pool = urllib3.PoolManager()
    flask_app = Flask("shapes")

    @flask_app.get("/items/<int:item>")
    def flask_item(item: int) -> dict[str, int]:
        return {"item": item}

    @flask_app.get("/6/detector")
    def flask_client() -> dict[str, int]:
        return {"upstream": pool.request("GET", upstream_url).status}

    FlaskInstrumentor().instrument_app(flask_app, tracer_provider=provider)
    client = flask_app.test_client()
    take("flask", lambda: client.get("/items/42"))
    take("flask_urllib3_client", lambda: client.get("/6/detector"))
    URLLib3Instrumentor().uninstrument()
    upstream.shutdown()

    take("django", _django_request(provider))
    return shapes


def _asgi(app: Any, method: str, path: str) -> None:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk/4.1.0")],
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        pass

    asyncio.run(app(scope, receive, send))


def _aiohttp_request() -> None:
    from aiohttp import ClientSession, web
    from aiohttp.test_utils import TestServer

    async def item(request: web.Request) -> web.Response:
        return web.json_response({"item": request.match_info["item"]})

    async def run() -> None:
        application = web.Application()
        application.router.add_get("/items/{item}", item)
        server = TestServer(application, host="127.0.0.1")
        await server.start_server()
        try:
            async with (
                ClientSession() as session,
                session.get(server.make_url("/items/42")) as response,
            ):
                await response.read()
        finally:
            await server.close()

    asyncio.run(run())


def _upstream() -> tuple[Any, str]:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/6/samples"


def _django_request(provider: TracerProvider) -> Callable[[], object]:
    import django
    from django.conf import settings
    from django.http import JsonResponse
    from django.urls import path

    def item(request: Any, item: int) -> JsonResponse:
        return JsonResponse({"item": item})

    module = type(sys)("shapes_urls")
    module.urlpatterns = [path("items/<int:item>", item)]  # type: ignore[attr-defined]
    sys.modules["shapes_urls"] = module
    settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF="shapes_urls",
        MIDDLEWARE=[],
        SECRET_KEY="benchmark",
    )
    from opentelemetry.instrumentation.django import DjangoInstrumentor

    DjangoInstrumentor().instrument(tracer_provider=provider)
    django.setup()
    from django.test import Client

    client = Client()
    return lambda: client.get("/items/42")


# --------------------------------------------------------------------------- replay


def load_shapes(names: Sequence[str] | None) -> dict[str, list[dict[str, Any]]]:
    found = {p.stem: json.loads(p.read_text()) for p in sorted(SHAPES_DIR.glob("*.json"))}
    if not found:
        raise SystemExit(f"no shapes in {SHAPES_DIR}: run with --record first")
    return {k: v for k, v in found.items() if not names or k in names}


def _later(key: str) -> bool:
    return key.startswith(LATER)


def replay(tracer: Any, shape: Sequence[dict[str, Any]], n: int) -> int:
    """Make the spans of ``n`` requests of ``shape`` as the instrumentation does; elapsed ns."""
    starts = sorted(range(len(shape)), key=lambda i: shape[i]["start_order"])
    prepared = []
    for i in starts:
        span = shape[i]
        attributes = span["attributes"]
        prepared.append(
            (
                i,
                span["name"],
                SpanKind[span["kind"]],
                span["parent"],
                {k: v for k, v in attributes.items() if not _later(k)},
                [(k, v) for k, v in attributes.items() if _later(k)],
            )
        )
    finish = [
        (
            i,
            [(e["name"], e["attributes"]) for e in shape[i]["events"]],
            Status(StatusCode[shape[i]["status"]]),
        )
        for i in range(len(shape))  # recorded in the order they ended
    ]
    start_span = tracer.start_span
    set_span_in_context = trace.set_span_in_context
    root = otel_context.Context()
    begin = time.perf_counter_ns()
    for _ in range(n):
        made: list[Any] = [None] * len(shape)
        for i, name, kind, parent, start_attributes, _later_attributes in prepared:
            where = root if parent is None else set_span_in_context(made[parent], root)
            made[i] = start_span(name, context=where, kind=kind, attributes=start_attributes)
        for i, *_rest, later in prepared:
            for key, value in later:
                made[i].set_attribute(key, value)
        for i, events, status in finish:
            span = made[i]
            for name, attributes in events:
                span.add_event(name, attributes)
            if status.status_code is not StatusCode.UNSET:
                span.set_status(status)
            span.end()
    return time.perf_counter_ns() - begin


def _lines_per_request(spans: Sequence[ReadableSpan], n: int, state: str) -> dict[str, float]:
    from otel_luna._exporter import LunaSpanExporter
    from otel_luna.testing import InMemorySink

    sink = InMemorySink()
    exporter = LunaSpanExporter(idle_writer_settings(state), sink=sink)
    for i in range(0, len(spans), BATCH):
        exporter.export(spans[i : i + BATCH])
    exporter.force_flush()
    exporter.shutdown()
    series: dict[str, float] = {}
    for line in sink.lines:
        name = line.split(",", 1)[0]
        series[name] = series.get(name, 0) + 1 / n
    return {k: round(v, 3) for k, v in sorted(series.items())}


def measure(options: Any, state: str) -> dict[str, Any]:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    from otel_luna._exporter import LunaSpanExporter

    n = options.n
    shapes = load_shapes(options.shape)
    sdk_tracer = sdk_provider(NullSpanExporter(), SERVICE).get_tracer("benchmark")
    workloads: dict[str, Callable[[], int]] = {}
    closers: list[Callable[[], object]] = []
    drains: list[Callable[[], object]] = []
    info: dict[str, Any] = {}
    for name, shape in shapes.items():
        memory = InMemorySpanExporter()
        replay(sdk_provider(memory, SERVICE).get_tracer("benchmark"), shape, n)
        spans = list(memory.get_finished_spans())
        batches = [spans[i : i + BATCH] for i in range(0, len(spans), BATCH)]
        exporter = LunaSpanExporter(
            idle_writer_settings(os.path.join(state, name)), sink=NullSink()
        )
        closers.append(exporter.shutdown)
        drains.append(lambda exporter=exporter: exporter.force_flush(60_000))
        info[name] = {
            "spans_per_request": len(shape),
            "kinds": [s["kind"] for s in shape],
            "lines_per_request": _lines_per_request(spans, n, os.path.join(state, name + "-check")),
        }

        def luna(export: Any = exporter.export, batches: Any = batches) -> int:
            begin = time.perf_counter_ns()
            for batch in batches:
                export(batch)
            return time.perf_counter_ns() - begin

        def otlp(batches: Any = batches) -> int:
            begin = time.perf_counter_ns()
            for batch in batches:
                encode_spans(batch).SerializeToString()
            return time.perf_counter_ns() - begin

        workloads[f"{name}: sdk"] = lambda shape=shape: replay(sdk_tracer, shape, n)
        workloads[f"{name}: luna"] = luna
        workloads[f"{name}: otlp encode"] = otlp

    gc.collect()
    gc.freeze()
    started = time.perf_counter()
    times = run_rounds(
        workloads,
        rounds=options.rounds,
        warmup=options.warmup,
        between=lambda: [drain() for drain in drains],
    )
    seconds = time.perf_counter() - started
    for close in closers:
        close()
    results = {}
    for name in shapes:
        sdk = times[f"{name}: sdk"]
        luna = times[f"{name}: luna"]
        otlp = times[f"{name}: otlp encode"]
        results[name] = {
            **info[name],
            "sdk_us_per_request": summary(per_item_us(sdk, n), 2),
            "luna_us_per_request": summary(per_item_us(luna, n), 2),
            "otlp_encode_us_per_request": summary(per_item_us(otlp, n), 2),
            "luna_ratio_to_sdk": summary(ratios(luna, sdk)),
            "otlp_encode_ratio_to_sdk": summary(ratios(otlp, sdk)),
        }
    return {"shapes": results, "seconds": round(seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__.split("\n")[0], rounds=15, n=2048, n_help="requests per round")
    parser.add_argument("--record", action="store_true", help="record the shapes and exit")
    parser.add_argument("--shape", action="append", help="only this shape (repeatable)")
    options = parser.parse_args(argv)
    if options.record:
        SHAPES_DIR.mkdir(exist_ok=True)
        for name, shape in record_shapes().items():
            (SHAPES_DIR / f"{name}.json").write_text(json.dumps(shape, indent=2) + "\n")
            print(f"{name}: {len(shape)} spans ({', '.join(s['kind'] for s in shape)})")
        return 0
    with tempfile.TemporaryDirectory(prefix="otel-luna-shapes-") as state:
        measured = measure(options, state)
    report = {
        "benchmark": "span_shapes",
        "what": "LunaSpanExporter.export() and OTLP encoding per request / SDK cost of its spans",
        "n": options.n,
        "batch": BATCH,
        "rounds": options.rounds,
        "warmup": options.warmup,
        **measured,
        "environment": environment(),
    }
    if options.json:
        dump(report)
        return 0
    print(
        f"span shapes: {options.n} requests per shape and round, export() in batches of {BATCH}, "
        f"{options.rounds} rounds, {measured['seconds']} s"
    )
    print()
    rows = [
        ["shape", "spans", "sdk µs/req", "luna µs/req", "luna/sdk", "min", "max", "otlp enc/sdk"]
    ]
    for name, r in measured["shapes"].items():
        rows.append(
            [
                name,
                str(r["spans_per_request"]),
                format(r["sdk_us_per_request"]["median"], ".1f"),
                format(r["luna_us_per_request"]["median"], ".1f"),
                *fmt(r["luna_ratio_to_sdk"], ".3f"),
                format(r["otlp_encode_ratio_to_sdk"]["median"], ".3f"),
            ]
        )
    table(rows)
    print()
    for name, r in measured["shapes"].items():
        print(f"{name}: {' '.join(r['kinds'])}; lines per request {r['lines_per_request']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
