"""``otel-luna serve --health-port``: /healthz, /readyz and Prometheus /metrics on a port of
their own, against a real serve (``servehelpers.Serve``) and real InfluxDB 1.x. Ready flips to
not ready while the destination refuses (a closed port, a missing database) and back; the
metrics parse with prometheus_client's parser and match what ``otel-luna status`` shows, for
one process and for ``--workers 2`` (the supervisor sums its workers' stats).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from otel_luna._cli import status_entries
from otel_luna.outcomes import Outcome, Reason
from otel_luna.serve._health import HealthServer
from otel_luna.serve._settings import env_name
from otel_luna.settings import SettingsError
from tests.support.closedport import ClosedPort
from tests.support.servehelpers import Serve, serve_env, server_spans, stored_ids, trace_request
from tests.support.servers import InfluxDB1, unique_name
from tests.support.waiting import wait_until

HTTP_TIMEOUT = 10.0
#: Seconds for a state to show: the writer's backoff is at most 5 s, the stats follow each round.
SETTLE = 30.0
SPANS = 5


def get(serve: Serve, path: str) -> requests.Response:
    return requests.get(serve.health_url + path, timeout=HTTP_TIMEOUT)


def readiness(serve: Serve) -> tuple[int, dict[str, Any]]:
    answer = get(serve, "/readyz")
    return answer.status_code, answer.json()


def send(serve: Serve, requests_count: int = 1) -> list[str]:
    """``requests_count`` OTLP/HTTP requests of SPANS spans each, answered 200; their ids."""
    ids: list[str] = []
    for _ in range(requests_count):
        spans, sent = server_spans(SPANS)
        answer = requests.post(
            serve.http_url + "/v1/traces",
            data=trace_request(spans).SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"},
            timeout=HTTP_TIMEOUT,
        )
        assert answer.status_code == 200, answer.text
        ids += sent
    return ids


def spool_root() -> Path:
    return Path(os.environ["XDG_STATE_HOME"]) / "otel-luna" / "spool"


def scraped(serve: Serve) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """/metrics parsed by prometheus_client: samples by name, then by labels."""
    answer = get(serve, "/metrics")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples


def as_metrics(counts: dict[str, Any]) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """What /metrics should say for the counters of ``otel-luna status``."""
    points: Counter[tuple[tuple[str, str], ...]] = Counter()
    events: Counter[tuple[tuple[str, str], ...]] = Counter()
    for name, value in counts.items():
        reason = Reason.of(name)
        if reason.outcome is Outcome.EVENT:
            events[(("event", name),)] += value
        else:
            points[(("outcome", reason.outcome.value), ("reason", reason.label))] += value
    return {"otel_luna_points_total": dict(points), "otel_luna_events_total": dict(events)}


def status_counts() -> dict[str, Any]:
    """The counters ``otel-luna status`` shows, summed over the running processes."""
    total: Counter[str] = Counter()
    for entry in status_entries(str(spool_root())):
        if entry["running"]:
            total.update(entry["counts"])  # type: ignore[arg-type]
    return dict(total)


def metrics_match_status(serve: Serve) -> bool:
    metrics = scraped(serve)
    expected = as_metrics(status_counts())
    found = {name: metrics.get(name, {}) for name in expected}
    return bool(expected["otel_luna_points_total"]) and found == expected


@pytest.fixture
def closed_port(influxdb1: InfluxDB1) -> Iterator[ClosedPort]:
    port = ClosedPort(influxdb1.host, influxdb1.port)
    yield port
    port.close()


def test_health_endpoint_is_off_unless_asked_for(influxdb1: InfluxDB1) -> None:
    with Serve(serve_env(influxdb1.url, unique_name("off"))) as serve:
        assert serve.health_port is None
        assert "health" not in serve.output


@pytest.mark.parametrize("workers", [1, 2])
def test_ready_flips_while_the_destination_refuses_connections_and_back(
    influxdb1: InfluxDB1, influxdb1_database: str, closed_port: ClosedPort, workers: int
) -> None:
    """With ``--workers 2`` the supervisor answers from the stats of the worker that took the
    request."""
    env = serve_env(closed_port.url, influxdb1_database)
    with Serve(env, "--health-port", "0", "--workers", str(workers)) as serve:
        alive = get(serve, "/healthz")
        assert alive.status_code == 200 and alive.json()["status"] == "alive"
        assert readiness(serve) == (200, {"ready": True})
        ids = send(serve)
        _, body = wait_until(
            lambda: readiness(serve), lambda found: found[0] == 503, SETTLE, "not ready"
        )
        assert body["ready"] is False
        (reason,) = body["reasons"]
        assert f"cannot deliver to {closed_port.url} (database {influxdb1_database})" in reason
        assert "(connection refused)" in reason
        assert scraped(serve)["otel_luna_ready"] == {(): 0.0}
        assert get(serve, "/healthz").status_code == 200  # alive all the same
        closed_port.open()
        wait_until(lambda: readiness(serve), lambda found: found[0] == 200, SETTLE, "ready")
        assert sorted(stored_ids(influxdb1, influxdb1_database)) == sorted(ids)
        assert scraped(serve)["otel_luna_ready"] == {(): 1.0}


def test_not_ready_while_the_database_is_missing(influxdb1: InfluxDB1) -> None:
    database = unique_name("later")
    with Serve(serve_env(influxdb1.url, database), "--health-port", "0") as serve:
        ids = send(serve)
        _, body = wait_until(
            lambda: readiness(serve), lambda found: found[0] == 503, SETTLE, "not ready"
        )
        assert "(HTTP 404)" in body["reasons"][0] and "database not found" in body["reasons"][0]
        influxdb1.create_database(database)
        try:
            wait_until(lambda: readiness(serve), lambda found: found[0] == 200, SETTLE, "ready")
            assert sorted(stored_ids(influxdb1, database)) == sorted(ids)
        finally:
            influxdb1.drop_database(database)


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_parse_and_match_status(
    influxdb1: InfluxDB1, influxdb1_database: str, workers: int
) -> None:
    env = serve_env(influxdb1.url, influxdb1_database)
    with Serve(env, "--health-port", "0", "--workers", str(workers)) as serve:
        assert readiness(serve) == (200, {"ready": True})
        ids = send(serve, 6)
        wait_until(
            lambda: len(stored_ids(influxdb1, influxdb1_database)),
            lambda count: count == len(ids),
            SETTLE,
            "stored",
        )
        wait_until(lambda: metrics_match_status(serve), bool, SETTLE, "metrics == status")
        metrics = scraped(serve)
        written = metrics["otel_luna_points_total"][(("outcome", "written"), ("reason", ""))]
        assert written == len(ids)
        assert metrics["otel_luna_events_total"][(("event", "requests_traces"),)] == 6
        assert metrics["otel_luna_spool_lines"] == {(): 0.0}


class BrokenSource:
    """A source with a bug."""

    def problems(self) -> list[str]:
        raise RuntimeError("a bug")

    def counts(self) -> dict[Reason, int]:
        raise RuntimeError("a bug")

    def queued(self) -> int:
        return 0


def test_a_failing_source_is_an_answer_not_a_dropped_request() -> None:
    server = HealthServer(BrokenSource(), "127.0.0.1", 0)
    try:
        base = f"http://127.0.0.1:{server.port}"
        ready = requests.get(base + "/readyz", timeout=HTTP_TIMEOUT)
        assert ready.status_code == 503
        assert ready.json() == {"ready": False, "reasons": ["cannot tell: RuntimeError"]}
        metrics = requests.get(base + "/metrics", timeout=HTTP_TIMEOUT)
        assert (metrics.status_code, metrics.text) == (500, "cannot read the metrics: RuntimeError")
        assert requests.get(base + "/healthz", timeout=HTTP_TIMEOUT).status_code == 200
    finally:
        server.stop()


def test_a_health_port_in_use_names_the_setting() -> None:
    server = HealthServer(BrokenSource(), "127.0.0.1", 0)
    try:
        with pytest.raises(SettingsError) as raised:
            HealthServer(BrokenSource(), "127.0.0.1", server.port)
    finally:
        server.stop()
    assert raised.value.setting == env_name("serve_health_port")
    assert f"cannot listen on 127.0.0.1:{server.port}" in str(raised.value)
