"""Real apps under opentelemetry-instrument → the luna exporter → a real InfluxDB 1.x."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.apprunner import instrumented_app
from tests.support.servers import InfluxDB1

FLASK_APP = Path(__file__).parent.parent / "apps" / "flask_app.py"

# (method, path, expected status) — a small mix of success and failure.
TRAFFIC = (
    [("POST", "/extractor", 201)] * 7
    + [("POST", "/extractor?bad=1", 400)] * 3
    + [("POST", "/handlers/h-1/events", 201)] * 5
    + [("POST", "/handlers/h-2/events", 201)] * 2
    + [("GET", "/version", 200)] * 4
    + [("GET", "/missing", 404)] * 2
)


def luna_env(influxdb1: InfluxDB1, database: str, **extra: str) -> dict[str, str]:
    return {
        "OTEL_TRACES_EXPORTER": "luna",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_SERVICE_NAME": "luna-handlers",
        "OTEL_EXPORTER_LUNA_ENDPOINT": influxdb1.url,
        "OTEL_EXPORTER_LUNA_DATABASE": database,
        "OTEL_EXPORTER_LUNA_API_VERSION": "1",
        **extra,
    }


def drive(base_url: str) -> None:
    with requests.Session() as session:
        for method, path, status in TRAFFIC:
            response = session.request(method, base_url + path, timeout=10)
            assert response.status_code == status, (method, path, response.text)


def keys(influxdb1: InfluxDB1, database: str, statement: str, measurement: str) -> dict[str, Any]:
    result = influxdb1.query(f"{statement} FROM {measurement}", database)
    (series,) = result["results"][0]["series"]
    if statement == "SHOW TAG KEYS":
        return {row[0]: "tag" for row in series["values"]}
    return {row[0]: row[1] for row in series["values"]}


def run_flask(influxdb1: InfluxDB1, database: str, **extra: str) -> list[dict[str, Any]]:
    with instrumented_app(FLASK_APP, luna_env(influxdb1, database, **extra)) as url:
        drive(url)
    return influxdb1.select("SELECT * FROM requests", database)


def test_flask_requests_series(influxdb1: InfluxDB1, influxdb1_database: str) -> None:
    """Every Flask request is one requests point with exactly the documented tags and fields."""
    rows = run_flask(influxdb1, influxdb1_database)
    assert len(rows) == len(TRAFFIC)
    counted = Counter((row["route"], row["status_code"]) for row in rows)
    assert counted == Counter(
        {
            ("POST:/extractor", "201"): 7,
            ("POST:/extractor", "400"): 3,
            ("POST:/handlers/{handler_id}/events", "201"): 7,
            ("GET:/version", "200"): 4,
            ("GET:{unmatched}", "404"): 2,  # matched no route: not one series per URL
        }
    )
    assert keys(influxdb1, influxdb1_database, "SHOW TAG KEYS", "requests") == {
        "handler_id": "tag",
        "route": "tag",
        "service": "tag",
        "status_code": "tag",
    }
    assert keys(influxdb1, influxdb1_database, "SHOW FIELD KEYS", "requests") == {
        "request_id": "string",
        "execution_time": "float",
        "save_samples_time": "float",
        "download_images_time": "float",
        "event_storage_policy_time": "float",
    }
    for row in rows:
        assert row["service"] == "luna-handlers"
        assert len(row["request_id"]) == 32 and row["execution_time"] > 0
        on_handler = row["route"].startswith("POST:/handlers/")
        assert (row["handler_id"] is not None) == on_handler
        assert (row["download_images_time"] is not None) == on_handler
        assert (row["save_samples_time"] is not None) == row["route"].startswith("POST:/extractor")
    errors = influxdb1.select("SELECT * FROM errors", influxdb1_database)
    assert Counter((row["route"], row["error_code"]) for row in errors) == Counter(
        {("POST:/extractor", "12031"): 3, ("GET:{unmatched}", "0"): 2}
    )
    assert keys(influxdb1, influxdb1_database, "SHOW TAG KEYS", "errors") == {
        "error_code": "tag",
        "route": "tag",
        "service": "tag",
        "status_code": "tag",
    }
    assert keys(influxdb1, influxdb1_database, "SHOW FIELD KEYS", "errors") == {
        "request_id": "string"
    }


@pytest.mark.parametrize("opt_in", ["http", "http/dup"])
def test_semantic_conventions_give_identical_points(influxdb1: InfluxDB1, opt_in: str) -> None:
    """Old, new and duplicated HTTP conventions of a real app give the same points."""

    def shape(rows: list[dict[str, Any]]) -> Counter[tuple[Any, ...]]:
        return Counter(
            tuple(
                sorted(
                    (k, v)
                    for k, v in row.items()
                    if k not in ("time", "request_id") and not k.endswith("_time")
                )
            )
            for row in rows
        )

    old_db, new_db = influxdb1.fresh_database("old"), influxdb1.fresh_database("new")
    try:
        old = run_flask(influxdb1, old_db, OTEL_SEMCONV_STABILITY_OPT_IN="")
        new = run_flask(influxdb1, new_db, OTEL_SEMCONV_STABILITY_OPT_IN=opt_in)
    finally:
        influxdb1.drop_database(old_db)
        influxdb1.drop_database(new_db)
    assert shape(old) == shape(new)
    assert len(old) == len(TRAFFIC)


EXAMPLE_APP = Path(__file__).parents[2] / "otel_luna" / "examples" / "luna_handlers_app.py"
STAGES = {
    "POST:/detector": {"load_images_for_processing_time", "save_warps_time", "save_samples_time"},
    "POST:/extractor": {"load_face_samples_time", "save_face_attributes_time"},
    "POST:/handlers/{handler_id}/events": {
        "download_images_time",
        "face_sample_storage_policy_time",
        "match_policy_time",
        "face_storage_policy_time",
        "event_storage_policy_time",
        "notification_storage_policy_time",
    },
}


def test_example_app_into_influxdb1(influxdb1: InfluxDB1, influxdb1_database: str) -> None:
    """The aiohttp example under opentelemetry-instrument writes exactly the documented series."""
    known = "3f1c9a52-6d0e-4c8e-9a61-0d2b7f1e4a10"  # one of the example's DEFAULT_HANDLER_IDS
    traffic = (
        [("POST", "/detector", b"image", 201)] * 5
        + [("POST", "/extractor", b'{"sample_ids": ["a"]}', 201)] * 4
        + [("POST", "/extractor", b"not json", 400)] * 2
        + [("POST", f"/handlers/{known}/events", b"image", 201)] * 5
        + [("POST", "/handlers/unknown/events", b"image", 404)] * 3
        + [("GET", "/version", b"", 200)] * 3
    )
    with (
        instrumented_app(
            EXAMPLE_APP, luna_env(influxdb1, influxdb1_database), "--port", "0"
        ) as url,
        requests.Session() as session,
    ):
        for method, path, body, status in traffic:
            response = session.request(method, url + path, data=body, timeout=10)
            assert response.status_code == status, (method, path, response.text)
    rows = influxdb1.select("SELECT * FROM requests", influxdb1_database)
    assert len(rows) == len(traffic)
    assert Counter((row["route"], row["status_code"]) for row in rows) == Counter(
        {
            ("POST:/detector", "201"): 5,
            ("POST:/extractor", "201"): 4,
            ("POST:/extractor", "400"): 2,
            ("POST:/handlers/{handler_id}/events", "201"): 5,
            ("POST:/handlers/{handler_id}/events", "404"): 3,
            ("GET:/version", "200"): 3,
        }
    )
    assert keys(influxdb1, influxdb1_database, "SHOW TAG KEYS", "requests") == {
        "handler_id": "tag",
        "route": "tag",
        "service": "tag",
        "status_code": "tag",
    }
    all_stages = set().union(*STAGES.values())
    assert keys(influxdb1, influxdb1_database, "SHOW FIELD KEYS", "requests") == {
        "request_id": "string",
        "execution_time": "float",
        **dict.fromkeys(all_stages, "float"),
    }
    for row in rows:
        on_handler = row["route"] == "POST:/handlers/{handler_id}/events"
        assert (row["handler_id"] is not None) == on_handler
        timed = {name for name in all_stages if row[name] is not None}
        succeeded = row["status_code"] in ("200", "201")
        assert timed == (STAGES.get(row["route"], set()) if succeeded else set()), row
    errors = influxdb1.select("SELECT * FROM errors", influxdb1_database)
    assert Counter((row["route"], row["error_code"]) for row in errors) == Counter(
        {("POST:/extractor", "12031"): 2, ("POST:/handlers/{handler_id}/events", "22002"): 3}
    )
    assert keys(influxdb1, influxdb1_database, "SHOW TAG KEYS", "errors") == {
        "error_code": "tag",
        "handler_id": "tag",
        "route": "tag",
        "service": "tag",
        "status_code": "tag",
    }
    assert keys(influxdb1, influxdb1_database, "SHOW FIELD KEYS", "errors") == {
        "request_id": "string"
    }
