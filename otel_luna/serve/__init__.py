"""``otel-luna serve``: an OTLP gRPC and HTTP receiver (the ``serve`` extra)."""

from __future__ import annotations

from otel_luna.serve._command import add_command
from otel_luna.serve._command import needs as command_needs
from otel_luna.serve._command import run as run_command
from otel_luna.serve._settings import SERVE, ServeSettings
from otel_luna.serve._supervisor_status import describe_supervisors, supervisor_line

__all__ = [
    "SERVE",
    "ServeSettings",
    "add_command",
    "command_needs",
    "describe_supervisors",
    "run_command",
    "supervisor_line",
]
