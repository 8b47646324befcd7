"""The LUNA report as text: a table per service of its routes, the slowest stages, the
estimations (and estimations per request) and licence checks over time as sparklines (what
``otel-luna report luna`` prints)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from otel_luna.redact import printable as escape
from otel_luna.report._durations import duration_text, iso_ms, width_text
from otel_luna.report._luna_summary import (
    MIN_RATE_SECONDS,
    Licensing,
    LunaReport,
    ServiceReport,
)

__all__ = ["TOP_ERROR_CODES", "format_report", "sparkline"]

#: Most frequent error codes printed per route.
TOP_ERROR_CODES = 3
_SPARKS = "▁▂▃▄▅▆▇█"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _percent(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio * 100:.1f}%"


def sparkline(values: Sequence[float | None]) -> str:
    """One character per value: ``▁`` for zero (or the lowest value when it is negative), ``▂``
    … ``█`` for the rest in proportion to the largest, so any use shows; a blank for none."""
    numbers = [value for value in values if value is not None]
    low = min(min(numbers, default=0), 0)
    span = max(numbers, default=0) - low
    out = []
    for value in values:
        if value is None:
            out.append(" ")
        elif value <= low or span <= 0:
            out.append(_SPARKS[0])
        else:
            steps = len(_SPARKS) - 1
            out.append(_SPARKS[max(1, min(math.ceil((value - low) / span * steps), steps))])
    return "".join(out)


def _balance_line(licensing: Licensing, report: LunaReport) -> list[int | None]:
    """The last ``liveness_balance`` known at the end of each bucket (``None`` before any)."""
    values: list[int | None] = []
    checks = [c for c in licensing.history if c.liveness_balance is not None]
    index = 0
    current: int | None = None
    width = report.bucket_ns or 1
    for start in report.buckets:
        while index < len(checks) and checks[index].time_ns < start + width:
            current = checks[index].liveness_balance
            index += 1
        values.append(current)
    return values


def _service_lines(service: ServiceReport, report: LunaReport) -> list[str]:
    rows = [service.overall, *service.routes]
    names = ["all routes" if not row.route else row.route for row in rows]
    width = max(12, *(len(name) for name in names)) + 2
    headers = ("requests", "req/s", "p50 ms", "p95 ms", "p99 ms", "max ms")
    cells = [
        (
            str(row.requests),
            "-" if row.rate is None else f"{row.rate:.2f}",
            _ms(row.latency.p50),
            _ms(row.latency.p95),
            _ms(row.latency.p99),
            _ms(row.latency.max),
        )
        for row in rows
    ]
    # right-aligned, at least 9 wide and 2 spaces apart whatever the width of a number
    widths = [max(9, len(h) + 1, *(len(c[i]) + 2 for c in cells)) for i, h in enumerate(headers)]
    lines = [
        f"  {'route':<{width}}"
        + "".join(f"{h:>{w}}" for h, w in zip(headers, widths, strict=True))
        + "  errors"
    ]
    for name, row, cell in zip(names, rows, cells, strict=True):
        lines.append(
            f"  {name:<{width}}"
            + "".join(f"{c:>{w}}" for c, w in zip(cell, widths, strict=True))
            + f"  {row.errors} ({_percent(row.error_rate)})"
        )
    failing = [row for row in service.routes if row.error_codes]
    if failing:
        lines.append("  top error_code (errors points)")
        for row in failing:
            codes = ", ".join(
                f"{code or '-'} x{count}" for code, count in row.error_codes[:TOP_ERROR_CODES]
            )
            more = len(row.error_codes) - TOP_ERROR_CODES
            lines.append(
                f"    {row.route:<{width}}{codes}" + (f" (+{more} more)" if more > 0 else "")
            )
    staged = [row for row in service.routes if row.dominant_stage is not None]
    if staged:
        lines.append("  slowest stage (mean per request carrying it; share of execution_time)")
        for row in staged:
            stage = row.dominant_stage
            assert stage is not None
            lines.append(
                f"    {row.route:<{width}}{stage.field}  {_ms(stage.mean)} ms"
                f"  {_percent(stage.share)}"
            )
    if service.usages:
        lines.append(
            f"  usages_statistic: {_plural(service.usage_points, 'point')}; over time, one "
            f"column per {width_text(report.bucket_ns)}"
        )
        label = max(len(usage.estimator) for usage in service.usages) + 2
        for usage in service.usages:
            lines.append(
                f"    {usage.estimator:<{label}}{usage.total:>9}  {sparkline(usage.over_time)}"
            )
        per = service.per_request
        lines.append(
            f"    estimations per request: {_ratio(per.per_request_with_usages)} per request with "
            f"usages ({per.requests_with_usages}), {_ratio(per.per_request)} per request "
            f"({per.requests})  {sparkline(per.over_time)}"
        )
    licensing = service.licensing
    if licensing is not None:
        statuses = ", ".join(f"{name} {count}" for name, count in licensing.statuses.items())
        last = licensing.last
        balance = (
            "" if last.liveness_balance is None else f", liveness_balance {last.liveness_balance}"
        )
        lines.append(
            f"  licensing: {_plural(licensing.checks, 'check')} ({statuses}); last: "
            f"{escape(last.status or '-')} at "
            f"{iso_ms(last.time_ns // 1_000_000)}{balance}"
        )
        if licensing.balance_last is not None:
            lines.append(
                f"    liveness_balance first {licensing.balance_first}, min "
                f"{licensing.balance_min}, last {licensing.balance_last}  "
                f"{sparkline(_balance_line(licensing, report))}"
            )
        # String fields: may hold a newline, escaped here to stay on one line (the whole text
        # is escaped when printed: report._run.printable).
        if last.warnings:
            lines.append(f"    last warnings: {escape(last.warnings)}")
        if last.errors:
            lines.append(f"    last errors: {escape(last.errors)}")
    return lines


def format_report(report: LunaReport, source: str = "") -> str:
    """The report as printed by ``otel-luna report luna``."""
    lines = []
    if source:
        lines.append(f"luna report: {source}")
    first = None if report.first_ns is None else report.first_ns // 1_000_000
    last = None if report.last_ns is None else report.last_ns // 1_000_000
    if report.rate_seconds is not None:
        rates = f"rates over {duration_text(report.rate_seconds)}"
    elif report.seconds is not None:
        rates = f"no rates (a period under {MIN_RATE_SECONDS:g} s)"
    else:
        rates = "rates over -"
    lines.append(f"period: {iso_ms(first)} .. {iso_ms(last)}; {rates}")
    lines.append("points: " + ", ".join(f"{n} {name}" for name, n in report.points.items()))
    if report.skipped.lines:
        lines.append(report.skipped.describe())
    if not report.services:
        lines.append("")
        lines.append("no LUNA points in this period")
    for service in report.services:
        lines.append("")
        lines.append(f"service {service.service or '(none)'}")
        lines += _service_lines(service, report)
    lines.append("")
    lines.append(
        "percentiles: nearest rank (the smallest value with at least p % of the values <= it); "
        "errors: errors points / requests points"
    )
    return "\n".join(lines)
