"""``otel-luna report``: read the series back and answer what a dashboard of them shows.

* :mod:`otel_luna.report._luna` — ``report luna``: the LUNA PLATFORM series (``requests``,
  ``errors``, ``usages_statistic``, ``licensing``) per service and route;
* :mod:`otel_luna.report._watchdog` — ``report watchdog``: the watchdog-proxy metrics document's
  questions;
* :mod:`otel_luna.report._common` — what both share: the sources (a line-protocol file, InfluxDB
  1.x over InfluxQL, InfluxDB 2.x over Flux), nearest-rank percentiles, durations, the PNG file.

Each report reads rows at the edge, summarises them with a pure function into a dataclass, and
formats or charts that.
"""

from __future__ import annotations

from otel_luna.report._common import ReportError, nearest_rank, parse_duration

__all__ = ["ReportError", "nearest_rank", "parse_duration"]
