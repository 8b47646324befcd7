"""Our line-protocol encoder against influxdb-client's ``Point`` on the same points.

    .venv/bin/python benchmarks/encoder.py [--rounds 21] [--n 4000] [--json]

Points: realistic LUNA ``requests`` / ``errors`` points, built once: 3-5 tags (``service``,
``route``, ``status_code``, ``handler_id`` on handler routes, ``error_code`` on errors) and 2-6
fields (``request_id`` string, ``execution_time`` float from integer ns, stage timings as
``perf_counter`` differences, an int and a string extra field on some), time in ns.

Each round times, over the same ``--n`` points:

* ``influxdb-client Point``: ``Point(measurement).tag(..).field(..).time(ns, WritePrecision.NS)
  .to_line_protocol()`` (building and serialising, as an application using it does);
* ``ours: encode_point``: ``LineProtocolEncoder().encode_point(point)`` on prebuilt
  ``otel_luna.Point`` s, one encoder for the run (its tag-set cache warm, as in the exporter);
* ``ours: Point() + encode_point``: building our ``Point`` (sorting the tags) inside the timing too;
* ``ours: cold caches``: a fresh encoder for every point (created untimed), so every
  measurement, tag set and field key is escaped and checked as if seen for the first time.

Reported: µs per point (orientation only) and the per-round speed-up, influxdb-client's time over
ours (median, min, max). Target: ``encode_point`` >= 6x faster. Before timing, every point is
encoded both ways and the lines compared, exactly and after parsing; differences are reported,
on the timed points and on a set of edge-case probes (whole floats, escapes, large numbers).
Exit status is 0 whatever the figures.
"""

from __future__ import annotations

import gc
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from _common import (
    arguments,
    dump,
    environment,
    fmt,
    per_item_us,
    ratios,
    run_rounds,
    summary,
    table,
)
from influxdb_client import Point as InfluxPoint
from influxdb_client import WritePrecision

from otel_luna.encoding._lineprotocol import LineProtocolEncoder
from otel_luna.schema._point import Point

TARGET = 6.0
Raw = tuple[str, dict[str, str], dict[str, Any], int]

_ROUTES = (
    (
        "POST:/6/handlers/{handler_id}/events",
        40,
        ("load_images_for_processing_time", "event_storage_policy_time"),
    ),
    ("POST:/6/detector", 20, ("download_images_time",)),
    ("POST:/6/extractor", 15, ("load_face_samples_time", "save_face_attributes_time")),
    ("GET:/6/handlers/{handler_id}", 10, ()),
    (
        "POST:/6/verifiers/{verifier_id}/verifications",
        10,
        ("download_images_time", "match_policy_time"),
    ),
    ("GET:/6/healthcheck", 5, ()),
)


def raw_points(n: int, seed: int, error_share: float = 0.1) -> list[Raw]:
    """(measurement, tags, fields, time_ns) for ``n`` points, errors mixed in as they occur."""
    rng = random.Random(seed)
    handlers = [f"{rng.getrandbits(128):032x}" for _ in range(8)]
    handlers = [f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}" for h in handlers]
    out: list[Raw] = []
    now = 1_763_798_400_000_000_000
    while len(out) < n:
        route, _, stages = rng.choices(_ROUTES, [w for _, w, _ in _ROUTES])[0]
        failed = rng.random() < error_share
        status = rng.choice((400, 404, 422, 500, 503)) if failed else 200
        tags = {"route": route, "service": "luna-handlers", "status_code": str(status)}
        if "{handler_id}" in route:
            tags["handler_id"] = rng.choice(handlers)
        extra: dict[str, Any] = {}
        if rng.random() < 0.3:
            extra["faces_count"] = rng.randrange(0, 12)  # luna.field.* int
        if rng.random() < 0.2:
            extra["client"] = rng.choice(("luna-ui/5.32.1", "sdk-python/1.4.0", "curl"))
        request_id = f"{rng.getrandbits(128):032x}"
        start = now + len(out) * 1_000_003
        fields: dict[str, Any] = {
            **extra,
            "request_id": request_id,
            "execution_time": rng.randrange(200_000, 900_000_000) / 1e9,
        }
        for stage in stages:  # monitor_time: perf_counter() - perf_counter()
            t0 = rng.uniform(1_000.0, 90_000.0)
            fields[stage] = (t0 + rng.uniform(0.0005, 0.4)) - t0
        out.append(("requests", dict(sorted(tags.items())), fields, start))
        if failed and len(out) < n:
            error_tags = {**tags, "error_code": rng.choice(("0", "11027", "12012", "22002"))}
            error_fields = {**extra, "request_id": request_id}
            if len(error_fields) < 2:
                error_fields["faces_count"] = rng.randrange(0, 12)
            out.append(("errors", dict(sorted(error_tags.items())), error_fields, start))
    return out


def ours(raw: Raw) -> Point:
    measurement, tags, fields, time_ns = raw
    return Point(measurement, tuple(sorted(tags.items())), dict(fields), time_ns)


def influx_line(raw: Raw) -> str:
    measurement, tags, fields, time_ns = raw
    point = InfluxPoint(measurement)
    for key, value in tags.items():
        point.tag(key, value)
    for key, value in fields.items():
        point.field(key, value)
    return point.time(time_ns, WritePrecision.NS).to_line_protocol()


# -- comparison ---------------------------------------------------------------------------------


def _unescaped(text: str, i: int, stops: str) -> tuple[str, int]:
    """Read up to an unescaped character of ``stops``; backslash escapes the next character."""
    out = []
    while i < len(text) and text[i] not in stops:
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in ',= \\"':
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out), i


def parse(
    line: str,
) -> tuple[str, tuple[tuple[str, str], ...], dict[str, tuple[str, Any, str]], int]:
    """Line protocol -> (measurement, tags, {field: (type, value, text as written)}, time).

    A small parser for comparing the two encoders' lines, not a validator.
    """
    measurement, i = _unescaped(line, 0, ", ")
    tags = []
    while line[i] == ",":
        key, i = _unescaped(line, i + 1, "=")
        value, i = _unescaped(line, i + 1, ", ")
        tags.append((key, value))
    fields: dict[str, tuple[str, Any, str]] = {}
    i += 1
    while True:
        key, i = _unescaped(line, i, "=")
        i += 1
        if line[i] == '"':
            j, out = i + 1, []
            while line[j] != '"':
                if line[j] == "\\" and line[j + 1] in '"\\':
                    j += 1
                out.append(line[j])
                j += 1
            fields[key] = ("str", "".join(out), line[i : j + 1])
            i = j + 1
        else:
            j = i
            while j < len(line) and line[j] not in ", ":
                j += 1
            text = line[i:j]
            if text.endswith("i"):
                fields[key] = ("int", int(text[:-1]), text)
            elif text in ("true", "false", "t", "f", "T", "F", "True", "False", "TRUE", "FALSE"):
                fields[key] = ("bool", text[0] in "tT", text)
            else:
                fields[key] = ("float", float(text), text)
            i = j
        if i >= len(line) or line[i] == " ":
            break
        i += 1
    stamp = int(line[i + 1 :]) if i < len(line) else 0
    return measurement, tuple(tags), fields, stamp


def compare(ours_line: str, influx: str) -> str:
    """``exact``, ``same after parsing (what differs in the text)`` or ``DIFFERENT ...``."""
    if ours_line == influx:
        return "exact"
    try:
        a, b = parse(ours_line), parse(influx)
    except Exception as error:  # noqa: BLE001 - report, never crash the benchmark
        return f"unparsable ({type(error).__name__}: {error})"
    values_a = {key: field[:2] for key, field in a[2].items()}
    values_b = {key: field[:2] for key, field in b[2].items()}
    differs = [
        name
        for name, x, y in (
            ("measurement", a[0], b[0]),
            ("tags", sorted(a[1]), sorted(b[1])),
            ("field values", values_a, values_b),
            ("time", a[3], b[3]),
        )
        if x != y
    ]
    if differs:
        return "DIFFERENT " + ", ".join(differs)
    reasons = []
    if a[1] != b[1]:
        reasons.append("tag order")
    if list(a[2]) != list(b[2]):
        reasons.append("field order: influxdb-client sorts fields by key, ours keeps the point's")
    spelled = [key for key in a[2] if a[2][key][2] != b[2][key][2]]
    if spelled:
        shown = ", ".join(f"{k}: {a[2][k][2]} vs {b[2][k][2]}" for k in spelled[:2])
        reasons.append(f"number spelling ({shown})")
    return "same after parsing (" + ("; ".join(reasons) or "escaping") + ")"


PROBES: list[tuple[str, Raw]] = [
    ("whole float 1.0", ("requests", {"service": "s"}, {"execution_time": 1.0}, 1)),
    ("float 2.5e-07", ("requests", {"service": "s"}, {"execution_time": 2.5e-07}, 1)),
    ("float 1e16", ("requests", {"service": "s"}, {"x": 1e16}, 1)),
    ("float -0.0", ("requests", {"service": "s"}, {"x": -0.0}, 1)),
    ("int 2**62", ("requests", {"service": "s"}, {"n": 2**62}, 1)),
    ("bool True", ("requests", {"service": "s"}, {"ok": True}, 1)),
    ('string with " and \\', ("requests", {"service": "s"}, {"msg": 'say "hi" C:\\x'}, 1)),
    ("tag value with space , =", ("requests", {"route": "GET:/a b,c=d"}, {"x": 1.5}, 1)),
    ("measurement with space", ("my series", {"a": "b"}, {"x": 1.5}, 1)),
    ("unicode tag and field", ("requests", {"route": "GET:/ёлка"}, {"msg": "日本"}, 1)),
    ("empty tag value", ("requests", {"a": "", "b": "c"}, {"x": 1.5}, 1)),
    ("NaN field next to a good one", ("requests", {"a": "b"}, {"x": float("nan"), "y": 2.5}, 1)),
    ("tag value ending in backslash", ("requests", {"a": "b\\"}, {"x": 1.5}, 1)),
    ("newline in string field", ("requests", {"a": "b"}, {"msg": "two\nlines"}, 1)),
]


def probe() -> list[dict[str, Any]]:
    out = []
    for name, raw in PROBES:
        try:
            mine: str | None = LineProtocolEncoder().encode_point(ours(raw))
        except ValueError as error:
            mine = None
            reason = f"ours rejects: {error}"
        else:
            reason = ""
        try:
            theirs: str | None = influx_line(raw)
        except Exception as error:  # noqa: BLE001 - a probe may make it raise: report that
            theirs = None
            reason += f" influxdb-client raises: {error}"
        if mine is not None and theirs is not None:
            verdict = compare(mine, theirs)
        else:
            verdict = reason.strip()
        out.append({"probe": name, "ours": mine, "influxdb_client": theirs, "verdict": verdict})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__.split("\n")[0], rounds=21, n=4000, n_help="points per round")
    options = parser.parse_args(argv)
    raws = raw_points(options.n, options.seed)
    n = len(raws)
    points = [ours(r) for r in raws]

    encoder = LineProtocolEncoder()
    verdicts = Counter(
        compare(encoder.encode_point(p), influx_line(r)) for p, r in zip(points, raws, strict=True)
    )
    examples = {}
    for p, r in zip(points, raws, strict=True):
        verdict = compare(encoder.encode_point(p), influx_line(r))
        if verdict != "exact" and verdict not in examples:
            examples[verdict] = {"ours": encoder.encode_point(p), "influxdb_client": influx_line(r)}
    probes = probe()

    def influx() -> int:
        begin = time.perf_counter_ns()
        for measurement, tags, fields, time_ns in raws:
            point = InfluxPoint(measurement)
            for key, value in tags.items():
                point.tag(key, value)
            for key, value in fields.items():
                point.field(key, value)
            point.time(time_ns, WritePrecision.NS).to_line_protocol()
        return time.perf_counter_ns() - begin

    def warm() -> int:
        encode_point = encoder.encode_point
        begin = time.perf_counter_ns()
        for point in points:
            encode_point(point)
        return time.perf_counter_ns() - begin

    def with_point() -> int:
        encode_point = encoder.encode_point
        begin = time.perf_counter_ns()
        for measurement, tags, fields, time_ns in raws:
            encode_point(Point(measurement, tuple(sorted(tags.items())), fields, time_ns))
        return time.perf_counter_ns() - begin

    def cold() -> int:
        fresh = [LineProtocolEncoder().encode_point for _ in range(n)]
        begin = time.perf_counter_ns()
        for encode_point, point in zip(fresh, points, strict=True):
            encode_point(point)
        return time.perf_counter_ns() - begin

    workloads: dict[str, Callable[[], int]] = {
        "influxdb-client Point": influx,
        "ours: encode_point": warm,
        "ours: Point() + encode_point": with_point,
        "ours: cold caches": cold,
    }
    gc.collect()
    gc.freeze()
    started = time.perf_counter()
    times = run_rounds(workloads, rounds=options.rounds, warmup=options.warmup)
    seconds = time.perf_counter() - started

    base = times["influxdb-client Point"]
    rows = {
        name: {
            "us_per_point": summary(per_item_us(elapsed, n), 3),
            "speedup": summary(ratios(base, elapsed), 2),
        }
        for name, elapsed in times.items()
    }
    speedup = rows["ours: encode_point"]["speedup"]
    report = {
        "benchmark": "encoder",
        "what": "influxdb-client Point built + to_line_protocol() / our encode_point(), per point",
        "target_speedup_min": TARGET,
        "speedup": speedup,
        "within_target": speedup["median"] >= TARGET,
        "influx_us_per_point": rows["influxdb-client Point"]["us_per_point"],
        "ours_us_per_point": rows["ours: encode_point"]["us_per_point"],
        "workloads": rows,
        "points": {
            "n": n,
            "series": dict(Counter(r[0] for r in raws)),
            "tags_per_point": round(sum(len(r[1]) for r in raws) / n, 2),
            "fields_per_point": round(sum(len(r[2]) for r in raws) / n, 2),
            "distinct_tag_sets": len({p.tags for p in points}),
        },
        "same_lines": dict(verdicts),
        "difference_examples": examples,
        "probes": probes,
        "rounds": options.rounds,
        "warmup": options.warmup,
        "seconds": round(seconds, 2),
        "environment": environment(),
    }
    if options.json:
        dump(report)
        return 0

    info = report["points"]
    print(
        f"line-protocol encoder: {n} points/round {info['series']}, {info['tags_per_point']} tags "
        f"and {info['fields_per_point']} fields per point, {info['distinct_tag_sets']} distinct "
        f"tag sets, {options.rounds} rounds, {seconds:.1f} s"
    )
    print()
    lines = [["workload", "µs/point", "min", "max", "speed-up vs Point", "min", "max"]]
    for name, row in rows.items():
        lines.append([name, *fmt(row["us_per_point"], ".2f"), *fmt(row["speedup"], ".2f")])
    table(lines)
    print()
    print(
        f"speed-up of encode_point over influxdb-client Point: median {speedup['median']:.2f}x "
        f"(min {speedup['min']:.2f}x, max {speedup['max']:.2f}x); target >= {TARGET:.0f}x: "
        f"{'met' if report['within_target'] else 'NOT met'}"
    )
    print()
    print("same points, both encoders:")
    for verdict, count in verdicts.most_common():
        print(f"  {count:6d}  {verdict}")
    for verdict, example in examples.items():
        print(f"  e.g. {verdict}:\n    ours:            {example['ours']}")
        print(f"    influxdb-client: {example['influxdb_client']}")
    print()
    print("edge-case probes (not timed):")
    for entry in probes:
        print(f"  {entry['probe']:30s} {entry['verdict']}")
        if entry["verdict"] != "exact":
            print(f"    ours:            {entry['ours']!r}")
            print(f"    influxdb-client: {entry['influxdb_client']!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
