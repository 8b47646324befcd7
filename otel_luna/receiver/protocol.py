"""What both OTLP front ends share: the paths and services, how each signal's request is
parsed, accepted and answered, and the bearer-token check."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsPartialSuccess,
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from otel_luna.ingest import Result
from otel_luna.receiver import Receiver

TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
METRICS_SERVICE = "opentelemetry.proto.collector.metrics.v1.MetricsService"
TRACES_PATH = "/v1/traces"
METRICS_PATH = "/v1/metrics"
LOGS_PATH = "/v1/logs"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"


class Signal:
    """How one OTLP signal is parsed, accepted and answered."""

    def __init__(
        self,
        request_type: type[Message],
        accept: Callable[[Any], Result],
        respond: Callable[[int, str], Message],
    ) -> None:
        self.request_type = request_type
        self.accept = accept
        self.respond = respond


def signals(receiver: Receiver) -> dict[str, Signal]:
    # A message with 0 rejected is the OTLP way to warn (values dropped from written points).
    def traces_response(rejected: int, message: str) -> Message:
        if not rejected and not message:
            return ExportTraceServiceResponse()
        partial = ExportTracePartialSuccess(rejected_spans=rejected, error_message=message)
        return ExportTraceServiceResponse(partial_success=partial)

    def metrics_response(rejected: int, message: str) -> Message:
        if not rejected and not message:
            return ExportMetricsServiceResponse()
        partial = ExportMetricsPartialSuccess(rejected_data_points=rejected, error_message=message)
        return ExportMetricsServiceResponse(partial_success=partial)

    return {
        TRACES_PATH: Signal(ExportTraceServiceRequest, receiver.accept_traces, traces_response),
        METRICS_PATH: Signal(
            ExportMetricsServiceRequest, receiver.accept_metrics, metrics_response
        ),
    }


def token_ok(expected: str | None, header: str | None) -> bool:
    if expected is None:
        return True
    if header is None:
        return False
    # As bytes: compare_digest refuses str with non-ASCII characters (a hostile header).
    given = header.encode("utf-8", "surrogatepass")
    return hmac.compare_digest(given, f"Bearer {expected}".encode("utf-8", "surrogatepass"))
