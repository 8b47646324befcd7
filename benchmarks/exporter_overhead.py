"""What LunaSpanExporter adds per span, as a ratio to the SDK's own cost of that span.

    .venv/bin/python benchmarks/exporter_overhead.py [--rounds 21] [--n 4096] [--json]
        [--batch 512] [--error-share 0.1] [--semconv default|http|dup] [--spool disk|memory]
        [--shape server|fastapi]

Workload: SERVER spans of HTTP requests to luna-handlers-like routes, with the attributes
opentelemetry-instrumentation-aiohttp-server 0.66b1 sets (``collect_request_attributes`` and
``set_status_code``; ``--semconv`` picks the old, new or duplicated HTTP conventions) plus the
``luna.*`` attributes the helpers set (``luna.tag.handler_id``, two ``luna.time.*`` timings); a
share of them fail (4xx, and 5xx with span status ERROR) so ``errors`` points appear.
``--shape fastapi`` gives each request the two INTERNAL children FastAPI/Starlette's ASGI
instrumentation adds (``http receive``, ``http send``: ``asgi.event.type``, and the status on
``http send``; no ``luna.*``), made and exported with it: figures are then per request.

Each round times, over the same ``--n`` spans:

* ``sdk``: the SDK's own cost: ``tracer.start_span(name, kind=SERVER, attributes=request
  attributes)``, the luna and response attributes set with ``set_attribute``, ``set_status``,
  ``span.end()``; TracerProvider with a SimpleSpanProcessor around an exporter that does nothing;
* ``export``: ``LunaSpanExporter.export(batch)`` on the finished spans (collected once with
  InMemorySpanExporter), in batches of ``--batch`` (512, BatchSpanProcessor's default), a sink
  that does nothing, flush interval an hour and batches larger than a round, so the writer
  thread sleeps while timed and the hand-off is the append to the spool (``--spool``: disk, the
  default setting, in a temporary directory; or memory); the spool is drained between workloads;
* ``export + flush to null sink``: the same, then ``force_flush()`` inside the timed part, so work
  the writer thread does (reading the spool, handing bodies to the sink) counts too: if work
  ever moves from ``export()`` to the writer, this row keeps it visible;
* the breakdown, each step alone on precomputed input: ``read`` (span fields and attribute dict,
  as the exporter reads them), ``map`` (``RequestMapper.add``), ``encode``
  (``LineProtocolEncoder.encode_point``), ``hand-off`` (``BatchWriter.submit`` per batch: lines
  joined into a body and appended to the spool; also ``hand-off, memory spool``),
  ``rest of export`` (``export`` minus those four: loop, lock, calls between the steps); two
  probes: ``encode: float repr alone`` (``repr()`` of the points' float fields, part of
  ``encode``) and ``map via span.attributes`` (the mapper reading the SDK's public read-only
  mapping instead of the plain dict under it).

Reported: µs per span (orientation only) and the per-round ratio to ``sdk`` (median, min, max).
Target: ``export`` / ``sdk`` <= 0.10 (``--shape fastapi``: 0.15). Exit status is 0 whatever
the figures.
"""

from __future__ import annotations

import gc
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from _common import (
    NullSink,
    NullSpanExporter,
    arguments,
    dump,
    environment,
    fmt,
    idle_writer_settings,
    per_item_us,
    ratios,
    run_rounds,
    sdk_provider,
    summary,
    table,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context

from otel_luna._exporter import LunaSpanExporter
from otel_luna.settings import Settings
from otel_luna.testing import InMemorySink

#: The target ratio of each shape (issue 21): a SERVER span alone, FastAPI's three spans.
TARGETS = {"server": 0.10, "fastapi": 0.15}
SERVICE = "luna-handlers"

# (method, aiohttp canonical route, share of traffic, the two luna.time.* stages it records)
_ROUTES = (
    (
        "POST",
        "/6/handlers/{handler_id}/events",
        40,
        ("load_images_for_processing_time", "event_storage_policy_time"),
    ),
    ("POST", "/6/detector", 20, ("download_images_time", "save_samples_time")),
    ("POST", "/6/extractor", 15, ("load_face_samples_time", "save_face_attributes_time")),
    (
        "POST",
        "/6/verifiers/{verifier_id}/verifications",
        10,
        ("download_images_time", "match_policy_time"),
    ),
    ("GET", "/6/handlers/{handler_id}", 10, ("load_face_samples_time", "match_policy_time")),
    ("GET", "/6/healthcheck", 5, ("download_images_time", "save_warps_time")),
)
_HANDLERS = [f"{random.Random(i).getrandbits(128):032x}" for i in range(8)]
_HANDLERS = [f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}" for h in _HANDLERS]
_USER_AGENTS = ("python-requests/2.32.3", "aiohttp/3.9.5", "Go-http-client/1.1", "curl/8.5.0")
_CLIENT_ERRORS = (400, 400, 404, 422)
_SERVER_ERRORS = (500, 503)


@dataclass(frozen=True)
class Request:
    """One synthetic request: what the instrumentation and the luna helpers put on its span."""

    name: str
    start_attributes: dict[str, Any]  # given to start_span (collect_request_attributes)
    later_attributes: tuple[tuple[str, Any], ...]  # set_attribute: luna helpers, then the status
    status: Status


def requests(n: int, *, seed: int, error_share: float, semconv: str) -> list[Request]:
    rng = random.Random(seed)
    weights = [share for _, _, share, _ in _ROUTES]
    old = semconv in ("default", "dup")
    new = semconv in ("http", "dup")
    out = []
    for _ in range(n):
        method, route, _, stages = rng.choices(_ROUTES, weights)[0]
        handler = rng.choice(_HANDLERS)
        path = route.replace("{handler_id}", handler).replace(
            "{verifier_id}", rng.choice(_HANDLERS)
        )
        query = f"city={rng.choice(('msk', 'spb', 'nsk'))}" if rng.random() < 0.3 else ""
        target = f"{path}?{query}" if query else path
        host, port = "luna-api.example", 5000
        draw = rng.random()
        if draw < error_share * 0.6:
            status = rng.choice(_CLIENT_ERRORS)
        elif draw < error_share:
            status = rng.choice(_SERVER_ERRORS)
        else:
            status = 201 if method == "POST" and "events" in route else 200
        attributes: dict[str, Any] = {}
        # The order collect_request_attributes() builds them in.
        if old:
            attributes["http.method"] = method
        if new:
            attributes["http.request.method"] = method
        if old:
            attributes["http.scheme"] = "http"
        if new:
            attributes["url.scheme"] = "http"
        if old:
            attributes["net.host.name"] = host
        if new:
            attributes["server.address"] = host
        if old:
            attributes["http.host"] = host
            attributes["net.host.port"] = port
        if new:
            attributes["server.port"] = port
        if old:
            attributes["http.target"] = target
        if new:
            attributes["url.path"] = path
            if query:
                attributes["url.query"] = query
        if old:
            attributes["http.url"] = f"http://{host}:{port}{target}"
        user_agent = rng.choice(_USER_AGENTS)
        if old:
            attributes["http.user_agent"] = user_agent
        if new:
            attributes["user_agent.original"] = user_agent
        if old:
            attributes["http.flavor"] = "1.1"
        if new:
            attributes["network.protocol.version"] = "1.1"
        attributes["http.route"] = route
        if old:
            attributes["http.server_name"] = f"{host}:{port}"
        later: list[tuple[str, Any]] = [
            ("luna.tag.handler_id", handler),  # otel_luna.add_tags(handler_id=...)
            (f"luna.time.{stages[0]}", rng.uniform(0.0005, 0.05)),  # otel_luna.monitor_time
            (f"luna.time.{stages[1]}", rng.uniform(0.0005, 0.05)),
        ]
        if old:  # set_status_code() -> _set_status()
            later.append(("http.status_code", status))
        if new:
            later.append(("http.response.status_code", status))
            if status >= 500:
                later.append(("error.type", str(status)))
        out.append(
            Request(
                name=f"{method} {route}",
                start_attributes=attributes,
                later_attributes=tuple(later),
                status=Status(StatusCode.ERROR if status >= 500 else StatusCode.UNSET),
            )
        )
    return out


def record(tracer: Any, reqs: Sequence[Request], *, all_at_start: bool = False) -> int:
    """Create and end one span per request, as the instrumentation does; elapsed ns."""
    start_span = tracer.start_span
    server = SpanKind.SERVER
    if all_at_start:  # the cheapest way to the same span: every attribute given to start_span
        merged = [({**r.start_attributes, **dict(r.later_attributes)}, r) for r in reqs]
        begin = time.perf_counter_ns()
        for attributes, r in merged:
            span = start_span(r.name, kind=server, attributes=attributes)
            span.set_status(r.status)
            span.end()
        return time.perf_counter_ns() - begin
    if SHAPE == "fastapi":
        return _record_fastapi(start_span, reqs)
    begin = time.perf_counter_ns()
    for r in reqs:
        span = start_span(r.name, kind=server, attributes=r.start_attributes)
        for key, value in r.later_attributes:
            span.set_attribute(key, value)
        span.set_status(r.status)
        span.end()
    return time.perf_counter_ns() - begin


def _record_fastapi(start_span: Any, reqs: Sequence[Request]) -> int:
    """The SERVER span with the children opentelemetry-instrumentation-asgi makes (its
    ``otel_receive`` and ``otel_send``); elapsed ns."""
    server, internal = SpanKind.SERVER, SpanKind.INTERNAL
    statuses = [dict(r.later_attributes).get("http.status_code", 200) for r in reqs]
    begin = time.perf_counter_ns()
    for r, status in zip(reqs, statuses, strict=True):
        span = start_span(r.name, kind=server, attributes=r.start_attributes)
        inside = set_span_in_context(span)
        child = start_span(r.name + " http receive", context=inside, kind=internal)
        child.set_attribute("asgi.event.type", "http.request")
        child.end()
        for key, value in r.later_attributes:
            span.set_attribute(key, value)
        child = start_span(r.name + " http send", context=inside, kind=internal)
        child.set_attribute("http.status_code", status)
        child.set_attribute("asgi.event.type", "http.response.start")
        child.end()
        span.set_status(r.status)
        span.end()
    return time.perf_counter_ns() - begin


#: Where spools and dead letters go during the run (set in main(); a temporary directory).
STATE_DIR = ""
#: ``disk`` (the product's default) or ``memory``: what the hand-off appends to.
SPOOL = "disk"
#: ``server`` (a SERVER span per request) or ``fastapi`` (with its two INTERNAL children).
SHAPE = "server"


def settings(spool: str | None = None) -> Settings:
    """The run's settings: the writer thread asleep while timed (:func:`idle_writer_settings`)."""
    return idle_writer_settings(STATE_DIR, spool or SPOOL)  # type: ignore[no-any-return]


def check_output(spans: Sequence[ReadableSpan], batch: int) -> dict[str, Any]:
    """Export once into an InMemorySink: how many points of each series came out."""
    sink = InMemorySink()
    exporter = LunaSpanExporter(settings(), sink=sink)
    for i in range(0, len(spans), batch):
        exporter.export(spans[i : i + batch])
    exporter.force_flush()
    lines = sink.lines
    counts = {k: v for k, v in exporter.counts.items() if v}
    exporter.shutdown()
    failed = 0
    for span in spans:
        if span.kind is not SpanKind.SERVER:
            continue
        attributes = span.attributes or {}
        status = attributes.get("http.status_code", attributes.get("http.response.status_code", 0))
        failed += span.status.status_code is StatusCode.ERROR or status >= 400
    return {
        "lines": len(lines),
        "series": dict(Counter(line.split(",", 1)[0] for line in lines)),
        "failed_spans": failed,
        "lines_per_span": round(len(lines) / len(spans), 3),
        "example": lines[0] if lines else None,
        "exporter_counts": counts,
    }


def breakdown_workloads(
    spans: Sequence[ReadableSpan], batch: int, closers: list[Callable[[], object]]
) -> tuple[dict[str, Callable[[], int]], Callable[[], None]]:
    """The exporter's steps, each alone on precomputed input (mirrors Ingest.spans)."""
    from otel_luna.delivery import open_delivery
    from otel_luna.encoding._lineprotocol import LineProtocolEncoder
    from otel_luna.ingest._sdk import ServiceNames, span_records
    from otel_luna.mapping._requests import RequestMapper

    services = ServiceNames()
    mapper = RequestMapper()
    # The early skip (issue 21): records only of the spans the mapper wants, as export() reads.
    skip: tuple[Any, ...] = ()
    if hasattr(mapper, "wants"):
        from otel_luna.ingest import SpanFilter  # type: ignore[attr-defined,unused-ignore]

        skip = (SpanFilter(mapper.prefix, mapper.wants),)
    by_id = {s.context.span_id: s for s in spans}  # type: ignore[union-attr]
    args = list(span_records(spans, services, *skip))
    public_args = [a._replace(attributes=by_id[a.span_id].attributes or {}) for a in args]
    points = [p for a in args for p in mapper.add(a)]
    encoder = LineProtocolEncoder()
    per_batch: list[list[str]] = []
    for i in range(0, len(spans), batch):
        per_batch.append(
            [encoder.encode_point(p) for a in args[i : i + batch] for p in mapper.add(a)]
        )
    disk_delivery = open_delivery(settings(), NullSink())
    memory_delivery = open_delivery(settings("memory"), NullSink())

    def read_only() -> int:
        begin = time.perf_counter_ns()
        for _ in span_records(spans, services, *skip):
            pass
        return time.perf_counter_ns() - begin

    def map_with(arguments: list[tuple[Any, ...]]) -> Callable[[], int]:
        def run() -> int:
            add = mapper.add
            begin = time.perf_counter_ns()
            for a in arguments:
                add(a)
            return time.perf_counter_ns() - begin

        return run

    def encode_only() -> int:
        encode_point = encoder.encode_point
        begin = time.perf_counter_ns()
        for p in points:
            encode_point(p)
        return time.perf_counter_ns() - begin

    floats = [v for p in points for v in p.fields.values() if type(v) is float]

    def float_repr() -> int:
        begin = time.perf_counter_ns()
        for v in floats:
            repr(v)
        return time.perf_counter_ns() - begin

    def hand_off_to(target: Any) -> Callable[[], int]:
        def run() -> int:
            submit = target.submit
            begin = time.perf_counter_ns()
            for lines in per_batch:
                submit(lines)
            return time.perf_counter_ns() - begin

        return run

    def drain() -> None:
        disk_delivery.force_flush(60.0)
        memory_delivery.force_flush(60.0)

    workloads = {
        "read": read_only,
        "map": map_with(args),
        "encode": encode_only,
        "hand-off": hand_off_to(disk_delivery),
        "hand-off, memory spool": hand_off_to(memory_delivery),
        "encode: float repr alone": float_repr,
        "map via span.attributes": map_with(public_args),
    }
    closers.extend((lambda: disk_delivery.shutdown(10.0), lambda: memory_delivery.shutdown(10.0)))
    return workloads, drain


def drain_all(drains: Sequence[Callable[[], object]]) -> None:
    for drain in drains:
        drain()


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__.split("\n")[0], rounds=21, n=4096, n_help="spans per round")
    parser.add_argument("--batch", type=int, default=512, help="spans per export() (default 512)")
    parser.add_argument(
        "--error-share", type=float, default=0.1, help="failed requests (default 0.1)"
    )
    parser.add_argument(
        "--semconv",
        choices=("default", "http", "dup"),
        default="default",
        help="HTTP attribute spelling, as OTEL_SEMCONV_STABILITY_OPT_IN (default: old names)",
    )
    parser.add_argument(
        "--spool",
        choices=("disk", "memory"),
        default="disk",
        help="where the hand-off appends (default disk, the product's default; in a temp dir)",
    )
    parser.add_argument(
        "--shape",
        choices=("server", "fastapi"),
        default="server",
        help="spans per request: a SERVER span, or with FastAPI's two INTERNAL children",
    )
    parser.add_argument("--no-breakdown", action="store_true", help="time sdk and export only")
    options = parser.parse_args(argv)
    global STATE_DIR, SPOOL, SHAPE
    with tempfile.TemporaryDirectory(prefix="otel-luna-bench-") as STATE_DIR:
        SPOOL, SHAPE = options.spool, options.shape
        return _run(options)


def _run(options: Any) -> int:
    n, batch = options.n, options.batch

    reqs = requests(n, seed=options.seed, error_share=options.error_share, semconv=options.semconv)
    sdk_tracer = sdk_provider(NullSpanExporter(), SERVICE).get_tracer("benchmark")
    memory = InMemorySpanExporter()
    record(sdk_provider(memory, SERVICE).get_tracer("benchmark"), reqs)
    spans: list[ReadableSpan] = list(memory.get_finished_spans())
    output = check_output(spans, batch)

    exporter = LunaSpanExporter(settings(), sink=NullSink())
    batches = [spans[i : i + batch] for i in range(0, len(spans), batch)]

    def export() -> int:
        run = exporter.export
        begin = time.perf_counter_ns()
        for b in batches:
            run(b)
        return time.perf_counter_ns() - begin

    flushed = LunaSpanExporter(settings(), sink=NullSink())

    def export_and_flush() -> int:
        run = flushed.export
        begin = time.perf_counter_ns()
        for b in batches:
            run(b)
        flushed.force_flush(60_000)
        return time.perf_counter_ns() - begin

    workloads: dict[str, Callable[[], int]] = {
        "sdk": lambda: record(sdk_tracer, reqs),
        "export": export,
        "export + flush to null sink": export_and_flush,
        "sdk, all attributes at start": lambda: record(sdk_tracer, reqs, all_at_start=True),
    }
    drains: list[Callable[[], object]] = [lambda: exporter.force_flush(60_000)]
    closers: list[Callable[[], object]] = [exporter.shutdown, flushed.shutdown]
    breakdown_error = None
    if not options.no_breakdown:
        try:
            steps, drain = breakdown_workloads(spans, batch, closers)
            workloads.update(steps)
            drains.append(drain)
        except Exception as error:  # noqa: BLE001 - otel_luna changes: keep the headline figures
            breakdown_error = f"{type(error).__name__}: {error}"

    gc.collect()
    gc.freeze()  # the collected spans live all run: keep them out of the collector's way
    started = time.perf_counter()
    times = run_rounds(
        workloads,
        rounds=options.rounds,
        warmup=options.warmup,
        between=lambda: drain_all(drains),
    )
    seconds = time.perf_counter() - started
    for close in closers:
        close()

    sdk = times["sdk"]
    rows = {}
    for name, elapsed in times.items():
        rows[name] = {
            "us_per_span": summary(per_item_us(elapsed, n), 3),
            "ratio_to_sdk": summary(ratios(elapsed, sdk)),
        }
    parts = [p for p in ("read", "map", "encode", "hand-off") if p in times]
    if len(parts) == 4:
        rest = [e - sum(times[p][i] for p in parts) for i, e in enumerate(times["export"])]
        rows["rest of export (loop, lock, glue)"] = {
            "us_per_span": summary(per_item_us(rest, n), 3),
            "ratio_to_sdk": summary(ratios(rest, sdk)),
        }
    ratio = rows["export"]["ratio_to_sdk"]
    report = {
        "benchmark": "exporter_overhead",
        "what": "LunaSpanExporter.export() cost per span / SDK create+end cost of the same span",
        "target_ratio_max": TARGETS[options.shape],
        "ratio": ratio,
        "within_target": ratio["median"] <= TARGETS[options.shape],
        "sdk_us_per_span": rows["sdk"]["us_per_span"],
        "exporter_us_per_span": rows["export"]["us_per_span"],
        "workloads": rows,
        "breakdown_error": breakdown_error,
        "spans": {
            "n": n,
            "batch": batch,
            "semconv": options.semconv,
            "spool": options.spool,
            "error_share": options.error_share,
            "attributes_per_span": round(
                sum(len(s.attributes or {}) for s in spans) / len(spans), 2
            ),
            "shape": options.shape,
        },
        "output_check": output,
        "rounds": options.rounds,
        "warmup": options.warmup,
        "seconds": round(seconds, 2),
        "environment": environment(),
    }
    if options.json:
        dump(report)
        return 0

    print(
        f"exporter overhead: {n} requests/round, shape {options.shape} ({len(spans)} spans, "
        f"{report['spans']['attributes_per_span']} attributes each, semconv={options.semconv}, "
        f"{options.error_share:.0%} failed; µs per request), "
        f"export() in batches of {batch}, {options.spool} spool, {options.rounds} rounds, "
        f"{seconds:.1f} s"
    )
    print(
        f"output: {output['lines_per_span']} lines/span {output['series']}, "
        f"failed spans {output['failed_spans']}"
    )
    print()
    header = ["workload", "µs/span", "min", "max", "ratio to sdk", "min", "max"]
    lines = [header]
    order = ["sdk", "sdk, all attributes at start", "export", "export + flush to null sink", *parts]
    order += [k for k in rows if k not in order]
    for name in order:
        row = rows[name]
        lines.append([name, *fmt(row["us_per_span"], ".2f"), *fmt(row["ratio_to_sdk"], ".4f")])
    table(lines)
    print()
    print(
        f"ratio export/sdk: median {ratio['median']:.4f} (min {ratio['min']:.4f}, "
        f"max {ratio['max']:.4f}); target <= {TARGETS[options.shape]:.2f}: "
        f"{'met' if report['within_target'] else 'NOT met'}"
    )
    if breakdown_error:
        print(f"breakdown unavailable: {breakdown_error}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
