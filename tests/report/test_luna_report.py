"""``otel-luna report luna``: every figure against the same InfluxQL run directly on a real
InfluxDB 1.x holding known data; the same data as a line-protocol file and in a real InfluxDB 2.x
read over Flux (annotated CSV) give the same
report; the PNG; the command."""

from __future__ import annotations

import datetime as dt
import http.server
import io
import json
import math
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from otel_luna import _cli as cli
from otel_luna.encoding._lineprotocol import LineProtocolEncoder
from otel_luna.report import MadeReport, ReportError, Window, run_report
from otel_luna.report import _answers as answers
from otel_luna.report import _durations as durations
from otel_luna.report import _luna as luna
from otel_luna.report import _query as query
from otel_luna.report import _source as sources
from otel_luna.schema._point import Point
from otel_luna.settings import Settings
from tests.support.httpstub import HttpStub
from tests.support.servers import InfluxDB1, InfluxDB2

SECOND = 1_000_000_000
#: 2026-11-29T12:00:00Z: the crafted data lies in the past, so InfluxDB's GROUP BY time() has
#: every bucket.
T0 = 1_795_953_600 * SECOND
SPAN_S = 90
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HANDLERS, API = "luna-handlers", "luna-api"
EVENTS = "POST:/handlers/{handler_id}/events"
ROUTES: Mapping[str, Sequence[tuple[str, int, Sequence[str]]]] = {
    # service: (route, weight, stage fields)
    HANDLERS: (
        (EVENTS, 40, ("download_images_time", "match_policy_time", "event_storage_policy_time")),
        ("POST:/detector", 25, ("load_images_for_processing_time", "save_warps_time")),
        ("POST:/extractor", 20, ("load_face_samples_time", "save_face_attributes_time")),
        ("GET:/version", 15, ()),
    ),
    API: (("GET:/faces", 1, ()),),
}
ESTIMATORS = ("face_detector", "liveness_estimator", "face_descriptor_extractor")
#: Routes whose successful requests may run estimations: the estimators each may use.
USAGE_ROUTES: Mapping[str, Sequence[str]] = {
    "POST:/detector": ("face_detector", "liveness_estimator"),
    "POST:/extractor": ("face_descriptor_extractor",),
    "GET:/faces": ESTIMATORS,
}


def crafted_points(seed: int = 12, requests: int = 437) -> list[Point]:
    """Known LUNA data over 90 s: two services, routes with stages and tags, errors with several
    codes (0 for an unclassified failure), a usages point per successful request that ran an
    estimation (at the request's time), licence checks that go from ok to warning to error."""
    rng = random.Random(seed)
    points: list[Point] = []
    stamps = sorted(rng.sample(range(T0, T0 + SPAN_S * SECOND, 7), requests))
    for number, stamp in enumerate(stamps):
        service = API if number % 9 == 0 else HANDLERS
        choices = ROUTES[service]
        route, _, stages = rng.choices(choices, [w for _, w, _ in choices])[0]
        tags = {"service": service, "route": route, "status_code": "200"}
        fields: dict[str, Any] = {"request_id": f"{stamp},{number}"}
        code: str | None = None
        if route == EVENTS:
            tags["handler_id"] = rng.choice(["3f1c", "8b27", "c6d4"])
            if rng.random() < 0.2:
                tags["status_code"], code = "404", "22002"
            elif rng.random() < 0.05:
                tags["status_code"], code = "500", "0"
        elif route == "POST:/extractor" and rng.random() < 0.25:
            tags["status_code"], code = "400", "12031"
        elif route == "GET:/faces" and rng.random() < 0.1:
            tags["status_code"], code = "503", "0"
        elapsed = 0.0
        if code is None:
            for stage in stages:
                spent = rng.lognormvariate(-6.0, 0.5)
                fields[stage] = spent
                elapsed += spent
        fields["execution_time"] = elapsed + rng.lognormvariate(-7.0, 0.7)
        points.append(Point("requests", tuple(sorted(tags.items())), fields, stamp))
        if code is not None:
            error_tags = {**tags, "error_code": code}
            points.append(
                Point(
                    "errors",
                    tuple(sorted(error_tags.items())),
                    {"request_id": fields["request_id"]},
                    stamp,
                )
            )
        if code is None and route in USAGE_ROUTES:  # one point per request, at its time
            counts = {f"{name}_usages": rng.randint(0, 4) for name in USAGE_ROUTES[route]}
            counts = {name: count for name, count in counts.items() if count}  # unused: no field
            if counts:
                points.append(Point("usages_statistic", (("service", service),), counts, stamp))
    balance = 400
    for check in range(12):
        balance -= rng.randint(10, 45)
        status = "ok" if balance > 200 else "warning" if balance > 100 else "error"
        warnings = "" if status == "ok" else f"liveness balance is low: {balance}"
        errors = "license expires soon" if status == "error" else ""
        points.append(
            Point(
                "licensing",
                (("license_status", status), ("service", HANDLERS)),
                {"liveness_balance": balance, "warnings": warnings, "errors": errors},
                T0 + check * 7 * SECOND + 5,
            )
        )
    return points


def line_protocol(points: Sequence[Point]) -> str:
    encoder = LineProtocolEncoder()
    return "".join(encoder.encode_point(point) + "\n" for point in points)


@dataclass
class Data:
    """The crafted points, in a real InfluxDB 1.x database and in a line-protocol file."""

    influx: InfluxDB1
    database: str
    settings: Settings
    file: Path
    points: list[Point]


@pytest.fixture(scope="module")
def data(influxdb1: InfluxDB1, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Data]:
    points = crafted_points()
    text = line_protocol(points)
    file = tmp_path_factory.mktemp("luna_report") / "luna.lp"
    file.write_text(text)
    database = influxdb1.fresh_database("luna_report")
    try:
        influxdb1.write(text, database)
        settings = Settings.load({}, endpoint=influxdb1.url, database=database)
        yield Data(influxdb1, database, settings, file, points)
    finally:
        influxdb1.drop_database(database)


@pytest.fixture(scope="module")
def from_influx(data: Data) -> luna.LunaReport:
    return luna.summarize(luna.read(data.settings))


def influxql(data: Data, query: str) -> list[dict[str, Any]]:
    return data.influx.select(query, data.database)


def by(rows: Sequence[Mapping[str, Any]], *keys: str) -> dict[tuple[str, ...], dict[str, Any]]:
    return {tuple(row.get(key, "") for key in keys): row for row in rows}


def routes_of(report: luna.LunaReport) -> dict[tuple[str, str], luna.RouteReport]:
    return {(s.service, r.route): r for s in report.services for r in s.routes}


def quoted(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


# -- every figure against InfluxQL --------------------------------------------------------------


def test_period_and_point_counts_equal_influxql(data: Data, from_influx: luna.LunaReport) -> None:
    """The period is the first to the last point, and the points per series are InfluxQL's."""
    every = influxql(data, 'SELECT * FROM "requests", "errors", "usages_statistic", "licensing"')
    assert from_influx.first_ns == min(row["time"] for row in every)
    assert from_influx.last_ns == max(row["time"] for row in every)
    assert (from_influx.start_ns, from_influx.end_ns) == (
        from_influx.first_ns,
        from_influx.last_ns,
    )
    counts = {
        name: influxql(data, f'SELECT count("{field}") FROM "{name}"')[0]["count"]
        for name, field in (
            ("requests", "request_id"),
            ("errors", "request_id"),
            ("licensing", "warnings"),
        )
    }
    # usages_statistic has no field every point carries: count its rows
    counts["usages_statistic"] = len(influxql(data, 'SELECT * FROM "usages_statistic"'))
    assert dict(from_influx.points) == counts
    assert counts["requests"] == 437 and counts["errors"] >= 20


def test_request_rate_count_and_percentiles_equal_influxql(
    data: Data, from_influx: luna.LunaReport
) -> None:
    """Per service and route: count, rate over the period, p50/p95/p99 and max of
    execution_time equal InfluxQL's; where InfluxQL's percentile() picks another rank, its
    percentile at the nearest-rank position does."""
    rows = by(
        influxql(
            data,
            'SELECT count("execution_time"), max("execution_time") FROM "requests" '
            'GROUP BY "service", "route"',
        ),
        "service",
        "route",
    )
    routes = routes_of(from_influx)
    assert set(routes) == set(rows)
    seconds = (from_influx.last_ns - from_influx.first_ns) / SECOND  # type: ignore[operator]
    differing = 0
    for (service, route), row in rows.items():
        report = routes[(service, route)]
        n = row["count"]
        assert report.requests == report.latency.count == n
        assert report.rate == n / seconds
        assert report.latency.max == row["max"]
        where = f'WHERE "service" = {quoted(service)} AND "route" = {quoted(route)}'
        for percent, ours in (
            (50, report.latency.p50),
            (95, report.latency.p95),
            (99, report.latency.p99),
        ):
            rank = max(math.ceil(n * percent / 100), 1)
            same_rank = f"{100 * rank / n!r}"
            (exact,) = influxql(
                data, f'SELECT percentile("execution_time", {same_rank}) FROM "requests" {where}'
            )
            assert ours == exact["percentile"], (service, route, percent)
            (plain,) = influxql(
                data, f'SELECT percentile("execution_time", {percent}) FROM "requests" {where}'
            )
            if math.floor(n * percent / 100 + 0.5) == rank:
                assert ours == plain["percentile"], (service, route, percent)
            else:
                differing += 1
                assert ours != plain["percentile"]
    overall = by(
        influxql(data, 'SELECT count("execution_time") FROM "requests" GROUP BY "service"'),
        "service",
    )
    for service in from_influx.services:
        assert service.overall.requests == overall[(service.service,)]["count"]
    assert differing >= 1, "the data should show InfluxQL's rounding somewhere"


def test_errors_and_error_codes_equal_influxql(data: Data, from_influx: luna.LunaReport) -> None:
    """Per route: errors points, error rate (errors / requests) and every error_code's count."""
    errors = by(
        influxql(data, 'SELECT count("request_id") FROM "errors" GROUP BY "service", "route"'),
        "service",
        "route",
    )
    codes = influxql(
        data,
        'SELECT count("request_id") FROM "errors" GROUP BY "service", "route", "error_code"',
    )
    for (service, route), report in routes_of(from_influx).items():
        expected = errors.get((service, route), {}).get("count", 0)
        assert report.errors == expected
        assert report.error_rate == expected / report.requests
        mine = {
            row["error_code"]: row["count"]
            for row in codes
            if (row["service"], row["route"]) == (service, route)
        }
        assert dict(report.error_codes) == mine
        counts = [count for _, count in report.error_codes]
        assert counts == sorted(counts, reverse=True)
    events = routes_of(from_influx)[(HANDLERS, EVENTS)]
    assert events.error_codes[0][0] == "22002" and "0" in dict(events.error_codes)


def test_stage_times_and_dominant_stage_equal_influxql(
    data: Data, from_influx: luna.LunaReport
) -> None:
    """Per route: each *_time field's sum, count and mean, its share of the execution_time sum,
    and the dominant stage (the largest sum) agree with InfluxQL's sum(*) and count(*)."""
    rows = by(
        influxql(
            data,
            'SELECT sum(/_time$/), count(/_time$/) FROM "requests" GROUP BY "service", "route"',
        ),
        "service",
        "route",
    )
    for (service, route), report in routes_of(from_influx).items():
        row = rows[(service, route)]
        sums = {
            key[len("sum_") :]: value
            for key, value in row.items()
            if key.startswith("sum_") and key != "sum_execution_time" and value is not None
        }
        assert {stage.field for stage in report.stages} == set(sums)
        for stage in report.stages:
            assert stage.total == pytest.approx(sums[stage.field], rel=1e-12)
            assert stage.requests == row[f"count_{stage.field}"]
            assert stage.mean == pytest.approx(sums[stage.field] / stage.requests, rel=1e-12)
            assert stage.share == pytest.approx(
                sums[stage.field] / row["sum_execution_time"], rel=1e-12
            )
        if sums:
            assert report.dominant_stage is not None
            assert report.dominant_stage.field == max(sums, key=lambda name: sums[name])
        else:
            assert report.dominant_stage is None
    assert routes_of(from_influx)[(HANDLERS, "GET:/version")].stages == ()


def test_timelines_equal_influxql_group_by_time(data: Data, from_influx: luna.LunaReport) -> None:
    """Requests and errors per route and estimations per estimator in each bucket equal
    InfluxQL's GROUP BY time() of the report's bucket width."""
    width = from_influx.bucket_ns
    assert width == 2 * SECOND and len(from_influx.buckets) == 45  # 90 s in <= 60 buckets
    first, last = from_influx.buckets[0], from_influx.buckets[-1] + width
    window = f"time >= {first} AND time < {last}"
    group = f"GROUP BY time({width // 1_000_000}ms), "
    requests = influxql(
        data,
        f'SELECT count("execution_time") FROM "requests" WHERE {window} '
        f'{group}"service", "route" fill(0)',
    )
    errors = influxql(
        data,
        f'SELECT count("request_id") FROM "errors" WHERE {window} {group}"service", "route" '
        "fill(0)",
    )
    for (service, route), report in routes_of(from_influx).items():

        def line(rows: list[dict[str, Any]], key: tuple[str, str] = (service, route)) -> list[int]:
            return [r["count"] for r in rows if (r["service"], r["route"]) == key]

        assert list(report.requests_over_time) == line(requests)
        assert list(report.errors_over_time) == (line(errors) or [0] * len(from_influx.buckets))
    usages = influxql(
        data,
        f'SELECT sum(*) FROM "usages_statistic" WHERE {window} {group}"service" fill(0)',
    )
    totals = by(
        influxql(data, 'SELECT sum(*), count(*) FROM "usages_statistic" GROUP BY "service"'),
        "service",
    )
    for service in from_influx.services:
        row = totals[(service.service,)]
        expected = {
            key[len("sum_") : -len("_usages")]: value
            for key, value in row.items()
            if key.startswith("sum_") and value is not None
        }
        assert {u.estimator: u.total for u in service.usages} == expected
        for usage in service.usages:
            assert usage.points == row[f"count_{usage.estimator}_usages"]
            column = f"sum_{usage.estimator}_usages"
            assert list(usage.over_time) == [
                r[column] or 0 for r in usages if r["service"] == service.service
            ]
        assert service.usage_points == len(
            influxql(
                data,
                f'SELECT * FROM "usages_statistic" WHERE "service" = {quoted(service.service)}',
            )
        )


def test_estimations_per_request_equal_influxql(data: Data, from_influx: luna.LunaReport) -> None:
    """Per service, the estimations (every ``*_usages`` field summed) over the usages points
    (one per request with usages) and over all requests points equal InfluxQL's sums and
    counts; per bucket, the estimations over that bucket's requests."""
    width = from_influx.bucket_ns
    assert width is not None
    first, last = from_influx.buckets[0], from_influx.buckets[-1] + width
    window = f"time >= {first} AND time < {last}"
    group = f"GROUP BY time({width // 1_000_000}ms), "
    sums = by(influxql(data, 'SELECT sum(*) FROM "usages_statistic" GROUP BY "service"'), "service")
    requests = by(
        influxql(data, 'SELECT count("execution_time") FROM "requests" GROUP BY "service"'),
        "service",
    )
    per_bucket = influxql(
        data, f'SELECT sum(*) FROM "usages_statistic" WHERE {window} {group}"service" fill(0)'
    )
    requests_per_bucket = influxql(
        data,
        f'SELECT count("execution_time") FROM "requests" WHERE {window} {group}"service" fill(0)',
    )
    assert len(from_influx.services) == 2
    for service in from_influx.services:
        per = service.per_request
        estimations = sum(v for k, v in sums[(service.service,)].items() if k.startswith("sum_"))
        with_usages = len(
            influxql(
                data,
                f'SELECT * FROM "usages_statistic" WHERE "service" = {quoted(service.service)}',
            )
        )
        count = requests[(service.service,)]["count"]
        assert 0 < with_usages < count
        assert (per.estimations, per.requests_with_usages, per.requests) == (
            estimations,
            with_usages,
            count,
        )
        assert per.per_request_with_usages == estimations / with_usages
        assert per.per_request == estimations / count
        used = [
            sum(v for k, v in row.items() if k.startswith("sum_"))
            for row in per_bucket
            if row["service"] == service.service
        ]
        answered = [r["count"] for r in requests_per_bucket if r["service"] == service.service]
        assert list(per.over_time) == [
            u / n if n else None for u, n in zip(used, answered, strict=True)
        ]
    text = luna.format_report(from_influx)
    handlers = next(s for s in from_influx.services if s.service == HANDLERS).per_request
    assert (
        f"    estimations per request: {handlers.per_request_with_usages:.2f} per request with "
        f"usages ({handlers.requests_with_usages}), {handlers.per_request:.2f} per request "
        f"({handlers.requests})  "
    ) in text
    document = luna.report_as_dict(from_influx)
    assert document["services"][1]["per_request"]["per_request"] == handlers.per_request


def test_a_service_without_usages_has_no_estimations_per_request() -> None:
    """No usages points: 0 estimations, no ratio over the usages points, 0.0 over the requests;
    no requests: no ratio at all."""
    only_requests = [Point("requests", (("service", "a"),), {"execution_time": 0.1}, T0)]
    (service,) = luna.summarize(only_requests).services
    per = service.per_request
    assert (per.estimations, per.per_request_with_usages, per.per_request) == (0, None, 0.0)
    only_usages = [Point("usages_statistic", (("service", "b"),), {"face_detector_usages": 3}, T0)]
    (service,) = luna.summarize(only_usages).services
    per = service.per_request
    assert (per.estimations, per.per_request_with_usages, per.per_request) == (3, 3.0, None)
    assert per.over_time == (None,)


def test_licensing_equals_influxql(data: Data, from_influx: luna.LunaReport) -> None:
    """Checks per license_status, liveness_balance first/min/last and the latest check's status
    and messages equal InfluxQL's count, first, min, last."""
    statuses = influxql(
        data, 'SELECT count("warnings") FROM "licensing" GROUP BY "service", "license_status"'
    )
    (balance,) = influxql(
        data,
        'SELECT first("liveness_balance"), min("liveness_balance"), last("liveness_balance") '
        'FROM "licensing" WHERE "service" = \'luna-handlers\'',
    )
    (latest,) = influxql(
        data,
        'SELECT last("liveness_balance"), "license_status", "warnings", "errors" FROM "licensing" '
        "WHERE \"service\" = 'luna-handlers'",
    )
    (handlers,) = [s for s in from_influx.services if s.service == HANDLERS]
    licensing = handlers.licensing
    assert licensing is not None
    assert dict(licensing.statuses) == {
        row["license_status"]: row["count"] for row in statuses if row["service"] == HANDLERS
    }
    assert licensing.checks == sum(licensing.statuses.values()) == 12
    assert (licensing.balance_first, licensing.balance_min, licensing.balance_last) == (
        balance["first"],
        balance["min"],
        balance["last"],
    )
    last = licensing.last
    assert (last.time_ns, last.liveness_balance) == (latest["time"], latest["last"])
    assert (last.status, last.warnings, last.errors) == (
        latest["license_status"],
        latest["warnings"],
        latest["errors"],
    )
    assert set(licensing.statuses) == {"ok", "warning", "error"}
    assert [s.licensing for s in from_influx.services if s.service == API] == [None]


def test_influxql_percentile_rounds_the_rank_where_nearest_rank_does_not(
    influxdb1: InfluxDB1, influxdb1_database: str
) -> None:
    """17 requests of 1..17 ms: the report's p95 is rank ceil(16.15) = 17 (17 ms); InfluxQL's
    percentile() takes rank floor(16.15 + 0.5) = 16 (16 ms) — as docs/report.md says."""
    points = [
        Point(
            "requests",
            (("route", "GET:/x"), ("service", "s"), ("status_code", "200")),
            {"request_id": str(i), "execution_time": i / 1000},
            T0 + i,
        )
        for i in range(1, 18)
    ]
    influxdb1.write(line_protocol(points), influxdb1_database)
    settings = Settings.load({}, endpoint=influxdb1.url, database=influxdb1_database)
    report = luna.summarize(luna.read(settings))
    (rows,) = (
        influxdb1.select(
            'SELECT percentile("execution_time", 95), percentile("execution_time", 50) '
            'FROM "requests"',
            influxdb1_database,
        ),
    )
    assert report.services[0].overall.latency.p95 == 0.017
    assert rows[0]["percentile"] == 0.016
    assert report.services[0].overall.latency.p50 == rows[0]["percentile_1"] == 0.009


# -- other sources give the same report ---------------------------------------------------------


def test_a_line_protocol_file_gives_the_same_report(
    data: Data, from_influx: luna.LunaReport
) -> None:
    """The same points read from a file sink's line protocol give an equal report."""
    from_file = luna.summarize(luna.read(data.file))
    assert from_file == from_influx
    assert luna.report_as_dict(from_file) == luna.report_as_dict(from_influx)


def test_since_and_service_select_the_same_points_in_influxdb_and_a_file(data: Data) -> None:
    """--since (a WHERE time >= on InfluxDB) and --service (WHERE service = …) select the same
    points as the filters on a file; rates count over the whole window."""
    now = T0 + 100 * SECOND
    kwargs: dict[str, Any] = {
        "since_ns": 30 * SECOND,
        "as_json": True,
        "now_ns": now,
        "environ": {},
    }
    from_influx = json.loads(
        run_report(
            luna.luna_report(HANDLERS), endpoint=data.influx.url, database=data.database, **kwargs
        )
    )
    from_file = json.loads(run_report(luna.luna_report(HANDLERS), file=data.file, **kwargs))
    assert from_influx.pop("source").startswith(f"InfluxDB {data.influx.url} database ")
    assert from_file.pop("source").startswith(f"file {data.file}, service {HANDLERS}, since ")
    assert from_influx == from_file
    assert [s["service"] for s in from_file["services"]] == [HANDLERS]
    assert (from_file["start_ns"], from_file["end_ns"]) == (now - 30 * SECOND, now)
    kept = [
        p
        for p in data.points
        if p.measurement == "requests"
        and p.time_ns >= now - 30 * SECOND
        and dict(p.tags)["service"] == HANDLERS
    ]
    overall = from_file["services"][0]["overall"]
    assert overall["requests"] == len(kept) and overall["rate"] == len(kept) / 30


def rfc3339(time_ns: int) -> str:
    """As InfluxDB 2.x writes times: RFC 3339, UTC, the fraction without trailing zeros."""
    seconds, fraction = divmod(time_ns, SECOND)
    import time as time_module

    text = time_module.strftime("%Y-%m-%dT%H:%M:%S", time_module.gmtime(seconds))
    digits = f"{fraction:09d}".rstrip("0")
    return text + (f".{digits}" if digits else "") + "Z"


def test_influxdb2_over_flux_gives_the_report_of_the_file(
    data: Data, influxdb2: InfluxDB2, influxdb2_bucket: str
) -> None:
    """With a token (API 2) the report reads a real InfluxDB 2.x over Flux (``POST
    /api/v2/query``, annotated CSV): the same points, and the same report, as the file and as
    InfluxDB 1.x over InfluxQL."""
    influxdb2.write(line_protocol(data.points), influxdb2_bucket)
    settings = Settings.load(
        {},
        endpoint=influxdb2.url,
        org=influxdb2.org,
        bucket=influxdb2_bucket,
        token=influxdb2.token,
    )
    assert settings.resolved_api_version == "2"

    def key(point: Point) -> tuple[Any, ...]:
        return (point.measurement, point.tags, point.time_ns, sorted(point.fields.items()))

    assert sorted(luna.read(settings), key=key) == sorted(data.points, key=key)

    def report(source: Settings | Path) -> luna.LunaReport:
        points = luna.read(source, start_ns=T0, service=HANDLERS)
        return luna.summarize(points, start_ns=T0, service=HANDLERS)

    assert report(settings) == report(data.file) == report(data.settings)
    assert report(settings).services[0].overall.requests > 300


def test_flux_csv_error_table_is_a_report_error() -> None:
    """An error Flux reports inside the CSV (an ``error,reference`` table) is raised."""
    text = (
        "#datatype,string,string\r\n#group,true,true\r\n#default,,\r\n,error,reference\r\n"
        ",bucket not found,\r\n"
    )
    with pytest.raises(ReportError, match="bucket not found"):
        answers.points_from_flux_csv(text)


def test_rfc3339_to_nanoseconds() -> None:
    """Times of any fraction length and offset become exact nanoseconds."""
    assert answers.rfc3339_ns("2026-11-29T12:00:00Z") == T0
    assert answers.rfc3339_ns("2026-11-29T12:00:00.000000007Z") == T0 + 7
    assert answers.rfc3339_ns("2026-11-29T13:00:00.5+01:00") == T0 + SECOND // 2
    assert rfc3339(T0 + 1_500_000) == "2026-11-29T12:00:00.0015Z"


# -- presentation and the command ---------------------------------------------------------------


def test_cli_prints_the_report_and_draws_the_png(
    data: Data,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``otel-luna report luna`` prints the same text for InfluxDB and the file, and --png
    writes a large multi-panel PNG (several panels' worth of pixels and colours)."""
    for name in [key for key in os.environ if key.startswith("OTEL_EXPORTER_LUNA_")]:
        monkeypatch.delenv(name)
    source = ["--endpoint", data.influx.url, "--database", data.database]
    assert cli.main(["report", "luna", *source]) == cli.EXIT_OK
    from_influx = capsys.readouterr().out.splitlines()
    png = tmp_path / "charts" / "luna.png"
    assert cli.main(["report", "luna", "--file", str(data.file), "--png", str(png)]) == 0
    from_file = capsys.readouterr().out.splitlines()
    assert from_influx[0] == f"luna report: InfluxDB {data.influx.url} database {data.database}"
    assert from_file[0] == f"luna report: file {data.file}"
    assert from_file[-1] == f"chart: {png}"
    assert from_influx[1:] == from_file[1:-1]
    report = luna.summarize(luna.read(data.file))
    assert "\n".join(from_file[1:-1]) == luna.format_report(report)
    assert "service luna-handlers" in from_file and "service luna-api" in from_file
    assert any(line.lstrip().startswith(EVENTS) and "22002 x" in line for line in from_file)
    raw = png.read_bytes()
    assert raw.startswith(PNG_SIGNATURE)
    assert int.from_bytes(raw[16:20], "big") == 1500 and int.from_bytes(raw[20:24], "big") == 1200
    assert len(raw) > 100_000
    from matplotlib.image import imread

    pixels = imread(str(png))
    colours = {tuple(pixel) for pixel in pixels.reshape(-1, pixels.shape[-1])[::7].tolist()}
    assert len(colours) > 200
    assert not [p for p in png.parent.iterdir() if p != png], "no temporary file left"


def test_show_prints_and_returns_the_report(data: Data, tmp_path: Path) -> None:
    """``show()`` (what the demo calls) prints the report of a path, a URL or settings (an
    InfluxDB or a file endpoint) and returns it."""
    out = io.StringIO()
    report = luna.show(data.file, service=API, out=out)
    assert [s.service for s in report.services] == [API]
    header = f"luna report: file {data.file}, service {API}\n"
    assert out.getvalue() == header + luna.format_report(report) + "\n"
    again = io.StringIO()
    assert luna.show(data.settings, service=API, out=again) == report
    assert again.getvalue().splitlines()[1:] == out.getvalue().splitlines()[1:]
    assert luna.show(data.file.as_uri(), service=API, out=io.StringIO()) == report
    as_file = Settings.load({}, endpoint=data.file.as_uri())
    png = tmp_path / "show.png"
    assert luna.show(as_file, service=API, png=png, out=io.StringIO()) == report
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    since = luna.show(data.file, since=dt.datetime(2026, 11, 29, 12, 1, tzinfo=dt.timezone.utc))
    assert since.start_ns == T0 + 60 * SECOND and since.first_ns >= since.start_ns  # type: ignore[operator]


def test_an_empty_period_an_unreachable_database_and_a_misplaced_option(
    data: Data, capsys: pytest.CaptureFixture[str]
) -> None:
    """A window without points says so; an unreachable InfluxDB is one line and exit 1;
    --service with the watchdog report is a usage error (exit 2)."""
    text = run_report(
        luna.luna_report(), file=data.file, since_ns=SECOND, now_ns=T0 - SECOND, environ={}
    )
    assert "no LUNA points in this period" in text
    from tests.support.servers import free_port

    url = f"http://127.0.0.1:{free_port()}"
    assert cli.main(["report", "luna", "--endpoint", url]) == cli.EXIT_FAILED
    assert capsys.readouterr().err.startswith(f"otel-luna report: cannot reach InfluxDB at {url}")
    watchdog = ["report", "watchdog", "--file", str(data.file), "--service", API]
    assert cli.main(watchdog) == cli.EXIT_USAGE
    assert "--service is for the luna report" in capsys.readouterr().err


def test_sparkline() -> None:
    """One character per value, from zero (the lowest bar) to the largest; blank for none."""
    assert luna.sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert luna.sparkline([None, 3, 3]) == " ██"
    assert luna.sparkline([0, 0]) == "▁▁"
    assert luna.sparkline([]) == ""


def test_a_reader_that_goes_away_is_no_traceback(data: Data) -> None:
    """``otel-luna report luna | head -1``: the command stops quietly when its reader has closed
    the pipe (exit 1, nothing on standard error), instead of a BrokenPipeError traceback."""
    import subprocess
    import sys

    otel_luna = Path(sys.executable).with_name("otel-luna")
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the report is written
    try:
        done = subprocess.run(
            [str(otel_luna), "report", "luna", "--file", str(data.file)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.stderr == b""
    assert done.returncode == cli.EXIT_FAILED


# -- what a new user ran into (issue 12) ---------------------------------------------------------


@pytest.fixture
def lp_file(tmp_path: Path) -> Path:
    """The crafted points in a line-protocol file (no InfluxDB needed)."""
    file = tmp_path / "luna.lp"
    file.write_text(line_protocol(crafted_points()))
    return file


def without_luna_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [key for key in os.environ if key.startswith("OTEL_EXPORTER_LUNA_")]:
        monkeypatch.delenv(name)


@pytest.mark.slow  # renders charts
def test_an_unwritable_chart_prints_the_report_then_one_line_and_exit_1(
    lp_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--png`` where no file can be written: the report is printed all the same, then one line
    on standard error naming the chart and why, exit 1; no traceback. A missing parent
    directory is created."""
    without_luna_environment(monkeypatch)
    assert cli.main(["report", "luna", "--file", str(lp_file)]) == cli.EXIT_OK
    text = capsys.readouterr().out
    (tmp_path / "a-dir.png").mkdir()
    (tmp_path / "a-file").write_text("")
    cases = {
        "/proc/x.png": "No such file or directory",
        str(tmp_path / "a-dir.png"): "Is a directory",
        str(tmp_path / "a-file" / "x.png"): "Not a directory",
        "/etc/passwd/x.png": "Not a directory",
    }
    for png, reason in cases.items():
        assert cli.main(["report", "luna", "--file", str(lp_file), "--png", png]) == 1, png
        out, err = capsys.readouterr()
        assert out == text
        assert err == f"otel-luna report: cannot write the chart {png}: {reason}\n"
    for png, reason in cases.items():  # the same for the JSON
        assert cli.main(["report", "luna", "--file", str(lp_file), "--json", "--png", png]) == 1
        out, err = capsys.readouterr()
        assert "png" not in json.loads(out) and err.endswith(f": {reason}\n")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary file"
    created = tmp_path / "new" / "deeper" / "luna.png"
    assert cli.main(["report", "luna", "--file", str(lp_file), "--png", str(created)]) == 0
    assert capsys.readouterr().out == text + f"chart: {created}\n"
    assert created.read_bytes().startswith(PNG_SIGNATURE)


@pytest.mark.slow  # renders charts
def test_a_png_path_not_ending_in_png_is_a_usage_error(
    lp_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """We always write PNG data: ``--png /tmp``, ``--png ""`` or ``--png c.svg`` is a usage
    error (exit 2) naming the option; nothing is read or printed."""
    for png in ("/tmp", "", "chart.svg"):
        with pytest.raises(SystemExit) as stopped:
            cli.main(["report", "luna", "--file", str(lp_file), "--png", png])
        assert stopped.value.code == cli.EXIT_USAGE
        out, err = capsys.readouterr()
        assert (
            out == ""
            and f"argument --png: the chart is PNG data: give a path ending in .png, got {png!r}"
            in err
        )
    assert (
        cli.main(
            ["report", "luna", "--file", str(lp_file), "--png", str(lp_file.with_name("C.PNG"))]
        )
        == 0
    )


@pytest.mark.slow  # renders charts
def test_show_prints_the_report_before_failing_on_the_chart(lp_file: Path, tmp_path: Path) -> None:
    """``show()`` (what the demo calls) writes the text first, then raises ``ReportError`` for a
    chart it cannot write: the caller still has the text."""
    out = io.StringIO()
    directory = tmp_path / "taken.png"
    directory.mkdir()
    with pytest.raises(ReportError, match=f"cannot write the chart {directory}: Is a directory"):
        luna.show(lp_file, png=directory, out=out)
    assert (
        out.getvalue()
        == f"luna report: file {lp_file}\n"
        + luna.format_report(luna.summarize(luna.read(lp_file)))
        + "\n"
    )


def test_a_file_cut_short_is_read_but_its_last_line(
    lp_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``head -c -20 luna.lp > t.lp`` (a file cut short by a crash): the report of the lines
    before, and the skipped line counted in the header, text and JSON; exit 0."""
    without_luna_environment(monkeypatch)
    data = lp_file.read_bytes()
    cut = lp_file.with_name("t.lp")
    cut.write_bytes(data[:-20])
    lines = data.count(b"\n")
    assert cli.main(["report", "luna", "--file", str(cut)]) == cli.EXIT_OK
    out = capsys.readouterr().out.splitlines()
    assert out[3].startswith(
        f"skipped 1 unreadable line (first: line {lines}: bad timestamp at character "
    )
    whole = luna.summarize(crafted_points()[:-1])  # the last line is the last point
    assert out[1:3] + out[4:] == luna.format_report(whole).splitlines()
    assert cli.main(["report", "luna", "--file", str(cut), "--json"]) == cli.EXIT_OK
    skipped = json.loads(capsys.readouterr().out)["skipped"]
    assert skipped["lines"] == 1 and skipped["first"].startswith(f"line {lines}: bad timestamp")


def test_bad_lines_are_skipped_and_counted_string_fields_keep_their_newlines() -> None:
    """Lines are cut as ``split_lines`` cuts them (a string field may hold a newline): a bad
    line among good ones is skipped and named by its line in the file."""
    good = (
        'licensing,license_status=warning,service=s liveness_balance=9i,warnings="two\nlines" 1\n'
        "requests,route=r,service=s execution_time=0.5 2\n"
    )
    text = good + "requests,route=r,service=s execution_time=x 3\n# a comment\nbroken\n" + good
    read = sources.parse_line_protocol(text.encode(), "t.lp")
    assert [p.time_ns for p in read.points] == [1, 2, 1, 2]
    assert read.points[0].fields["warnings"] == "two\nlines"
    assert read.skipped == sources.Skipped(2, "line 4: bad field value 'x' at character 42")
    assert read.skipped.describe() == (
        "skipped 2 unreadable lines (first: line 4: bad field value 'x' at character 42)"
    )
    with pytest.raises(ReportError, match=r"^t\.lp: no line can be read \(first: line 1: "):
        sources.parse_line_protocol(b"broken\nalso broken\n", "t.lp")
    assert sources.parse_line_protocol(b"", "t.lp") == ([], sources.Skipped())


def test_a_line_that_is_not_utf8_is_skipped_and_counted_naming_its_line_and_offset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not UTF-8: the line is skipped and counted like any unreadable line, named by its line
    and byte offset (no UnicodeDecodeError traceback); a last line cut inside a character is a
    line cut short."""
    file = tmp_path / "bin.lp"
    file.write_bytes(
        b"requests,service=a execution_time=1 1\nrequests,service=\xff execution_time=1 2\n"
    )
    assert cli.main(["report", "luna", "--file", str(file)]) == cli.EXIT_OK
    assert (
        "skipped 1 unreadable line (first: line 2: not UTF-8 text (byte offset 55))"
        in capsys.readouterr().out.splitlines()
    )
    cut = b'requests,service=a execution_time=1,s="\xc3\xa9" 1\nrequests,service=a s="\xc3'
    read = sources.parse_line_protocol(cut, "cut.lp")
    assert [p.fields["s"] for p in read.points] == ["é"]
    assert read.skipped == sources.Skipped(1, "line 2: cut short inside a UTF-8 character")


def test_rates_need_a_period_of_a_tenth_of_a_second_and_columns_stay_apart() -> None:
    """Three requests 2 ns apart: no rates (``-``), not billions per second; and a number
    wider than its column still has spaces on both sides."""
    points = [
        Point("requests", (("route", "r"), ("service", "s")), {"execution_time": 1e9}, T0 + i)
        for i in (0, 2, 4)
    ]
    report = luna.summarize(points)
    assert report.rate_seconds is None and report.services[0].overall.rate is None
    text = luna.format_report(report)
    assert "; no rates (a period under 0.1 s)" in text.splitlines()[0]
    rows = [line.split() for line in text.splitlines() if line.startswith("  r ")]
    assert rows == [["r", "3", "-", *["1000000000000.0"] * 4, "0", "(0.0%)"]]
    later = Point("requests", points[0].tags, {"execution_time": 0.5}, T0 + SECOND)
    wide = luna.summarize([*points, later])
    assert wide.rate_seconds == 1.0 and wide.services[0].overall.rate == 4.0
    assert "; rates over 1.0 s" in luna.format_report(wide).splitlines()[0]


def test_since_beyond_a_hundred_years_is_a_usage_error(
    lp_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--since 99999999999d`` is refused before anything is read (exit 2, naming --since)."""
    assert durations.parse_duration("36525d") == durations.MAX_DURATION_NS
    for since in ("99999999999d", "36526d", "5300w"):
        with pytest.raises(SystemExit) as stopped:
            cli.main(["report", "luna", "--file", str(lp_file), "--since", since])
        assert stopped.value.code == cli.EXIT_USAGE
        assert "argument --since: the duration must be at most 100 years" in capsys.readouterr().err
    with pytest.raises(ValueError, match="at most 100 years"):
        luna.show(lp_file, since="99999999999d", out=io.StringIO())


def test_no_points_is_exit_0_everywhere_an_unreadable_source_exit_1(
    influxdb1: InfluxDB1,
    influxdb1_database: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The source was read but holds no points (an empty file, an empty database, an empty
    window, an unknown service): the report says so, exit 0, for both reports. A source that
    cannot be read: exit 1."""
    without_luna_environment(monkeypatch)
    empty = tmp_path / "empty.lp"
    empty.write_bytes(b"")
    sources = (
        ["--file", str(empty)],
        ["--endpoint", influxdb1.url, "--database", influxdb1_database],
    )
    for source in sources:
        assert cli.main(["report", "luna", *source]) == cli.EXIT_OK
        assert "no LUNA points in this period" in capsys.readouterr().out
        assert cli.main(["report", "watchdog", *source]) == cli.EXIT_OK
        assert "(0 new_item, 0 poller_heartbeat, 0 worker_works)" in capsys.readouterr().out
    lp = tmp_path / "luna.lp"
    lp.write_text(line_protocol(crafted_points()))
    for extra in (["--service", "nobody"], ["--since", "1s"]):
        assert cli.main(["report", "luna", "--file", str(lp), *extra]) == cli.EXIT_OK
        assert "no LUNA points in this period" in capsys.readouterr().out
    for profile in ("luna", "watchdog"):
        assert cli.main(["report", profile, "--file", str(tmp_path / "missing.lp")]) == 1
        assert capsys.readouterr().err == (
            f"otel-luna report: cannot read {tmp_path / 'missing.lp'}: No such file or directory\n"
        )


class QuietFileServer(http.server.SimpleHTTPRequestHandler):
    """``python -m http.server``'s handler (a 501 HTML page for a POST), not logging."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_an_html_error_page_is_cut_to_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A wrong endpoint (``python -m http.server`` answers a POST with a 501 HTML page): one
    short line on standard error, not the page."""
    with HttpStub(QuietFileServer) as server:
        url = server.url
        assert cli.main(["report", "luna", "--endpoint", url]) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 300 and "<" not in err
    assert err.startswith(f"otel-luna report: InfluxDB at {url} answered HTTP 501: Error response")
    assert "Unsupported method ('POST')" in err
    assert answers.server_answer(b"\n  first line\nsecond\n") == "first line"
    assert answers.server_answer(b"x" * 500) == "x" * 197 + "..."


# -- the shared pieces: the source, the query client, one run_report ---------------------------


def test_the_influxdb_source_is_built_from_settings_in_one_place_and_hides_secrets() -> None:
    """``InfluxSource.from_settings`` takes what a report needs (API version resolved); its
    repr shows no credential; a file endpoint is a path, ``console`` no source."""
    settings = Settings.load(
        {}, endpoint="http://h:8086", token="s3cret-token", org="o", bucket="b", timeout=3
    )
    influx = sources.as_source(settings)
    assert isinstance(influx, query.InfluxSource)
    assert (influx.api_version, influx.org, influx.bucket, influx.timeout) == ("2", "o", "b", 3.0)
    assert "s3cret" not in repr(influx)
    assert sources.describe_source(influx) == "InfluxDB http://h:8086 org o bucket b"
    v1 = Settings.load({}, endpoint="http://h:8086", username="u", password="pw", database="d")
    assert "pw" not in repr(query.InfluxSource.from_settings(v1))
    assert sources.as_source("file:///tmp/x.lp") == Path("/tmp/x.lp")
    assert sources.as_source("x.lp") == Path("x.lp")
    with pytest.raises(ReportError, match="cannot read a report from 'console'"):
        sources.as_source(Settings.load({}, endpoint="console"))


def test_run_report_hands_the_window_and_limits_to_the_report_and_prints_its_pieces(
    tmp_path: Path,
) -> None:
    """The one ``run_report``: the source resolved, the window the last ``since_ns`` before
    ``now_ns``, the report's text (escaped) or JSON, and its chart drawn when asked."""
    file = tmp_path / "x.lp"
    seen: list[Any] = []
    drawn: list[Path] = []

    def make(source: sources.Source, window: Window, limits: query.Limits) -> MadeReport:
        seen.append((source, window, limits))
        return MadeReport({"n": 1}, "text \x1b", drawn.append)

    limits = query.Limits(max_bytes=10, max_seconds=1.0)
    text = run_report(make, file=file, since_ns=5, now_ns=100, limits=limits, environ={})
    assert seen == [(file, (95, 100), limits)]
    assert text == "text \\x1b"
    png = tmp_path / "c.png"
    assert json.loads(run_report(make, file=file, as_json=True, png=png, environ={})) == {
        "n": 1,
        "png": str(png),
    }
    assert seen[-1][1] == (None, None) and drawn == [png]


def test_the_query_client_pings_runs_statements_and_names_a_refused_one(
    influxdb1: InfluxDB1, influxdb1_database: str
) -> None:
    """``ping`` (204), ``run_influxql`` (one result per statement), and a statement the server
    refuses is a ``ReportError`` naming it: what the demo prepares its database with."""
    source = query.InfluxSource(influxdb1.url, database=influxdb1_database)
    assert query.ping(source) == 204
    show, _ = query.run_influxql(source, "SHOW DATABASES", "SHOW MEASUREMENTS")
    names = [row[0] for series in show.get("series", []) for row in series["values"]]
    assert influxdb1_database in names
    refused = 'SELECT * FROM "m" GROUP BY time(1s)'  # parsed, refused when run
    with pytest.raises(ReportError, match=r"aggregate.*: SELECT \* FROM \"m\" GROUP BY"):
        query.run_influxql(source, "SHOW DATABASES", refused)
    with pytest.raises(ReportError, match=r"answered HTTP 400: .*error parsing query"):
        query.run_influxql(source, "SELECT nonsense FROM")
