"""Hand-written HTTP servers (a ``BaseHTTPRequestHandler``) on 127.0.0.1, each in a thread.

``serve_forever`` polls for its shutdown every POLL_INTERVAL (not the standard library's
0.5 s), so a teardown does not wait half a second per stub. Tests get them from the
``http_stub`` fixture (``tests/conftest.py``), which stops them after the test; helpers that
hold one (``pingcentre_stub``, ``faultproxy``) use :class:`HttpStub` directly.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

#: Seconds between the server's checks for a shutdown request.
POLL_INTERVAL = 0.05


class HttpStub:
    """``handler`` serving on a free port of 127.0.0.1 in a daemon thread until :meth:`stop`
    (or the end of a ``with`` block). ``setup(server)`` runs before it serves (e.g. to wrap
    its socket in TLS, or to give the handler state on the server)."""

    def __init__(
        self,
        handler: type[http.server.BaseHTTPRequestHandler],
        *,
        server_class: type[http.server.ThreadingHTTPServer] = http.server.ThreadingHTTPServer,
        setup: Callable[[Any], None] | None = None,
        scheme: str = "http",
    ) -> None:
        self.server = server_class(("127.0.0.1", 0), handler)
        if setup is not None:
            setup(self.server)
        self.port: int = self.server.server_address[1]
        #: The base URL, ``http://127.0.0.1:<port>``.
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": POLL_INTERVAL}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Shut the server down (within POLL_INTERVAL), close its socket, join its thread."""
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()

    def __enter__(self) -> HttpStub:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
