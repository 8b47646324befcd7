"""``otel-luna serve``: its arguments and its run, for the ``otel-luna`` command (``_cli``).

Importing this module imports nothing of the ``serve`` extra: the command checks the extra
first, and ``--workers N`` starts its processes before grpc is imported.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

#: The modules the ``serve`` extra brings (the command checks them before it runs).
EXTRA_MODULES: tuple[str, ...] = (
    "grpc",
    "aiohttp",
    "google.protobuf",
    "google.rpc",
    "opentelemetry.proto",
    *(("backports.zstd",) if sys.version_info < (3, 14) else ()),
)


def add_command(commands: Any) -> None:
    """Add ``serve`` to the ``otel-luna`` subcommands ``commands``."""
    serve = commands.add_parser(
        "serve",
        help="receive OTLP over gRPC and HTTP and write the LUNA series",
        description="An OTLP/gRPC and OTLP/HTTP receiver writing the same series as the luna "
        "exporters, with the same OTEL_EXPORTER_LUNA_* settings and TOML file. Flags override "
        "them. The bearer token is read from OTEL_EXPORTER_LUNA_SERVE_TOKEN only (never a flag: "
        "command lines are visible to other users). Stops gracefully on SIGTERM or SIGINT. "
        "Needs the serve extra: pip install 'otel-luna[serve]'.",
    )
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--grpc-port", type=int, help="OTLP/gRPC port (default 4317; 0: any)")
    serve.add_argument("--http-port", type=int, help="OTLP/HTTP port (default 4318; 0: any)")
    serve.add_argument(
        "--health-port",
        type=int,
        help="port of /healthz, /readyz and /metrics (Prometheus) on 127.0.0.1 "
        "(default: off; 0: any)",
    )
    serve.add_argument("--max-message-bytes", type=int, help="largest request accepted")
    serve.add_argument("--tls-cert", help="PEM certificate chain (with --tls-key: TLS)")
    serve.add_argument("--tls-key", help="PEM private key")
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="processes sharing the ports, each with its own spool (default 1; 0: one per CPU)",
    )


def needs(args: argparse.Namespace) -> tuple[str, ...]:
    """The modules this run needs beyond the core."""
    return EXTRA_MODULES


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT; the exit code. A bad setting raises ``SettingsError``
    and a spool that will not open ``SpoolRefused`` (the command prints them in one line)."""
    from otel_luna.serve._settings import ServeSettings
    from otel_luna.serve._startup import raise_open_file_limit
    from otel_luna.serve._workers import supervise, worker_count

    raise_open_file_limit()  # the workers inherit it

    flags = {
        "serve_host": args.host,
        "serve_grpc_port": args.grpc_port,
        "serve_http_port": args.http_port,
        "serve_health_port": args.health_port,
        "serve_max_message_bytes": args.max_message_bytes,
        "serve_tls_cert": args.tls_cert,
        "serve_tls_key": args.tls_key,
    }
    given = {name: value for name, value in flags.items() if value is not None}
    settings = ServeSettings.load(**given, serve_workers=args.workers)
    workers = worker_count(settings.serve_workers)
    if workers > 1:  # before grpc is imported: the supervisor starts processes
        return supervise(settings, given, workers)
    from otel_luna.serve._health import start_line
    from otel_luna.serve._main import Server
    from otel_luna.serve._startup import host_port

    server = Server(settings)
    server.handle_signals()
    host = settings.serve_host
    if server.health is not None:
        print(start_line(server.health), flush=True)
    print(f"otel-luna serve: OTLP/gRPC on {host_port(host, server.grpc_port)}", flush=True)
    print(f"otel-luna serve: OTLP/HTTP on {host_port(host, server.http_port)}", flush=True)
    print(f"otel-luna serve: writing to {settings.endpoint} ({settings.sink_name})", flush=True)
    server.wait_for_signal()
    print("otel-luna serve: stopped", flush=True)
    return 0
