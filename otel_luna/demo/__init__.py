"""``otel-luna demo``: the example service, its load and a report of it (the ``demo`` extra;
built on the core's public API and the ``report`` add-on's).

Modules: :mod:`~otel_luna.demo._app` (the process manager), :mod:`~otel_luna.demo._load` (the
load generator), :mod:`~otel_luna.demo._verify` (the series read back and checked) and
:mod:`~otel_luna.demo._demo` (:func:`run_demo`, the whole run).
"""

from __future__ import annotations

from otel_luna.demo._app import DEFAULT_FILE_NAME, EXAMPLE_APP
from otel_luna.demo._command import add_command
from otel_luna.demo._command import needs as command_needs
from otel_luna.demo._command import run as run_command
from otel_luna.demo._demo import DEFAULT_PNG_NAME, DemoResult, run_demo
from otel_luna.demo._errors import DemoError
from otel_luna.demo._load import DEFAULT_CONCURRENCY, DEFAULT_REQUESTS

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_FILE_NAME",
    "DEFAULT_PNG_NAME",
    "DEFAULT_REQUESTS",
    "EXAMPLE_APP",
    "DemoError",
    "DemoResult",
    "add_command",
    "command_needs",
    "run_command",
    "run_demo",
]
