"""``otel-luna report``: read the series back and answer what a dashboard of them shows (the
``report`` extra; built on the core's public API only).

* :mod:`otel_luna.report._luna` — ``report luna``: the LUNA PLATFORM series (``requests``,
  ``errors``, ``usages_statistic``, ``licensing``) per service and route: its numbers
  (``_luna_summary``), text (``_luna_text``) and chart (``_luna_chart``);
* :mod:`otel_luna.report._watchdog` — ``report watchdog``: the watchdog-proxy metrics document's
  questions (chart: ``_watchdog_chart``);
* what both share: :mod:`~otel_luna.report._run` (one :func:`run_report` for every report),
  :mod:`~otel_luna.report._source` (a line-protocol file or an InfluxDB, and the points read),
  :mod:`~otel_luna.report._query` (the InfluxDB query client, also the demo's: InfluxQL for 1.x,
  Flux for 2.x; its answers parsed in :mod:`~otel_luna.report._answers`),
  :mod:`~otel_luna.report._stats` (nearest-rank percentiles),
  :mod:`~otel_luna.report._durations`, :mod:`~otel_luna.report._png` and
  :mod:`~otel_luna.report._errors`.

Each report reads rows at the edge, summarises them with a pure function into a dataclass, and
formats or charts that.
"""

from __future__ import annotations

from otel_luna.report._command import add_command, positive_int
from otel_luna.report._command import needs as command_needs
from otel_luna.report._command import run as run_command
from otel_luna.report._durations import parse_duration
from otel_luna.report._errors import ChartError, ReportError
from otel_luna.report._luna import luna_report, show
from otel_luna.report._query import (
    DEFAULT_LIMITS,
    InfluxSource,
    Limits,
    influx_source,
    influxql_identifier,
    ping,
    query_flux,
    query_influxql,
    run_influxql,
)
from otel_luna.report._run import MadeReport, MakeReport, Window, run_report
from otel_luna.report._source import Source, as_source, read_points, resolve_source
from otel_luna.report._stats import nearest_rank
from otel_luna.report._watchdog import watchdog_report

__all__ = [
    "DEFAULT_LIMITS",
    "ChartError",
    "InfluxSource",
    "Limits",
    "MadeReport",
    "MakeReport",
    "ReportError",
    "Source",
    "Window",
    "add_command",
    "as_source",
    "command_needs",
    "influx_source",
    "influxql_identifier",
    "luna_report",
    "nearest_rank",
    "parse_duration",
    "ping",
    "positive_int",
    "query_flux",
    "query_influxql",
    "read_points",
    "resolve_source",
    "run_command",
    "run_influxql",
    "run_report",
    "show",
    "watchdog_report",
]
