"""A local HTTP receiver with Ping Centre's contract, for the tests (a fake: Ping Centre itself
cannot be had here). POST JSON; 400 with an empty body when ``topic`` is missing; 200 with an
empty body otherwise. ``down`` makes it answer 503 for a while, ``answer`` any status (401,
403, 404 ...) to every request, and ``max_body`` 413 to a ping larger than that."""

from __future__ import annotations

import http.server
import json
import threading
from typing import Any

from tests.support.httpstub import HttpStub


class PingCentre:
    def __init__(self) -> None:
        self.pings: list[dict[str, Any]] = []
        self.bodies: list[bytes] = []
        self.requests = 0
        self.down = False
        self.answer: int | None = None
        self.max_body: int | None = None
        self._lock = threading.Lock()
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with stub._lock:
                    stub.requests += 1
                    if stub.down:
                        status = 503
                    elif stub.answer is not None:
                        status = stub.answer
                    elif stub.max_body is not None and len(body) > stub.max_body:
                        status = 413
                    else:
                        try:
                            ping = json.loads(body)
                        except ValueError:
                            ping = {}
                        status = 200 if isinstance(ping, dict) and "topic" in ping else 400
                        if status == 200:
                            stub.pings.append(ping)
                            stub.bodies.append(body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._stub = HttpStub(Handler)
        self.server = self._stub.server
        self.url = f"{self._stub.url}/v3/links/ping-centre"

    def stop(self) -> None:
        self._stub.stop()
