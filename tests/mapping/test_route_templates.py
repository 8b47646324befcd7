"""Each framework's route templates, as its real OpenTelemetry instrumentation reports them in
this process, are written in LUNA's ``{name}`` form: a service ported between frameworks keeps
its series (docs/mapping.md, "The route tag").

Every app serves the same three routes — a typed parameter, a plain one, and one taking the rest
of the path — and one request of a method the semantic conventions do not know (PROPFIND,
reported as ``_OTHER`` with ``http.request.method_original``) where the framework lets a route
take it.
"""

from __future__ import annotations

import asyncio
import resource
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from otel_luna import LunaSpanExporter
from otel_luna.encoding._reader import parse_line
from otel_luna.mapping import _requests as requests
from otel_luna.mapping._records import SpanRecord
from otel_luna.mapping._requests import luna_template
from otel_luna.testing import InMemorySink

#: What every app's requests must be written as (route, status).
EXPECTED = [
    ("GET:/items/{item_id}", "200"),
    ("GET:/users/{name}/profile", "200"),
    ("GET:/files/{file_path}", "200"),
]


@pytest.fixture(params=["default", "http", "http/dup"])
def semconv(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The HTTP semantic conventions the instrumentations write (``OTEL_SEMCONV_STABILITY_OPT_IN``,
    read when an instrumentation is set up; put back as it was after the test)."""
    from opentelemetry.instrumentation._semconv import _OpenTelemetrySemanticConventionStability

    if request.param == "default":
        monkeypatch.delenv("OTEL_SEMCONV_STABILITY_OPT_IN", raising=False)
    else:
        monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", request.param)
    stability = _OpenTelemetrySemanticConventionStability
    monkeypatch.setattr(stability, "_initialized", False)
    monkeypatch.setattr(stability, "_OTEL_SEMCONV_STABILITY_SIGNAL_MAPPING", {})
    return str(request.param)


def other(semconv: str, method: str) -> str:
    """How a method the conventions do not know is written: by its name where the span has it
    (``http.request.method_original``, new conventions), else ``_OTHER`` (the old conventions
    keep only that)."""
    return "_OTHER" if semconv == "default" else method


@pytest.fixture
def luna(semconv: str) -> Iterator[tuple[TracerProvider, Callable[[], list[tuple[str, str]]]]]:
    """A tracer provider exporting to the luna exporter (in memory), and a function giving the
    (route, status_code) of the requests points written so far."""
    sink = InMemorySink()
    exporter = LunaSpanExporter(sink=sink)
    provider = TracerProvider(resource=Resource.create({"service.name": "ported"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    def written() -> list[tuple[str, str]]:
        assert exporter.force_flush(30_000)
        points = [parse_line(line) for line in sink.lines]
        return [
            (dict(point.tags)["route"], dict(point.tags)["status_code"])
            for point in points
            if point.measurement == "requests"
        ]

    yield provider, written
    provider.shutdown()


def test_flask(luna: Any, semconv: str) -> None:
    """Flask/Werkzeug: ``<int:item_id>``, ``<name>``, ``<path:file_path>``."""
    import flask
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    provider, written = luna
    app = flask.Flask("ported")

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> str:
        return "ok"

    @app.get("/users/<name>/profile")
    def profile(name: str) -> str:
        return "ok"

    @app.get("/files/<path:file_path>")
    def files(file_path: str) -> str:
        return "ok"

    @app.route("/dav/<path:path>", methods=["PROPFIND", "LOCK"])
    def dav(path: str) -> tuple[str, int]:
        return "ok", 207

    FlaskInstrumentor().instrument_app(app, tracer_provider=provider)
    try:
        client = app.test_client()
        for url in ("/items/7", "/users/ann/profile", "/files/a/b.txt"):
            assert client.get(url).status_code == 200
        assert client.open("/dav/x", method="PROPFIND").status_code == 207
        assert client.open("/dav/x", method="LOCK").status_code == 207
    finally:
        FlaskInstrumentor().uninstrument_app(app)
    assert written() == [
        *EXPECTED,
        (other(semconv, "PROPFIND") + ":/dav/{path}", "207"),
        (other(semconv, "LOCK") + ":/dav/{path}", "207"),
    ]


def test_fastapi(luna: Any) -> None:
    """FastAPI/Starlette: ``{item_id}`` and the ``{file_path:path}`` convertor; the ASGI app
    is called in this process as a server would call it."""
    import fastapi
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    provider, written = luna
    app = fastapi.FastAPI()

    @app.get("/items/{item_id}")
    def item(item_id: int) -> str:
        return "ok"

    @app.get("/users/{name}/profile")
    def profile(name: str) -> str:
        return "ok"

    @app.get("/files/{file_path:path}")
    def files(file_path: str) -> str:
        return "ok"

    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)
    try:
        statuses = [
            asyncio.run(_asgi_get(app, url))
            for url in ("/items/7", "/users/ann/profile", "/files/a/b.txt")
        ]
    finally:
        FastAPIInstrumentor.uninstrument_app(app)
    assert statuses == [200, 200, 200]
    assert written() == EXPECTED


async def _asgi_get(app: Any, path: str) -> int:
    """One GET through an ASGI app; its status."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
    sent: list[dict[str, Any]] = []
    received = False

    async def receive() -> dict[str, Any]:
        nonlocal received
        if received:
            await asyncio.sleep(3600)  # a client that keeps the connection open
        received = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    (start,) = [message for message in sent if message["type"] == "http.response.start"]
    return int(start["status"])


def test_aiohttp(luna: Any, semconv: str) -> None:
    """aiohttp: ``{item_id}``, ``{name}`` and a ``{file_path:.+}`` regex; a real server on
    127.0.0.1 in this process."""
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer
    from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor

    provider, written = luna

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def dav(request: web.Request) -> web.Response:
        return web.Response(text="ok", status=207)

    async def run() -> list[int]:
        app = web.Application()
        app.router.add_get(r"/items/{item_id:\d+}", ok)
        app.router.add_get("/users/{name}/profile", ok)
        app.router.add_get("/files/{file_path:.+}", ok)
        app.router.add_route("PROPFIND", "/dav/{path:.+}", dav)
        app.router.add_route("LOCK", "/dav/{path:.+}", dav)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            statuses = []
            for method, url in (
                ("GET", "/items/7"),
                ("GET", "/users/ann/profile"),
                ("GET", "/files/a/b.txt"),
                ("PROPFIND", "/dav/x"),
                ("LOCK", "/dav/x"),
            ):
                async with client.request(method, url) as response:
                    statuses.append(response.status)
            return statuses

    instrumentor = AioHttpServerInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        assert asyncio.run(run()) == [200, 200, 200, 207, 207]
    finally:
        instrumentor.uninstrument()
    assert written() == [
        *EXPECTED,
        (other(semconv, "PROPFIND") + ":/dav/{path}", "207"),
        (other(semconv, "LOCK") + ":/dav/{path}", "207"),
    ]


def test_django(luna: Any) -> None:
    """Django: ``path()`` routes (``items/<int:item_id>``, no leading slash, as
    ``ResolverMatch.route`` has them) and ``re_path()`` regex routes
    (``^users/(?P<name>[^/]+)/profile$``), under an ``include()``."""
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            ALLOWED_HOSTS=["testserver", "127.0.0.1"],
            ROOT_URLCONF=__name__ + "_django_urls",
            MIDDLEWARE=[],
            INSTALLED_APPS=[],
            DATABASES={},
        )
        django.setup()
    import sys
    import types

    from django.http import HttpRequest, HttpResponse
    from django.test import Client
    from django.urls import include, path, re_path
    from opentelemetry.instrumentation.django import DjangoInstrumentor

    def ok(request: HttpRequest, **kwargs: Any) -> HttpResponse:
        return HttpResponse("ok")

    files = [re_path(r"^(?P<file_path>.+)$", ok)]
    urls = types.ModuleType(__name__ + "_django_urls")
    urls.urlpatterns = [  # type: ignore[attr-defined]
        path("items/<int:item_id>", ok),
        re_path(r"^users/(?P<name>[^/]+)/profile$", ok),
        path("files/", include(files)),
    ]
    sys.modules[urls.__name__] = urls
    provider, written = luna
    DjangoInstrumentor().instrument(tracer_provider=provider)
    try:
        client = Client()
        statuses = [
            client.get(url).status_code
            for url in ("/items/7", "/users/ann/profile", "/files/a/b.txt")
        ]
    finally:
        DjangoInstrumentor().uninstrument()
        del sys.modules[urls.__name__]
    assert statuses == [200, 200, 200]
    assert written() == EXPECTED


# -- hostile templates ---------------------------------------------------------------------

#: Routes of the longest length templated (requests.LONGEST_ROUTE, MAX_KEY_BYTES), each
#: repeating a piece that once made templating quadratic or could: an unclosed converter
#: argument list, Django groups, Starlette braces, a long name.
_HOSTILE_ROUTES = """
import sys
from otel_luna.schema._keys import MAX_KEY_BYTES as LONGEST_ROUTE
from otel_luna.mapping._requests import luna_template

UNITS = ["/<a(", "<a(", "<a:a(", "(?P<a>", "^(?P<a>(", "{a:", "{a:{", "<" + "a" * 99]
UNITS += ["<a(b)", "\\\\("]
ROUTES = [(unit * (LONGEST_ROUTE // len(unit)))[:LONGEST_ROUTE] for unit in UNITS]
for _ in range(int(sys.argv[1])):
    for route in ROUTES:
        assert len(luna_template(route)) <= len(route) + 1
"""


@pytest.mark.slow  # a child process
def test_templating_is_linear_in_the_routes_length() -> None:
    """Templating hostile routes of the longest length templated (64 KiB) costs about what any
    route that long costs: 20 rounds of 10 such routes stay far within 5 s of CPU (a child with
    RLIMIT_CPU; no clock in the test). The regex that scanned to the route's end from each
    ``<(`` (review item 1: 0.27 s per route, 10 s a round for a 400 KB one) is killed there."""

    def limit_cpu() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (5, 6))

    child = subprocess.run(
        [sys.executable, "-c", _HOSTILE_ROUTES, "20"],
        preexec_fn=limit_cpu,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode != -signal.SIGXCPU, "templating ran out of its CPU time"
    assert child.returncode == 0, child.stderr


def test_a_route_longer_than_any_key_is_refused_before_templating(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 400 KB ``http.route`` (longer than any series key may be) is refused at once: the
    request's points (a 500: requests and errors) counted ``key_too_long``, nothing templated."""

    def no_templating(route: str) -> str:
        raise AssertionError("templated")

    monkeypatch.setattr(requests, "luna_template", no_templating)
    mapper = requests.RequestMapper()
    attributes = {
        "http.request.method": "GET",
        "http.route": "/<a(" * 100_000,
        "http.response.status_code": 500,
    }
    record = SpanRecord(attributes, True, 1, 7, None, 10**18, 10**18 + 1, False, "s")
    assert mapper.add(record) == []
    assert mapper.counts == {"server_spans": 1, "key_too_long": 2}  # requests and errors
    attributes["http.route"] = "/<a(" * (requests.LONGEST_ROUTE // 4)  # the longest: templated
    with pytest.raises(AssertionError, match="templated"):
        mapper.add(record)


@given(st.text(st.sampled_from("<>(){}:?P^$\\[]a/_-"), max_size=200))
def test_any_route_templates_without_growing(route: str) -> None:
    """Whatever it holds, a route becomes a template that starts with ``/`` and is at most the
    slash longer."""
    template = luna_template(route)
    assert template.startswith("/")
    assert len(template) <= len(route) + 1
