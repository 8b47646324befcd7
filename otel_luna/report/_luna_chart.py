"""The LUNA report as a PNG: six panels over the report's buckets (matplotlib, Agg backend, the
``report`` extra)."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

from otel_luna.redact import printable as escape
from otel_luna.report._durations import SECOND_NS as _SECOND
from otel_luna.report._durations import duration_text, width_text
from otel_luna.report._luna_summary import LunaReport
from otel_luna.report._png import new_figure, save_png
from otel_luna.schema.luna import ERRORS, REQUESTS

__all__ = ["CHART_ROUTES", "render_png"]

#: Routes drawn in each chart (the busiest); every route is in the text.
CHART_ROUTES = 8
_STATUS_COLOURS = {
    "ok": "tab:green",
    "warning": "tab:orange",
    "error": "tab:red",
    "exception": "tab:purple",
}


def render_png(report: LunaReport, path: Path, title: str = "LUNA monitoring") -> None:
    """Six panels: request rate, p95 ``execution_time`` and error rate over time per route; the
    mean time of each stage per route; ``usages_statistic`` per estimator over time, with the
    estimations per request (every estimator's sum over the ``requests`` points); licence
    status and ``liveness_balance`` over time. Written atomically."""
    figure = new_figure(15, 12)
    import matplotlib
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    (rate, p95), (failures, stages), (usages, licence) = figure.subplots(3, 2)
    services = report.services
    several = len(services) > 1
    width = report.bucket_ns or _SECOND
    when = [dt.datetime.fromtimestamp(start / 1e9, tz=dt.timezone.utc) for start in report.buckets]
    routes = sorted(
        ((service.service, route) for service in services for route in service.routes),
        key=lambda pair: -pair[1].requests,
    )[:CHART_ROUTES]

    def label(service: str, route: str) -> str:
        return f"{service} {route}" if several else route

    for service, route in routes:
        name = label(service, route.route)
        rate.plot(when, [n * _SECOND / width for n in route.requests_over_time], label=name)
        p95.plot(
            when,
            [math.nan if v is None else v * 1000 for v in route.p95_over_time],
            marker="o",
            markersize=3,
            label=name,
        )
        if route.errors:
            failures.plot(
                when,
                [
                    math.nan if n == 0 else 100 * e / n
                    for n, e in zip(route.requests_over_time, route.errors_over_time, strict=True)
                ],
                marker="o",
                markersize=3,
                label=f"{name} ({', '.join(c or '-' for c, _ in route.error_codes[:3])})",
            )
    rate.set_title(f"requests per second (buckets of {width_text(report.bucket_ns)})")
    rate.set_ylabel("req/s")
    p95.set_title("p95 execution_time per bucket")
    p95.set_ylabel("ms")
    failures.set_title("error rate per bucket (top error_codes in the legend)")
    failures.set_ylabel("% of requests")
    for axes, empty in ((rate, "no requests points"), (p95, "no requests points")):
        if routes:
            axes.legend(loc="upper left", fontsize="x-small")
        else:
            axes.text(0.5, 0.5, empty, ha="center", transform=axes.transAxes)
    if any(route.errors for _, route in routes):
        failures.legend(loc="upper left", fontsize="x-small")
    else:
        failures.text(0.5, 0.5, "no errors points", ha="center", transform=failures.transAxes)

    staged = [(s, r) for s, r in routes if r.stages]
    fields = sorted({stage.field for _, r in staged for stage in r.stages})
    palette = matplotlib.colormaps["tab20"]
    stage_palette = matplotlib.colormaps["tab20b"]  # 5 hues x 4 shades: hues first
    # Tick labels are drawn from these later: escaped here (save_png escapes the other texts).
    names = [escape(f"{r.route}\n{s}" if several else r.route, lines=True) for s, r in staged]
    lefts = [0.0] * len(staged)
    for number, field in enumerate(fields):
        means = []
        for _, route in staged:
            stage = next((st for st in route.stages if st.field == field), None)
            means.append(0.0 if stage is None else stage.mean * 1000)
        stages.barh(
            names,
            means,
            left=lefts,
            height=0.6,
            label=field,
            color=stage_palette(number % 5 * 4 + number // 5 % 4),
        )
        lefts = [a + b for a, b in zip(lefts, means, strict=True)]
    if staged:
        stages.scatter(
            [(r.latency.p50 or 0) * 1000 for _, r in staged],
            names,
            marker="|",
            s=300,
            color="black",
            zorder=3,
            label="p50 execution_time",
        )
        ends = [*lefts, *((r.latency.p50 or 0) * 1000 for _, r in staged)]
        stages.set_xlim(0, max(ends) * 1.08 or 1)
        stages.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize="x-small", ncol=3)
        stages.invert_yaxis()
    else:
        stages.text(0.5, 0.5, "no *_time fields", ha="center", transform=stages.transAxes)
    stages.set_title("mean time per stage (stages may overlap)")
    stages.set_xlabel("ms")
    stages.tick_params(axis="y", labelsize="x-small")

    totals: dict[str, list[int]] = {}
    for each in services:
        for usage in each.usages:
            line = totals.setdefault(usage.estimator, [0] * len(report.buckets))
            for index, value in enumerate(usage.over_time):
                line[index] += value
    bottoms = [0] * len(report.buckets)
    bar_width = dt.timedelta(seconds=width / _SECOND * 0.9)
    for number, (estimator, line) in enumerate(
        sorted(totals.items(), key=lambda item: -sum(item[1]))
    ):
        usages.bar(
            when,
            line,
            bottom=bottoms,
            width=bar_width,
            align="edge",
            label=f"{estimator} ({sum(line)})",
            color=palette(number % 20),
        )
        bottoms = [a + b for a, b in zip(bottoms, line, strict=True)]
    usages.set_title(
        "usages_statistic: estimations per bucket, and per request"
        + (" (all services)" if several else "")
    )
    usages.set_ylabel("estimations")
    if totals:
        lines = [each.overall.requests_over_time for each in services]
        requests = [sum(column) for column in zip(*lines, strict=True)]
        per_request = usages.twinx()
        per_request.plot(
            when,
            [
                math.nan if not count else used / count
                for used, count in zip(bottoms, requests, strict=True)
            ],
            color="black",
            marker="o",
            markersize=3,
            label="estimations per request",
        )
        per_request.set_ylabel("estimations per request")
        per_request.set_ylim(bottom=0)
        per_request.legend(loc="upper right", fontsize="x-small")
        usages.legend(loc="upper left", fontsize="x-small", ncol=2)
    else:
        usages.text(0.5, 0.5, "no usages_statistic points", ha="center", transform=usages.transAxes)

    checks = [(s.service, s.licensing) for s in services if s.licensing is not None]
    for service_name, licensing in checks:
        assert licensing is not None
        known = [c for c in licensing.history if c.liveness_balance is not None]
        times = [dt.datetime.fromtimestamp(c.time_ns / 1e9, tz=dt.timezone.utc) for c in known]
        licence.step(
            times,
            [c.liveness_balance for c in known],
            where="post",
            color="grey",
            label=f"{service_name} liveness_balance" if several else "liveness_balance",
        )
        for status, colour in _STATUS_COLOURS.items():
            marked = [(t, c) for t, c in zip(times, known, strict=True) if c.status == status]
            if marked:
                licence.scatter(
                    [t for t, _ in marked],
                    [c.liveness_balance for _, c in marked],
                    color=colour,
                    s=18,
                    zorder=3,
                    label=f"license_status {status}",
                )
    licence.set_title("licensing: liveness_balance, coloured by license_status")
    licence.set_ylabel("estimations left")
    if checks:
        licence.legend(loc="upper right", fontsize="x-small")
    else:
        licence.text(0.5, 0.5, "no licensing points", ha="center", transform=licence.transAxes)

    drawn = {rate: routes, p95: routes, failures: routes, usages: totals, licence: checks}
    for axes, content in drawn.items():
        if not content:
            axes.set_xticks([])
            axes.set_yticks([])
            continue
        # matplotlib.dates has no type annotations
        locator = AutoDateLocator()  # type: ignore[no-untyped-call]
        axes.xaxis.set_major_locator(locator)
        axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
        if report.buckets and report.bucket_ns:  # one time axis: the period's buckets
            axes.set_xlim(when[0], when[-1] + dt.timedelta(microseconds=report.bucket_ns / 1000))
        axes.grid(alpha=0.3)
    stages.grid(axis="x", alpha=0.3)
    total = report.points.get(REQUESTS, 0)
    figure.suptitle(
        f"{title}: {total} requests, {report.points.get(ERRORS, 0)} errors over "
        f"{duration_text(report.seconds)}"
        + ("" if several or not services else f" — service {services[0].service}")
    )
    save_png(figure, path)
