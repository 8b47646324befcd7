"""A port of 127.0.0.1 that refuses connections until a test opens it to an upstream server.

For tests of a destination that is down and comes back *at the same address*: the spool is kept
per destination, so the process that replays it must be configured with the same endpoint.
Only the standard library is used.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class ClosedPort:
    """A port of 127.0.0.1 that refuses connections (bound, not listening) until :meth:`open`
    relays it to ``upstream``; holding the socket keeps anyone else from taking the port."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._conns: list[socket.socket] = []
        self._closed = threading.Event()

    def open(self) -> None:
        self.sock.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream, timeout=30)
            self._conns += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closed.set()
        for sock in [self.sock, *self._conns]:
            with contextlib.suppress(OSError):
                sock.close()
