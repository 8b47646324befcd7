"""The watchdog report as a PNG: the ``worker_works`` timings over time and the queue sizes
below (matplotlib, Agg backend, the ``report`` extra)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from otel_luna.report._png import new_figure, save_png
from otel_luna.report._watchdog import QUEUE_FIELDS, TIMING_LABELS, TIMINGS, TOTAL, Event, int_value
from otel_luna.schema.watchdog import POLLER_HEARTBEAT, WORKER_WORKS

__all__ = ["render_png"]


def render_png(events: Sequence[Event], path: Path, title: str = "watchdog timings") -> None:
    """A PNG of the ``worker_works`` timings over time (one point per ping and stage, and their
    sum), with the queue sizes below. Written atomically (temporary file, then rename)."""
    figure = new_figure(10, 6.5)
    import datetime as dt

    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    def when(event: Event) -> dt.datetime:
        return dt.datetime.fromtimestamp(event.time_ns / 1e9, tz=dt.timezone.utc)

    works = sorted((e for e in events if e.event == WORKER_WORKS), key=lambda e: e.time_ns)
    beats = sorted((e for e in events if e.event == POLLER_HEARTBEAT), key=lambda e: e.time_ns)
    timings, queue = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1.4))
    for name in (*TIMINGS, TOTAL):
        xs: list[dt.datetime] = []
        ys: list[int] = []
        for work in works:
            reached = [int_value(work.fields.get(stage)) for stage in TIMINGS]
            if name == TOTAL:
                value = None if None in reached else sum(v for v in reached if v is not None)
            else:
                value = int_value(work.fields.get(name))
            if value is not None:
                xs.append(when(work))
                ys.append(value)
        total = name == TOTAL
        timings.scatter(
            xs,
            ys,
            label=TIMING_LABELS[name],
            alpha=0.75,
            marker="D" if total else "o",
            s=14 if total else 9,
        )
    errors = [w for w in works if w.fields.get("is_error") is True]
    for error in errors:
        timings.axvline(when(error), color="tab:red", alpha=0.15, linewidth=1)
    timings.set_ylabel("ms")
    timings.set_title(
        f"{title}: {len(works)} worker_works pings"
        + (f", {len(errors)} with is_error (red lines)" if errors else "")
    )
    if works:
        timings.legend(loc="upper left", fontsize="small")
    else:
        timings.text(0.5, 0.5, "no worker_works pings", ha="center", transform=timings.transAxes)
    for name in QUEUE_FIELDS:
        points = [(when(b), v) for b in beats if (v := int_value(b.fields.get(name))) is not None]
        queue.step([p[0] for p in points], [p[1] for p in points], where="post", label=name)
    queue.set_ylabel("items")
    if beats:
        queue.legend(loc="upper left", fontsize="small")
    # matplotlib.dates has no type annotations
    locator = AutoDateLocator()  # type: ignore[no-untyped-call]
    queue.xaxis.set_major_locator(locator)
    queue.xaxis.set_major_formatter(ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    queue.set_xlabel("time (UTC)")
    save_png(figure, path)
