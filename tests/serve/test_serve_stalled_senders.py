"""A sender that stalls cannot starve good ones (issue 18): gRPC calls that never send their
message, and HTTP connections that trickle their bodies, each beside a good client that must be
answered while the stalled ones still wait for their read timeout.

The assertions are about order, not time: the good client's answer comes while the stalled
senders' calls or connections are still open, i.e. before their (long) read timeout."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing, suppress
from typing import Any

import grpc
import pytest

from otel_luna.outcomes import Reason
from otel_luna.serve import ServeSettings
from otel_luna.serve._grpc_server import start_grpc
from otel_luna.serve._receiver import Receiver
from otel_luna.testing import InMemorySink
from tests.serve.test_serve_http import PB, Running, good_body, head, recv_answer
from tests.support.servehelpers import TRACE_EXPORT
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow  # real sockets held open for seconds

TOKEN = "s3cr3t"
#: Calls admitted at once (SERVE_MAX_CONNECTIONS) in these tests; more stalled calls than that.
CAP = 16
STALLED = 2 * CAP
#: Long enough that nothing here ends by it while the test runs.
READ_TIMEOUT = 60.0


class GrpcRunning:
    """An in-process OTLP/gRPC server over a receiver writing to a sink."""

    def __init__(self, **settings: Any) -> None:
        self.settings = ServeSettings.load(
            {}, spool="memory", flush_interval=3600, serve_grpc_port=0, **settings
        )
        self.receiver = Receiver(self.settings, sink=InMemorySink())
        self.server, port = start_grpc(self.receiver, self.settings, 0)
        self.target = f"127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.stop(0).wait(10)
        self.receiver.shutdown()


def good_call(target: str, metadata: list[tuple[str, str]] | None) -> None:
    """One export as an OTLP client makes it: ``RESOURCE_EXHAUSTED`` is retried after the
    ``RetryInfo`` delay (1 s); OK in the end, or the test fails."""
    body, _ = good_body(1)
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(
            TRACE_EXPORT, request_serializer=None, response_deserializer=None
        )
        while True:
            try:
                call(body, timeout=READ_TIMEOUT, metadata=metadata)
                return
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
                time.sleep(1)


@pytest.mark.parametrize("token", [None, TOKEN])
def test_stalled_grpc_calls_do_not_starve_a_good_one(token: str | None) -> None:
    """More calls than SERVE_MAX_CONNECTIONS that never send their message (with the token
    when one is set; without it too, when one is set), then a good call: it is answered while
    stalled calls are still waiting, long before their read timeout. On the old server the
    stalled calls held every slot, and the good call was refused until they timed out (then
    queued behind them for the pool's threads: 47 s for 300)."""
    extra = {"serve_token": token} if token else {}
    server = GrpcRunning(serve_max_connections=CAP, serve_read_timeout=READ_TIMEOUT, **extra)
    metadata = [("authorization", f"Bearer {token}")] if token else None
    never = threading.Event()

    def no_message() -> Iterator[bytes]:
        never.wait()
        yield from ()

    with ExitStack() as stack:
        stack.callback(server.stop)
        stack.callback(never.set)
        stalled = []
        for _ in range(STALLED):
            channel = stack.enter_context(grpc.insecure_channel(server.target))
            call = channel.stream_unary(
                TRACE_EXPORT, request_serializer=None, response_deserializer=None
            )
            stalled.append(call.future(no_message(), timeout=READ_TIMEOUT, metadata=metadata))
        unauthenticated = []
        if token:  # no token: refused before admission, never holding a slot
            for _ in range(STALLED):
                channel = stack.enter_context(grpc.insecure_channel(server.target))
                call = channel.stream_unary(
                    TRACE_EXPORT, request_serializer=None, response_deserializer=None
                )
                unauthenticated.append(call.future(no_message(), timeout=READ_TIMEOUT))
        # Those beyond the cap are refused at once: then CAP stalled calls hold every slot.
        wait_until(
            lambda: sum(f.done() for f in stalled),
            lambda done: done >= STALLED - CAP,
            READ_TIMEOUT,
            "stalled calls beyond the cap refused",
        )
        for future in unauthenticated:
            assert future.exception(timeout=READ_TIMEOUT).code() == grpc.StatusCode.UNAUTHENTICATED

        good_call(server.target, metadata)

        waiting = [future for future in stalled if not future.done()]
        print(f"\ngood call answered; {len(waiting)} of {CAP} admitted stalled calls still wait")
        # They were all admitted before the good call and all have the same (long) deadline:
        # some still waiting means the good call did not wait for their timeout. (8 of them
        # read at a time; a reader that waits 1 s for its message while others wait for one
        # is cut, so some are cut before.)
        assert waiting
        counts = server.receiver.requests.snapshot()
        assert counts[Reason.REQUESTS_TRACES] == 1
        assert counts[Reason.REQUESTS_REFUSED_BUSY] >= STALLED - CAP
        if token:
            assert counts[Reason.REQUESTS_REFUSED_UNAUTHENTICATED] == STALLED
        never.set()


def test_trickling_http_bodies_do_not_starve_a_good_client() -> None:
    """Twice SERVE_MAX_CONNECTIONS connections that send a head and then their body a byte
    at a time (half of them wait in the listen backlog, ahead of the good client): the good
    client is answered while the trickling ones are still being read, long before their read
    timeout. On the old server it waited for a trickling body's read timeout (~9.5 s each
    for 300 such connections)."""
    server = Running(serve_max_connections=CAP, serve_read_timeout=READ_TIMEOUT)
    body, _ = good_body(1)
    stop = threading.Event()
    with ExitStack() as stack:
        stack.callback(server.stop)
        stack.callback(stop.set)
        slow = []
        for _ in range(STALLED):
            sock = stack.enter_context(closing(server.connect()))
            sock.sendall(head(Content_Type=PB["Content-Type"], Content_Length=str(len(body))))
            slow.append(sock)

        def trickle() -> None:
            sent = 0
            while not stop.wait(0.1) and sent < len(body) - 1:
                for sock in slow:
                    with suppress(OSError):
                        sock.send(body[sent : sent + 1])
                sent += 1

        trickler = threading.Thread(target=trickle, daemon=True)
        trickler.start()
        stack.callback(trickler.join)
        wait_until(
            lambda: len(server.server.connections),
            lambda count: count >= CAP,
            READ_TIMEOUT,
            "trickling connections at the cap",
        )
        with closing(server.connect()) as good:
            good.sendall(head(Content_Type=PB["Content-Type"], Content_Length=str(len(body))))
            good.sendall(body)
            status, _, _ = recv_answer(good, timeout=READ_TIMEOUT)
        stop.set()
        assert status == 200
        # Each cut trickler was answered 408 (or closed), to make room: one for each trickler
        # in the backlog ahead of the good client, and one for the good client, at most.
        cut = server.receiver.requests.snapshot()[Reason.REQUESTS_REFUSED_TIMEOUT]
        print(f"\ngood client answered; {cut} of {STALLED} trickling bodies cut to make room")
        assert 1 <= cut <= STALLED - CAP + 1
        assert server.receiver.requests.snapshot()[Reason.REQUESTS_TRACES] == 1


def test_trickling_http_bodies_do_not_keep_the_byte_budget_from_a_good_client() -> None:
    """Bodies that declare a large length hold it in SERVE_MAX_INFLIGHT_BYTES from their head
    on; trickled, they kept every other client at 503 until their read timeout. Now a client
    refused 503 has the slowest of them cut (408) to make room, and its retry is answered."""
    budget = 1 << 20
    server = Running(
        serve_max_inflight_bytes=budget,
        serve_max_message_bytes=budget,
        serve_read_timeout=READ_TIMEOUT,
    )
    declared = budget // 4
    stop = threading.Event()
    with ExitStack() as stack:
        stack.callback(server.stop)
        stack.callback(stop.set)
        slow = []
        for _ in range(4):  # all of the budget
            sock = stack.enter_context(closing(server.connect()))
            sock.sendall(head(Content_Type=PB["Content-Type"], Content_Length=str(declared)))
            slow.append(sock)

        def trickle() -> None:
            while not stop.wait(0.1):
                for sock in slow:
                    with suppress(OSError):
                        sock.send(b"\0")

        trickler = threading.Thread(target=trickle, daemon=True)
        trickler.start()
        stack.callback(trickler.join)
        wait_until(
            lambda: server.receiver.budget.used,
            lambda used: used == budget,
            READ_TIMEOUT,
            "trickling bodies holding the budget",
        )
        body, _ = good_body(1)
        while True:  # as an OTLP client: 503 is retried after Retry-After
            with closing(server.connect()) as good:
                good.sendall(head(Content_Type=PB["Content-Type"], Content_Length=str(len(body))))
                good.sendall(body)
                status, headers, _ = recv_answer(good, timeout=READ_TIMEOUT)
            if status != 503:
                break
            time.sleep(float(headers["retry-after"]))
        stop.set()
        assert status == 200
        cut = server.receiver.requests.snapshot()[Reason.REQUESTS_REFUSED_TIMEOUT]
        print(f"\ngood client answered; {cut} of 4 trickling bodies cut to make room")
        assert 1 <= cut < 4  # the good body needs little room: not every trickler is cut
