"""The example luna-handlers aiohttp app, run unchanged under ``opentelemetry-instrument``."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from otel_luna.demo import _app as demo_app
from otel_luna.demo import _load as demo_load
from otel_luna.demo import _verify as verify
from otel_luna.schema import luna as schema
from otel_luna.schema._point import Point

pytestmark = pytest.mark.slow  # runs the example app under opentelemetry-instrument

EXAMPLE_APP = demo_app.EXAMPLE_APP
KNOWN_HANDLERS = ["h-known-1", "h-known-2"]
UNKNOWN_HANDLERS = ["h-missing"]
EVENTS = "POST:/handlers/{handler_id}/events"

#: The stage fields each (route, status) of the app times, and no others.
STAGES: dict[tuple[str, str], set[str]] = {
    ("POST:/detector", "201"): {
        "load_images_for_processing_time",
        "save_warps_time",
        "save_samples_time",
    },
    ("POST:/extractor", "201"): {"load_face_samples_time", "save_face_attributes_time"},
    ("POST:/extractor", "400"): set(),
    (EVENTS, "201"): {
        "download_images_time",
        "face_sample_storage_policy_time",
        "match_policy_time",
        "face_storage_policy_time",
        "event_storage_policy_time",
        "notification_storage_policy_time",
    },
    (EVENTS, "404"): set(),
    ("GET:/version", "200"): set(),
}


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any OTEL_* setting, plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    return {**env, **extra}


def luna_env(endpoint: str, state_dir: Path) -> dict[str, str]:
    """The luna exporter to ``endpoint``, its spool and dead letters in ``state_dir``."""
    return demo_app.app_environment(clean_env(), state_dir, endpoint, state_dir)


def request(
    url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    """One HTTP request with the standard library; (status, headers, JSON body)."""
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


def console_spans(lines: list[str]) -> list[dict[str, Any]]:
    """The spans ConsoleSpanExporter printed (indented JSON objects, one per span)."""
    spans, current = [], []
    for line in lines:
        if line == "{":
            current = [line]
        elif current:
            current.append(line)
            if line == "}":
                spans.append(json.loads("\n".join(current)))
                current = []
    return spans


def test_server_spans_have_templated_routes_and_children(tmp_path: Path) -> None:
    """Each request is a SERVER span with templated http.route; child spans hang under it."""
    env = clean_env(
        OTEL_TRACES_EXPORTER="console",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_SERVICE_NAME="luna-handlers",
    )
    app = demo_app.AppProcess(env, tmp_path, EXAMPLE_APP, ["--handlers", ",".join(KNOWN_HANDLERS)])
    with app:
        base = app.url
        status, headers, _ = request(
            f"{base}/handlers/h-known-1/events",
            "POST",
            b"{}",
            {"LUNA-Request-Id": "1700000000,req-1"},
        )
        assert status == 201 and headers["LUNA-Request-Id"] == "1700000000,req-1"
        status, _, body = request(f"{base}/handlers/h-missing/events", "POST", b"{}")
        assert (status, body["error_code"]) == (404, 22002)
        assert request(f"{base}/detector", "POST", b"jpeg")[0] == 201
        assert request(f"{base}/version")[0] == 200
        assert app.stop() == 0

    spans = console_spans(app.output)
    servers = [span for span in spans if span["kind"] == "SpanKind.SERVER"]
    assert [span["attributes"]["http.route"] for span in servers] == [
        "/handlers/{handler_id}/events",
        "/handlers/{handler_id}/events",
        "/detector",
        "/version",
    ]
    assert all(span["parent_id"] is None for span in servers)
    events, missing, detector, _ = (span["attributes"] for span in servers)
    assert events["luna.request_id"] == "1700000000,req-1"
    assert events["luna.tag.handler_id"] == "h-known-1"
    assert missing["luna.tag.handler_id"] == "h-missing"
    assert missing["luna.error_code"] == 22002
    # Timed in tasks started by asyncio.gather: they land on the server span itself.
    assert {"luna.time.save_warps_time", "luna.time.save_samples_time"} <= set(detector)
    assert "luna.time.face_storage_policy_time" in events
    children = {span["name"]: span for span in spans if span["kind"] == "SpanKind.INTERNAL"}
    # the licence check of start-up is a trace of its own (otel_luna.record_license)
    license_check = children.pop("luna.license_check")
    assert license_check["parent_id"] is None
    assert license_check["attributes"]["luna.license.status"] == "ok"
    assert set(children) == {"match policy", "luna-events: save event"}
    server_id = servers[0]["context"]["span_id"]
    for child in children.values():
        assert child["parent_id"] == server_id
    assert "luna.time.match_policy_time" in children["match policy"]["attributes"]
    assert (
        "luna.time.event_storage_policy_time" in children["luna-events: save event"]["attributes"]
    )


def test_luna_points_per_request(tmp_path: Path) -> None:
    """One requests point per request; errors with the app's codes; tags, stages by route; one
    usages point per request that ran estimations, at its time, the counts exact."""
    lp = tmp_path / "app.lp"
    calls = demo_load.plan_requests(80, KNOWN_HANDLERS, UNKNOWN_HANDLERS, random.Random(5))
    assert {call.kind for call in calls} == {kind for kind, _ in demo_load.REQUEST_MIX}
    app = demo_app.AppProcess(
        luna_env(lp.as_uri(), tmp_path),
        tmp_path,
        EXAMPLE_APP,
        ["--handlers", ",".join(KNOWN_HANDLERS)],
    )
    with app:
        driven = demo_load.drive(app.url or "", calls, concurrency=6)
        assert app.stop() == 0
    assert driven.problems == []
    assert driven.statuses == [call.expect_status for call in calls]

    points = verify.read_line_protocol(lp)
    requests = [p for p in points if p.measurement == schema.REQUESTS]
    errors = [p for p in points if p.measurement == schema.ERRORS]
    (license_point,) = [p for p in points if p.measurement == schema.LICENSING]
    assert license_point.fields["liveness_balance"] == 100_000
    usages = [p for p in points if p.measurement == schema.USAGES_STATISTIC]
    assert len(points) == len(requests) + len(errors) + len(usages) + 1
    assert len(requests) == len(calls)
    # one usages point per detection or extraction (1 to 3 samples), at its request's time
    with_usages, counted = verify.expected_usages(calls, driven.statuses)
    assert len(usages) == with_usages == sum(c.kind in ("detector", "extractor") for c in calls)
    assert {p.time_ns for p in usages} <= {p.time_ns for p in requests}
    assert counted["face_detector"] == sum(1 for call in calls if call.kind == "detector")
    for estimator, total in counted.items():
        assert sum(int(p.fields.get(f"{estimator}_usages", 0)) for p in usages) == total

    by_id: dict[str, Point] = {str(p.fields["request_id"]): p for p in requests}
    assert len(by_id) == len(requests)  # request ids are unique
    sent_ids = {call.request_id for call in calls if call.request_id}
    generated = set(by_id) - sent_ids
    assert sent_ids <= set(by_id)  # every LUNA-Request-Id header became a request_id field
    assert len(generated) == len(calls) - len(sent_ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", request_id) for request_id in generated)

    expected_tags = Counter((call.route, str(call.expect_status)) for call in calls)
    found_tags = Counter((dict(p.tags)["route"], dict(p.tags)["status_code"]) for p in requests)
    assert found_tags == expected_tags

    for point in requests:
        tags = dict(point.tags)
        assert tags["service"] == "luna-handlers"
        assert ("handler_id" in tags) == (tags["route"] == EVENTS)
        stages = {key for key in point.fields if key.endswith("_time")} - {"execution_time"}
        assert stages == STAGES[(tags["route"], tags["status_code"])], tags
        assert stages <= set(schema.STAGE_TIME_FIELDS)
        assert all(isinstance(point.fields[key], float) for key in stages | {"execution_time"})
    for call in calls:
        if call.request_id and call.handler_id:
            assert dict(by_id[call.request_id].tags)["handler_id"] == call.handler_id

    expected_errors = Counter(
        (call.route, str(call.expect_status), str(call.expect_error_code))
        for call in calls
        if call.expect_error_code is not None
    )
    assert (
        Counter(
            (dict(p.tags)["route"], dict(p.tags)["status_code"], dict(p.tags)["error_code"])
            for p in errors
        )
        == expected_errors
    )
    assert {code for _, _, code in expected_errors} == {"12031", "22002"}
    for point in errors:
        assert set(point.fields) == {"request_id"}
        tags = dict(point.tags)
        assert ("handler_id" in tags) == (tags["route"] == EVENTS)


def test_sigint_stops_cleanly_and_flushes(tmp_path: Path) -> None:
    """SIGINT (Ctrl-C) shuts the app down with exit code 0 after the exporter flushed."""
    lp = tmp_path / "app.lp"
    app = demo_app.AppProcess(luna_env(lp.as_uri(), tmp_path), tmp_path, EXAMPLE_APP)
    with app:
        assert app.url is not None and int(app.url.rsplit(":", 1)[1]) > 0
        assert request(f"{app.url}/version")[0] == 200
        assert app.pid is not None
        os.kill(app.pid, signal.SIGINT)
        assert app.wait(timeout=30) == 0
    (point,) = [p for p in verify.read_line_protocol(lp) if p.measurement == schema.REQUESTS]
    assert dict(point.tags)["route"] == "GET:/version"
