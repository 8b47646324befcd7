"""OTLP/gRPC (grpcio): ``TraceService/Export`` and ``MetricsService/Export`` over one
:class:`~otel_luna.receiver.Receiver`; the Logs service is not registered (``UNIMPLEMENTED``)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from otel_luna.receiver import RETRY_AFTER_SECONDS, Backpressure, Receiver
from otel_luna.receiver.protocol import (
    METRICS_PATH,
    METRICS_SERVICE,
    TRACE_SERVICE,
    TRACES_PATH,
    Signal,
    signals,
    token_ok,
)
from otel_luna.settings import Settings


def _grpc_handler(signal_: Signal, token: str | None) -> Callable[[bytes, Any], Message]:
    def export(data: bytes, context: grpc.ServicerContext) -> Message:
        metadata = dict(context.invocation_metadata())
        if not token_ok(token, metadata.get("authorization")):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        try:
            request = signal_.request_type.FromString(data)
        except DecodeError as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed OTLP protobuf: {error}")
        try:
            rejected, message, _ = signal_.accept(request)
        except Backpressure as error:
            retry = error_details_pb2.RetryInfo(retry_delay=Duration(seconds=RETRY_AFTER_SECONDS))
            details = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=str(error))
            details.details.add().Pack(retry)
            context.set_trailing_metadata(
                (("grpc-status-details-bin", details.SerializeToString()),)
            )
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
        return signal_.respond(rejected, message)

    return export


def start_grpc(receiver: Receiver, settings: Settings, port: int) -> tuple[grpc.Server, int]:
    """A started gRPC server; returns it and the bound port (``port`` 0 picks one)."""
    options = [
        ("grpc.max_receive_message_length", settings.serve_max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=options)
    by_path = signals(receiver)
    for service, path in ((TRACE_SERVICE, TRACES_PATH), (METRICS_SERVICE, METRICS_PATH)):
        handler = grpc.unary_unary_rpc_method_handler(
            _grpc_handler(by_path[path], settings.serve_token),
            request_deserializer=None,  # raw bytes: we answer malformed input ourselves
            response_serializer=lambda message: message.SerializeToString(),
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, {"Export": handler}),)
        )
    address = f"{settings.serve_host}:{port}"
    if settings.serve_tls_cert and settings.serve_tls_key:
        with open(settings.serve_tls_key, "rb") as key, open(settings.serve_tls_cert, "rb") as cert:
            credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
        bound = server.add_secure_port(address, credentials)
    else:
        bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot listen for OTLP/gRPC on {address}")
    server.start()
    return server, bound
