"""Shared by the benchmark scripts: interleaved rounds, per-round ratios, the table and JSON.

The machine is shared and noisy, so absolute times drift between runs (and within one). Each
script therefore runs the workloads it compares one after the other inside a *round*, in an order
that rotates from round to round, and reports the ratio of their costs *within* each round: the
median over rounds, with the min and max. Absolute microseconds per item are printed only for
orientation.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

#: A workload runs once over its items and returns the elapsed time in nanoseconds, measured
#: around the part it means to time (setup and clean-up stay outside).
Workload = Callable[[], int]


def arguments(description: str, *, rounds: int, n: int, n_help: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--rounds", type=int, default=rounds, help=f"timed rounds (default {rounds})"
    )
    parser.add_argument("--n", type=int, default=n, help=f"{n_help} (default {n})")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the synthetic workload")
    parser.add_argument("--json", action="store_true", help="print one JSON object, not a table")
    return parser


def run_rounds(
    workloads: Mapping[str, Workload],
    *,
    rounds: int,
    warmup: int,
    between: Callable[[], None] | None = None,
) -> dict[str, list[int]]:
    """Run every workload once per round, rotating their order; elapsed ns per workload/round.

    ``between`` runs untimed after each workload (e.g. to drain a queue). The cyclic garbage
    collector stays on (applications run with it), but a full collection runs before each
    workload so that one workload does not pay for the garbage another left behind.
    """
    names = list(workloads)
    times: dict[str, list[int]] = {name: [] for name in names}
    for index in range(warmup + rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            elapsed = workloads[name]()
            if between is not None:
                between()
            if index >= warmup:
                times[name].append(elapsed)
    return times


def summary(values: Sequence[float], digits: int = 4) -> dict[str, float]:
    """Median, min and max (and the quartiles, for the JSON) of per-round figures."""
    quartiles = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "p25": round(quartiles[0], digits),
        "p75": round(quartiles[2], digits),
    }


def per_item_us(times: Sequence[int], items: int) -> list[float]:
    return [t / items / 1000 for t in times]


def ratios(numerator: Sequence[int], denominator: Sequence[int]) -> list[float]:
    """Per-round ratios (both workloads timed over the same number of items in each round)."""
    return [a / b for a, b in zip(numerator, denominator, strict=True)]


def environment() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    packages = {}
    for name in ("opentelemetry-sdk", "influxdb-client", "otel-luna"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "packages": packages,
    }


def table(rows: Sequence[Sequence[str]], out: Any = sys.stdout) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for number, row in enumerate(rows):
        cells = [
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip(), file=out)
        if number == 0:
            print("  ".join("-" * w for w in widths), file=out)


def fmt(stats: Mapping[str, float], spec: str = ".3f") -> tuple[str, str, str]:
    return (
        format(stats["median"], spec),
        format(stats["min"], spec),
        format(stats["max"], spec),
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds every process on the machine used so far (all CPUs), from /proc/stat."""
    with open("/proc/stat") as file:
        fields = [int(x) for x in file.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]  # steal is not ours
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


class CpuSampler:
    """CPU seconds used so far by the processes of each role, and by the whole machine.

    ``pids()`` names the processes of each role; it is asked again at every sample (a
    supervisor's workers may be restarted). A process that is gone counts 0.
    """

    def __init__(self, pids: Callable[[], Mapping[str, Iterable[int]]]) -> None:
        self._pids = pids

    def per_process(self) -> dict[str, list[float]]:
        """Each role's processes, one figure each, and ``machine`` (one figure)."""
        out = {role: [_cpu_or_zero(pid) for pid in pids] for role, pids in self._pids().items()}
        out["machine"] = [machine_busy_seconds()]
        return out

    def totals(self) -> dict[str, float]:
        """Each role's processes together, and ``machine``."""
        return {role: sum(values) for role, values in self.per_process().items()}


def _cpu_or_zero(pid: int) -> float:
    with contextlib.suppress(OSError):
        return cpu_seconds(pid)
    return 0.0


def dump(report: Mapping[str, Any]) -> None:
    json.dump(report, sys.stdout, indent=2)
    print()


# ---------------------------------------------------------------- the in-process exporter's harness


class NullSpanExporter(SpanExporter):
    """The SDK's cost alone: a span exporter that keeps nothing."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class NullSink:
    """A sink that takes every body and keeps nothing."""

    def write(self, body: bytes) -> None:
        pass

    def close(self) -> None:
        pass


def sdk_provider(exporter: SpanExporter, service: str) -> TracerProvider:
    """A TracerProvider sampling everything, ``service`` as its resource's service.name, every
    span handed to ``exporter`` as it ends (SimpleSpanProcessor)."""
    provider = TracerProvider(
        sampler=ALWAYS_ON,
        resource=Resource.create({"service.name": service}),
        shutdown_on_exit=False,
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def idle_writer_settings(state_dir: str, spool: str = "disk") -> Any:
    """Settings whose writer thread sleeps while timed (an hour's flush interval, batches larger
    than a round), the spool and dead letters under ``state_dir``. An empty environ, so
    OTEL_EXPORTER_LUNA_* variables of the shell do not change the run; only the settings this
    version of otel_luna has are passed (benchmarks also run against older trees)."""
    import dataclasses

    from otel_luna.settings import Settings

    wanted: dict[str, Any] = {
        "flush_interval": 3600.0,
        "batch_size": 10**9,
        "max_queue_size": 10**9,
        "spool": spool,
        "spool_dir": os.path.join(state_dir, "spool"),
        "dead_letter": os.path.join(state_dir, "dead-letter.jsonl"),
    }
    known = {f.name for f in dataclasses.fields(Settings)}
    return Settings.load({}, **{k: v for k, v in wanted.items() if k in known})
