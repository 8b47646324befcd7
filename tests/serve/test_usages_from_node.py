"""Usages per request from another language: the Node.js OTel SDK (``tests/node/app.js``) sets
``luna.usages.<estimator>`` on its SERVER spans, sends them over OTLP (gRPC or HTTP) to
``otel-luna serve``, and a real InfluxDB 1.x gets exactly one ``usages_statistic`` point per
request that ran an estimation, at that request's time (its ``requests`` point's), with its
counts — nothing for a request without one."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from tests.support.servehelpers import Serve, run_node_app, serve_env
from tests.support.servers import InfluxDB1

SERVICE = "node-estimator"
#: The same start for every span: serve must still give each request its own time, and its
#: usages point that same time.
SAME_START_NS = "1795953600000000000"

pytestmark = pytest.mark.node  # a Node.js sender through otel-luna serve


def span(index: int, route: str, status: int = 201, **usages: int) -> dict[str, Any]:
    """A SERVER span of ``tests/node/app.js`` with request id ``node-<index>`` and the
    ``luna.usages.<estimator>`` attributes ``usages`` (JSON numbers: OTLP intValue)."""
    method, _, path = route.partition(" ")
    return {
        "name": route,
        "attributes": {
            "http.request.method": method,
            "http.route": path,
            "http.response.status_code": status,
            "luna.request_id": f"node-{index}",
            **{f"luna.usages.{name}": count for name, count in usages.items()},
        },
        "error": status >= 500,
        "duration_ms": 3.0,
    }


def planned() -> list[dict[str, Any]]:
    """40 requests: detections with one or two estimators, extractions, requests without
    usages, a failed request that still ran an estimation, and a count of 0 (no point)."""
    spans = []
    for index in range(40):
        kind = index % 5
        if kind == 0:
            spans.append(span(index, "POST /detector", face_detector=1 + index % 3))
        elif kind == 1:
            spans.append(
                span(index, "POST /detector", face_detector=1, liveness_estimator=index % 4 + 1)
            )
        elif kind == 2:
            spans.append(span(index, "POST /liveness", liveness_estimator=7))
        else:
            spans.append(span(index, "GET /version", 200))
    spans.append(span(40, "POST /detector", 500, face_detector=2))  # failed, but estimated
    spans.append(span(41, "POST /detector", face_detector=0))  # a count of 0: no estimation
    return spans


def expected_usages(spans: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Request id → its ``<estimator>_usages`` fields, for the requests with an estimation."""
    found = {}
    for spec in spans:
        attributes = spec["attributes"]
        fields = {
            key.removeprefix("luna.usages.") + "_usages": value
            for key, value in attributes.items()
            if key.startswith("luna.usages.") and value > 0
        }
        if fields:
            found[attributes["luna.request_id"]] = fields
    return found


@pytest.mark.parametrize("same_start", [False, True], ids=["own-starts", "one-start"])
@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_node_spans_with_usages_give_one_point_per_request_at_its_time(
    influxdb1: InfluxDB1, influxdb1_database: str, protocol: str, same_start: bool
) -> None:
    """Node.js SERVER spans with ``luna.usages.*`` through serve: one ``usages_statistic`` point
    per request with an estimation (a failed one too, none for a count of 0 or no usages),
    tagged ``service`` only, integer fields, at the time of that request's ``requests`` point
    (also when every span starts at the same nanosecond), and sums equal to what was sent."""
    database = influxdb1_database
    spans = planned()
    if same_start:
        for spec in spans:
            spec["start_ns"] = SAME_START_NS
    with Serve(serve_env(influxdb1.url, database)) as serve:
        url = f"http://{serve.grpc_target}" if protocol == "grpc" else f"{serve.http_url}/v1/traces"
        output = run_node_app(
            protocol,
            url,
            spans,
            {
                "OTEL_SERVICE_NAME": SERVICE,
                "OTEL_METRICS_EXPORTER": "none",
                "OTEL_LOGS_EXPORTER": "none",
                "OTEL_TRACES_EXPORTER": "none",  # the app passes its exporter explicitly
            },
        )
    assert f"exported {len(spans)} spans" in output

    requests = influxdb1.select("SELECT request_id FROM requests", database)
    request_at = {row["time"]: row["request_id"] for row in requests}
    assert len(request_at) == len(requests) == len(spans)  # every request its own time
    usages = influxdb1.select("SELECT * FROM usages_statistic", database)
    expected = expected_usages(spans)
    assert len(usages) == len(expected) == 25
    got = {}
    for row in usages:
        assert row["time"] in request_at, f"a usages point at no request's time: {row}"
        assert row["service"] == SERVICE
        fields = {key: value for key, value in row.items() if key.endswith("_usages") and value}
        got[request_at[row["time"]]] = fields
    assert got == expected

    sums: Counter[str] = Counter()
    for fields in expected.values():
        sums.update(fields)
    (totals,) = influxdb1.select("SELECT sum(*) FROM usages_statistic", database)
    assert {k.removeprefix("sum_"): v for k, v in totals.items() if k != "time"} == dict(sums)
    keys = influxdb1.query("SHOW TAG KEYS FROM usages_statistic", database)["results"][0]
    assert [row for series in keys["series"] for row in series["values"]] == [["service"]]
    types = influxdb1.query("SHOW FIELD KEYS FROM usages_statistic", database)["results"][0]
    assert dict(row for series in types["series"] for row in series["values"]) == {
        "face_detector_usages": "integer",
        "liveness_estimator_usages": "integer",
    }
