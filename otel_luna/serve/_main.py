"""``otel-luna serve``: the OTLP/gRPC and OTLP/HTTP front ends over one :class:`Receiver`.

Errors follow the OTLP specification: a malformed body is ``INVALID_ARGUMENT`` / 400, a full
spool ``RESOURCE_EXHAUSTED`` with ``RetryInfo`` / 503 with ``Retry-After``, a missing or wrong
bearer token ``UNAUTHENTICATED`` / 401, an oversized message ``RESOURCE_EXHAUSTED`` / 413.

Whatever stops it from starting (a spool directory it cannot use, a TLS file it cannot read, a
port it cannot listen on) is a :class:`~otel_luna.settings.SettingsError` naming the setting and
the path or address: one line and exit status 2 from the command.
"""

from __future__ import annotations

import signal
import threading

from otel_luna.delivery import SpoolRefused, SpoolUnavailable
from otel_luna.redact import printable
from otel_luna.serve._grpc_server import GrpcServer, start_grpc
from otel_luna.serve._health import HealthServer, ReceiverHealth, start_health
from otel_luna.serve._http_server import HttpServer, start_http
from otel_luna.serve._receiver import Receiver
from otel_luna.serve._settings import ServeSettings, env_name
from otel_luna.serve._startup import check_tls_files, listening, path_error
from otel_luna.settings import SettingsError


class Server:
    """Both front ends, the receiver and the health endpoint if asked for
    (:mod:`otel_luna.serve._health`); :meth:`stop` drains in-flight requests, then flushes."""

    def __init__(self, settings: ServeSettings, *, reuse_port: bool = False) -> None:
        self.settings = settings
        check_tls_files(settings)
        try:
            self.receiver = Receiver(settings)
        except SpoolRefused as error:  # one line: the path, why, the setting
            where = f"{printable(error.path)} {error.why}; refusing it"
            raise SettingsError(env_name("spool_dir"), where) from None
        except SpoolUnavailable as error:
            raise path_error("spool_dir", settings.spool_dir, error) from None
        except OSError as error:  # the destination's (a file sink's directory)
            raise path_error("endpoint", settings.endpoint, error) from None
        self.grpc: GrpcServer | None = None
        self.http: HttpServer | None = None
        self.health: HealthServer | None = None
        self.grpc_port = self.http_port = 0
        self._signalled: threading.Event | None = None
        host = settings.serve_host
        try:
            self.grpc, self.grpc_port = listening(
                "serve_grpc_port",
                host,
                settings.serve_grpc_port,
                reuse_port,
                lambda: start_grpc(
                    self.receiver, settings, settings.serve_grpc_port, reuse_port=reuse_port
                ),
            )
            self.http, self.http_port = listening(
                "serve_http_port",
                host,
                settings.serve_http_port,
                reuse_port,
                lambda: start_http(
                    self.receiver, settings, settings.serve_http_port, reuse_port=reuse_port
                ),
            )
            self.health = start_health(ReceiverHealth(self.receiver), settings)
        except BaseException:
            self.stop()
            raise

    def stop(self, grace: float = 5.0) -> None:
        # Both front ends drain at once: requests in flight get ``grace`` (and a client still
        # sending, serve_read_timeout), then the receiver delivers within SHUTDOWN_TIMEOUT.
        # The health endpoint goes first: a stopping serve is not ready for more.
        if self.health is not None:
            self.health.stop()
        grpc_stopped = None if self.grpc is None else self.grpc.stop(grace)
        if self.http is not None:
            self.http.stop(grace)
        if grpc_stopped is not None:
            grpc_stopped.wait(grace + 1)
        self.receiver.shutdown()

    def handle_signals(self) -> threading.Event:
        """From now on SIGTERM and SIGINT set the event :meth:`wait_for_signal` waits for.
        Call it before the start lines: whoever reads them may send SIGTERM at once."""
        if self._signalled is None:
            self._signalled = threading.Event()
            done = self._signalled
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: done.set())
        return self._signalled

    def wait_for_signal(self) -> None:
        """Block until SIGTERM or SIGINT, then stop gracefully."""
        done = self.handle_signals()
        # Wait with a timeout: a signal delivered to another thread only sets a flag that the
        # main thread checks when it runs Python code; a wait without timeout may never return.
        while not done.wait(0.5):
            pass
        self.stop()
