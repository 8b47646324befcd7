"""What serve's OTLP/HTTP front end relies on in aiohttp beyond its documented API (the list is in
``otel_luna/serve/_http_server.py``'s docstring): its request parser, its connection's hooks and
the keywords given to them. pyproject pins aiohttp to one minor version; an aiohttp that changes
any of this fails here, in one place, rather than as a stalled or mis-answered connection."""

from __future__ import annotations

import asyncio
import inspect
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import StreamReader, web
from aiohttp.http import HttpProcessingError, HttpRequestParser
from aiohttp.http_exceptions import LineTooLong

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parent.parent.parent / "pyproject.toml"
HEAD = b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
GOOD = HEAD + b"Content-Length: 2\r\n\r\n{}"
#: The limits serve gives aiohttp (its defaults).
LINE = 8190
HEADERS = 128


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


class _Flow:
    """The flow control a parser's StreamReader calls (nothing to pause here)."""

    def pause_reading(self, *args: Any, **kwargs: Any) -> None:
        pass

    def resume_reading(self, *args: Any, **kwargs: Any) -> None:
        pass


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.close()


def _parser(loop: asyncio.AbstractEventLoop, protocol: Any = None) -> Any:
    """A parser made as serve's ``_Parser`` makes it (for ``protocol``, its connection)."""
    return HttpRequestParser(
        protocol or _Flow(),
        loop,
        1 << 18,
        max_line_size=LINE,
        max_field_size=LINE,
        max_headers=HEADERS,
        payload_exception=web.RequestPayloadError,
        auto_decompress=False,
        max_msg_queue_size=1,
    )


def test_the_installed_aiohttp_is_in_the_range_pyproject_pins() -> None:
    """pyproject's ``serve`` extra names a closed range of aiohttp (a floor and a ceiling), and
    the aiohttp these tests run with is in it."""
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]["serve"]
    (spec,) = [d for d in dependencies if re.match(r"aiohttp\b", d)]
    floor = re.search(r">=\s*([\d.]+)", spec)
    ceiling = re.search(r"<\s*([\d.]+)", spec)
    assert floor and ceiling, spec
    assert _version(floor[1]) <= _version(aiohttp.__version__) < _version(ceiling[1])


def test_the_parser_returns_one_request_at_a_time_and_the_junk_behind_it_last(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """With ``max_msg_queue_size=1`` each ``feed_data`` stops after one request and keeps the
    rest, which ``feed_data(b"")`` parses on (serve calls it from ``message_consumed()``): bytes
    it cannot parse behind good requests raise only once those were returned."""
    parser = _parser(loop)
    messages, upgraded, _ = parser.feed_data(GOOD + GOOD + b"junk\r\n\r\n")
    assert len(messages) == 1 and not upgraded
    message, payload = messages[0]
    assert (message.method, message.path) == ("POST", "/v1/traces")
    assert message.headers["content-type"] == "application/json"
    assert isinstance(payload, StreamReader) and payload.is_eof()
    assert loop.run_until_complete(payload.read()) == b"{}"
    parser.message_consumed()
    assert len(parser.feed_data(b"")[0]) == 1
    parser.message_consumed()
    with pytest.raises(HttpProcessingError):
        parser.feed_data(b"")


def test_a_body_arrives_in_the_payload_and_a_broken_chunk_raises_from_feed_data(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """A request is returned at its head, its body fed to its StreamReader as it comes
    (``readany``); bad chunk framing raises ``HttpProcessingError`` from ``feed_data`` with the
    payload still open (serve sets it on the payload: the handler answers). ``set_exception``
    makes the reader raise it."""
    parser = _parser(loop)
    messages, _, _ = parser.feed_data(HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhel")
    (_, payload), *_ = messages
    assert not payload.is_eof()
    assert loop.run_until_complete(payload.readany()) == b"hel"
    with pytest.raises(HttpProcessingError):
        parser.feed_data(b"lo\r\nzz\r\n")
    assert not payload.is_eof()
    payload.set_exception(ValueError("cut"))
    with pytest.raises(ValueError, match="cut"):
        loop.run_until_complete(payload.readany())


@pytest.mark.parametrize(
    ("request_", "too_long"),
    [
        (b"POST /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n", True),
        (HEAD + b"X-Big: " + b"a" * 20000 + b"\r\n\r\n", True),
        (HEAD + b"".join(b"X-%d: y\r\n" % i for i in range(HEADERS + 1)) + b"\r\n", False),
        (HEAD + b"Content-Length: abc\r\n\r\n", False),
        (b"PO ST /v1/traces HTTP/1.1\r\nHost: x\r\n\r\n", False),
    ],
    ids=["request line", "header line", "too many headers", "bad length", "bad method"],
)
def test_parse_errors_say_what_serve_answers_them_with(
    loop: asyncio.AbstractEventLoop, request_: bytes, too_long: bool
) -> None:
    """What serve maps to 414/431/400: ``LineTooLong`` (an ``HttpProcessingError``) for a line
    over its limit, naming the limit in bytes; "Too many headers" in the message past
    ``max_headers``; another ``HttpProcessingError`` for the rest."""
    with pytest.raises(HttpProcessingError) as raised:
        _parser(loop).feed_data(request_)
    assert isinstance(raised.value, LineTooLong) == too_long
    if too_long:
        assert f"{LINE} bytes" in raised.value.message
    elif b"X-128" in request_:
        assert "Too many headers" in raised.value.message
    assert isinstance(raised.value.message, str)


def test_the_connection_hooks_serve_overrides_exist_with_their_signatures() -> None:
    """``web.RequestHandler`` has the methods serve's ``_Connection`` overrides or calls, with
    the parameters it uses, and takes the keywords serve gives it."""
    handler = web.RequestHandler
    parameters = {
        "__init__": ["self", "manager", "loop", "keepalive_timeout", "tcp_keepalive"],
        "data_received": ["self", "data"],
        "connection_made": ["self", "transport"],
        "connection_lost": ["self", "exc"],
        "finish_response": ["self", "request", "resp", "start_time"],
        "handle_error": ["self", "request", "status", "exc", "message"],
        "force_close": ["self"],
    }
    for name, expected in parameters.items():
        found = list(inspect.signature(getattr(handler, name)).parameters)
        assert found[: len(expected)] == expected, name
    keywords = inspect.signature(handler.__init__).parameters
    for name in ("keepalive_timeout", "lingering_time", "auto_decompress", "access_log"):
        assert keywords[name].kind is inspect.Parameter.KEYWORD_ONLY, name
    for name in ("max_line_size", "max_field_size", "max_headers"):
        assert name in handler.__slots__, name
    assert inspect.iscoroutinefunction(handler.finish_response)
    assert callable(handler.log_exception)


def test_the_connection_feeds_its_parser_attribute_and_reports_each_step(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Over a real socket: the connection parses through whatever is in its ``_parser``
    (``data_received``), calls its ``message_consumed()`` as it takes each request, writes
    each answer in ``finish_response(request, response, start_time)`` and answers a handler
    that raised through ``handle_error`` (500, the exception)."""
    seen: list[Any] = []

    class Parser:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def feed_data(self, data: bytes) -> Any:
            seen.append(("feed", len(data)))
            return self.inner.feed_data(data)

        def message_consumed(self) -> None:
            seen.append("consumed")
            self.inner.message_consumed()

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    class Connection(web.RequestHandler):
        def __init__(self, manager: web.Server, **kwargs: Any) -> None:
            super().__init__(manager, **kwargs)
            self._parser = Parser(_parser(loop, self))

        async def finish_response(
            self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
        ) -> tuple[web.StreamResponse, bool]:
            seen.append(("answer", request.path, resp.status))
            return await super().finish_response(request, resp, start_time)

        def handle_error(
            self,
            request: web.BaseRequest,
            status: int = 500,
            exc: BaseException | None = None,
            message: str | None = None,
        ) -> web.StreamResponse:
            seen.append(("error", status, repr(exc)))
            return web.Response(status=status, text="error")

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        assert request.protocol is not None and request.body_exists
        assert request.content_length == 2 and await request.content.readany() == b"{}"
        if request.path == "/fail":
            raise RuntimeError("a bug")
        return web.Response(text="ok")

    failing = GOOD.replace(b"/v1/traces", b"/fail")
    sent = GOOD + failing.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")

    async def exchange() -> bytes:
        manager = web.Server(handle, loop=loop)
        server = await loop.create_server(
            lambda: Connection(
                manager,
                loop=loop,
                keepalive_timeout=5.0,
                lingering_time=1.0,
                auto_decompress=False,
                access_log=None,
            ),
            "127.0.0.1",
            0,
        )
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(sent)
            data = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            return data
        finally:
            server.close()
            await server.wait_closed()

    data = loop.run_until_complete(exchange())
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b"HTTP/1.1 500 " in data
    assert sum(step[1] for step in seen if step[0] == "feed") == len(sent)
    assert seen.count("consumed") == 2
    assert ("answer", "/v1/traces", 200) in seen
    assert ("error", 500, "RuntimeError('a bug')") in seen
