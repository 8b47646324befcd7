"""The settings of ``otel-luna serve``: the core's :class:`~otel_luna.settings.Settings` and the
``serve_*`` settings of its own, declared with the same framework and loaded from the same
sources (``OTEL_EXPORTER_LUNA_SERVE_*`` variables, ``serve_*`` keys of the ``[monitoring]``
section, the command's flags as keyword arguments)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from otel_luna.settings import (
    Settings,
    SettingsError,
    number,
    parse_address,
    parse_header_text,
    parse_port,
    parse_text,
    setting,
)

#: The group of serve's settings: a section of docs/configuration.md.
SERVE = "serve"


@dataclass(frozen=True)
class ServeSettings(Settings):
    """What one ``otel-luna serve`` process runs with: the core's settings (destination,
    delivery, spool) and those of the front ends. Build with :meth:`load`."""

    shared_prefixes: ClassVar[tuple[str, ...]] = ()  # serve_* keys are this class's own

    serve_host: str = setting(
        "127.0.0.1",
        parse_address,
        "a host name or an IP address; IPv6 as ::1 or [::1], :: for all",
        group=SERVE,
        doc="address to listen on",
    )
    serve_grpc_port: int = setting(
        4317,
        parse_port,
        "0 (any free port) to 65535",
        group=SERVE,
        doc="OTLP/gRPC port",
    )
    serve_http_port: int = setting(
        4318,
        parse_port,
        "0 (any free port) to 65535",
        group=SERVE,
        doc="OTLP/HTTP port",
    )
    serve_health_port: int | None = setting(
        None,
        parse_port,
        "0 (any free port) to 65535; unset: off",
        group=SERVE,
        doc="port of the health and metrics endpoint (/healthz, /readyz, /metrics in "
        "Prometheus text format); off unless set",
    )
    serve_health_host: str = setting(
        "127.0.0.1",
        parse_address,
        "a host name or an IP address; IPv6 as ::1 or [::1]",
        group=SERVE,
        doc="address the health and metrics endpoint listens on (not serve_host: the counters "
        "are for the operator, not for every sender)",
    )
    serve_max_message_bytes: int = setting(
        16 * 1024 * 1024,
        *number(int, 1, 2**31 - 1, "bytes"),
        group=SERVE,
        doc="largest request accepted (after decompression: gzip, deflate or zstd)",
    )
    serve_workers: int = setting(
        1,
        *number(int, 0, 256, "processes; 0: one per CPU"),
        group=SERVE,
        doc="processes sharing the ports (SO_REUSEPORT), each with its own spool directory",
    )
    serve_max_connections: int = setting(
        256,
        *number(int, 1, 100_000, "per worker"),
        group=SERVE,
        doc="most OTLP/HTTP connections and gRPC calls served at once; more wait or are refused",
    )
    serve_max_inflight_bytes: int = setting(
        64 * 1024 * 1024,
        *number(int, 1024, 2**40, "bytes per worker"),
        group=SERVE,
        doc="most request bytes being read or decoded at once; beyond it requests are refused "
        "with 503 / RESOURCE_EXHAUSTED and retried by the client",
    )
    serve_max_decoded_bytes: int = setting(
        128 * 1024 * 1024,
        *number(int, 1024 * 1024, 2**40, "bytes per request, estimated before decoding"),
        group=SERVE,
        doc="most memory one request may take decoded, by a bound computed before decoding "
        "(many tiny messages decode to 30-90 times their wire size); beyond it the request is "
        "refused with 413 / RESOURCE_EXHAUSTED: send fewer spans or data points per request",
    )
    serve_read_timeout: float = setting(
        10.0,
        *number(float, 0.1, 600),
        group=SERVE,
        doc="seconds a client may take to send a request's headers and body (gRPC: the "
        "connection preface and its call's message); also bounds how long a slow client can "
        "hold up shutdown",
    )
    serve_idle_timeout: float = setting(
        60.0,
        *number(float, 0.1, 86400),
        group=SERVE,
        doc="seconds a connection may stay open without a request (HTTP keep-alive, a gRPC "
        "connection without calls); then serve closes it (gRPC: GOAWAY, the client reconnects)",
    )
    serve_tls_cert: str | None = setting(
        None,
        parse_text,
        "a PEM file path",
        group=SERVE,
        doc="TLS certificate chain; with the key, both protocols use TLS",
    )
    serve_tls_key: str | None = setting(
        None, parse_text, "a PEM file path", group=SERVE, doc="TLS private key"
    )
    serve_token: str | None = setting(
        None,
        parse_header_text,
        "a bearer token",
        group=SERVE,
        secret=True,
        doc="when set, the bearer token every request must carry (secret)",
    )

    @property
    def sees_whole_streams(self) -> bool:
        """Only with one worker: a client's connection may move between workers."""
        return self.serve_workers == 1

    def validated(self) -> ServeSettings:
        """The core's checks, then: the TLS certificate and key both or neither."""
        super().validated()
        if bool(self.serve_tls_cert) != bool(self.serve_tls_key):
            raise SettingsError(
                env_name("serve_tls_cert"), "set both the TLS certificate and key, or neither"
            )
        return self


def env_name(name: str) -> str:
    """The environment variable of the setting ``name`` (a field of :class:`ServeSettings`:
    serve's own or the core's)."""
    return ServeSettings.env_name(name)
