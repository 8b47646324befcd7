"""``otel-luna serve`` is not run out of file descriptors: it raises its soft open-file limit
to the hard one at start, and idle or half-open connections — to the gRPC port (with or
without the HTTP/2 preface) or to the health port (a request head never finished) — neither
take the descriptors OTLP/HTTP needs nor stay open for ever. Serve runs under a low hard limit
here (so it cannot raise it) with short read and idle timeouts."""

from __future__ import annotations

import contextlib
import re
import resource
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest
import requests

from tests.support.servehelpers import Serve, grpc_call, server_spans, trace_request
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow  # otel-luna serve processes under file limits

HTTP_TIMEOUT = 10.0
#: The serve child's open-file limit in the flood tests, and connections beyond it.
LIMIT = 400
FLOOD = 500
#: What a flood's connections send: nothing, the HTTP/2 preface and an empty SETTINGS frame,
#: or an HTTP request head that never ends.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
HALF_HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: "
SETTLE = 30.0


def env(tmp_path: Path) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_LUNA_ENDPOINT": f"file://{tmp_path / 'points.lp'}",
        "OTEL_EXPORTER_LUNA_SPOOL_DIR": str(tmp_path / "spool"),
        "OTEL_EXPORTER_LUNA_SERVE_MAX_CONNECTIONS": "64",
        "OTEL_EXPORTER_LUNA_SERVE_READ_TIMEOUT": "1",
        "OTEL_EXPORTER_LUNA_SERVE_IDLE_TIMEOUT": "1",
    }


def limits(pid: int) -> tuple[int, int]:
    """The soft and hard open-file limit of process ``pid``."""
    text = Path(f"/proc/{pid}/limits").read_text()
    found = re.search(r"^Max open files\s+(\d+)\s+(\d+)", text, re.M)
    assert found, text
    return int(found[1]), int(found[2])


def test_serve_raises_its_soft_open_file_limit_to_the_hard_one(tmp_path: Path) -> None:
    """Started with a soft limit of 256 under a higher hard one, serve runs with the hard."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert hard > 256
    with Serve(env(tmp_path), open_files=(256, hard)) as serve:
        assert limits(serve.pid) == (hard, hard)
        assert "open-file limit" not in serve.output  # said only when it cannot


@pytest.fixture
def flooded(tmp_path: Path) -> Iterator[tuple[Serve, ExitStack]]:
    """Serve under LIMIT open files (soft and hard), with its health endpoint; an exit stack
    to hold the flood's sockets."""
    with (
        ExitStack() as flood,
        Serve(env(tmp_path), "--health-port", "0", open_files=(LIMIT, LIMIT)) as serve,
    ):
        assert limits(serve.pid) == (LIMIT, LIMIT)
        yield serve, flood


def connect(port: int, first: bytes, flood: ExitStack) -> socket.socket:
    sock = flood.enter_context(socket.create_connection(("127.0.0.1", port), HTTP_TIMEOUT))
    if first:
        sock.sendall(first)
    return sock


def closed_by_serve(sock: socket.socket) -> bool:
    """Whether serve closed the connection (what it answered before is read and dropped)."""
    sock.setblocking(False)
    try:
        while data := sock.recv(65536):
            del data
    except BlockingIOError:
        return False
    except ConnectionError:
        return True
    return True


def good_requests_answered(serve: Serve, *, grpc_too: bool) -> None:
    body = trace_request(server_spans(2)[0]).SerializeToString()
    answer = requests.post(
        serve.http_url + "/v1/traces",
        data=body,
        headers={"Content-Type": "application/x-protobuf"},
        timeout=HTTP_TIMEOUT,
    )
    assert answer.status_code == 200, answer.text
    ready = requests.get(serve.health_url + "/readyz", timeout=HTTP_TIMEOUT)
    assert ready.status_code == 200, ready.text
    if grpc_too:
        code, details, _, _ = grpc_call(serve.grpc_target, body)
        assert code == grpc.StatusCode.OK, details


@pytest.mark.parametrize("first", [b"", PREFACE], ids=["silent", "preface"])
def test_idle_grpc_connections_beyond_the_open_file_limit_starve_nothing(
    flooded: tuple[Serve, ExitStack], first: bytes
) -> None:
    """More idle connections to the gRPC port than serve has descriptors: OTLP/HTTP and
    /readyz are answered meanwhile, serve closes them all, and gRPC is answered then."""
    serve, flood = flooded
    socks = [connect(serve.grpc_port, first, flood) for _ in range(FLOOD)]
    good_requests_answered(serve, grpc_too=False)
    wait_until(
        lambda: sum(map(closed_by_serve, socks)),
        lambda closed: closed == FLOOD,
        SETTLE,
        "idle gRPC connections closed by serve",
    )
    good_requests_answered(serve, grpc_too=True)
    assert "File descriptor limit" not in serve.output, serve.output


def test_half_sent_heads_to_the_health_port_starve_nothing(
    flooded: tuple[Serve, ExitStack],
) -> None:
    """More unfinished request heads to the health port than serve has descriptors: /readyz
    and OTLP/HTTP are answered meanwhile, and serve closes every one of them."""
    serve, flood = flooded
    assert serve.health_port is not None
    socks = [connect(serve.health_port, HALF_HEAD, flood) for _ in range(FLOOD)]
    good_requests_answered(serve, grpc_too=True)
    wait_until(
        lambda: sum(map(closed_by_serve, socks)),
        lambda closed: closed == FLOOD,
        SETTLE,
        "half-sent heads closed by serve",
    )
    good_requests_answered(serve, grpc_too=True)


def test_an_oversized_health_request_head_is_answered_not_logged(tmp_path: Path) -> None:
    """A request head past 8 KiB to the health port: 431, and nothing in serve's log."""
    with Serve(env(tmp_path), "--health-port", "0") as serve:
        assert serve.health_port is not None
        with socket.create_connection(("127.0.0.1", serve.health_port), HTTP_TIMEOUT) as sock:
            head = b"GET /healthz HTTP/1.1\r\nX-A: "
            sock.sendall(head + b"a" * (8193 - len(head)))  # all read: no reset
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 431 "), answer
        good_requests_answered(serve, grpc_too=True)
        logged = [n for n in serve.output.splitlines() if not n.startswith("otel-luna serve: ")]
        assert logged == []


def test_a_10_mb_health_request_head_leaves_nothing_in_the_log(tmp_path: Path) -> None:
    """A 10 MB header to the health port: the connection is closed, nothing is logged."""
    with Serve(env(tmp_path), "--health-port", "0") as serve:
        assert serve.health_port is not None
        head = b"GET /healthz HTTP/1.1\r\nX-A: " + b"a" * 10_000_000 + b"\r\n\r\n"
        address = ("127.0.0.1", serve.health_port)
        with (
            socket.create_connection(address, HTTP_TIMEOUT) as sock,
            contextlib.suppress(ConnectionError),
        ):
            sock.sendall(head)
            sock.recv(65536)
        good_requests_answered(serve, grpc_too=True)
    logged = [n for n in serve.output.splitlines() if not n.startswith("otel-luna serve: ")]
    assert logged == []


def test_a_grpc_connection_that_keeps_calling_is_recycled_after_its_maximum_age(
    tmp_path: Path,
) -> None:
    """A connection that calls every 0.3 s is never idle (``SERVE_IDLE_TIMEOUT`` 1 s here), yet
    serve closes it (GOAWAY) after five idle timeouts all the same and the client reconnects:
    connections that keep calling cannot hold the gRPC cap for ever (second review: 100
    channels calling with a wrong token every 4 s kept every new client out)."""
    body = trace_request(server_spans(1)[0]).SerializeToString()
    with Serve(env(tmp_path)) as serve:
        states: list[grpc.ChannelConnectivity] = []
        channel = grpc.insecure_channel(serve.grpc_target)
        try:
            channel.subscribe(states.append, try_to_connect=True)
            export = channel.unary_unary(
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
            )
            deadline = time.monotonic() + SETTLE
            while states.count(grpc.ChannelConnectivity.READY) < 2:
                assert time.monotonic() < deadline, f"never recycled: {states}"
                export(body, timeout=HTTP_TIMEOUT)
                time.sleep(0.3)
        finally:
            channel.close()


def test_health_heads_with_bare_line_feeds_head_requests_and_empty_heads(tmp_path: Path) -> None:
    """Second review: a head ending in bare LFs (RFC 9112 lets a server accept them) is
    answered, not timed out; ``HEAD`` gets GET's head without a body; an empty head is a 400,
    not "head too large"."""

    def ask(request: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", port), HTTP_TIMEOUT) as sock:
            sock.sendall(request)
            answer = b""
            while data := sock.recv(65536):
                answer += data
            return answer

    with Serve(env(tmp_path), "--health-port", "0") as serve:
        assert serve.health_port is not None
        port = serve.health_port
        assert ask(b"GET /healthz HTTP/1.1\n\n").startswith(b"HTTP/1.1 200 ")
        head = ask(b"HEAD /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n"), head
        assert b"Content-Length: " in head and b'"ready"' not in head
        assert ask(b"\r\n\r\n").startswith(b"HTTP/1.1 400 ")
        assert ask(b"POST /readyz HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405 ")
