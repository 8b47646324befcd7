"""examples/watchdog_service.py under opentelemetry-instrument, delivering its pings to a local
receiver with Ping Centre's contract (tests/support/pingcentre_stub.py): documented keys and
JSON types, a raising worker still reported, and every ping delivered after a 20 s Ping Centre
outage."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.exporter.test_watchdog import DOCUMENTED
from tests.support.apprunner import instrumented_app
from tests.support.pingcentre_stub import PingCentre
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow  # runs the example service under opentelemetry-instrument

SERVICE = Path(__file__).resolve().parent.parent.parent / "examples" / "watchdog_service.py"
#: Seconds Ping Centre answers 503 while the service keeps working.
OUTAGE_SECONDS = 20.0
#: Seconds allowed for the pings to arrive once Ping Centre is back (the delivery backoff
#: grows to 30 s while it is down).
DELIVERY_DEADLINE = 90.0
CONSUMERS = ("screenshots", "send", "notes")
IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def service_env(endpoint: str) -> dict[str, str]:
    return {
        "OTEL_TRACES_EXPORTER": "luna",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_SERVICE_NAME": "watchdog-proxy",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_EXPORTER_LUNA_SCHEMA": "watchdog",
        "OTEL_EXPORTER_LUNA_SINK": "pingcentre",
        "OTEL_EXPORTER_LUNA_ENDPOINT": endpoint,
        "OTEL_EXPORTER_LUNA_FLUSH_INTERVAL": "0.05",
    }


def service_args(*, error_rate: float, seed: int, heartbeat: float = 0.25) -> list[str]:
    return [
        "--port",
        "0",
        "--workers",
        "3",
        "--heartbeat-interval",
        str(heartbeat),
        "--match-rate",
        "0.3",
        "--error-rate",
        str(error_rate),
        "--latency-ms",
        "1,5",
        "--seed",
        str(seed),
    ]


def submit(base_url: str, count: int, start: int = 0) -> list[str]:
    """POST ``count`` images, round-robin over the consumers; the watchdog ids answered."""
    ids = []
    with requests.Session() as session:
        for number in range(start, start + count):
            response = session.post(
                f"{base_url}/accept",
                data={"consumer_name": CONSUMERS[number % len(CONSUMERS)]},
                files={"image": (f"shot{number}.png", IMAGE, "image/png")},
                timeout=10,
            )
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
    return ids


def status(base_url: str) -> dict[str, int]:
    response = requests.get(f"{base_url}/status", timeout=10)
    response.raise_for_status()
    result: dict[str, int] = response.json()
    return result


def wait_for(what: str, condition: Callable[[], bool], timeout: float) -> None:
    wait_until(condition, timeout=timeout, what=what)


def by_event(pings: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {name: [] for name in DOCUMENTED}
    for ping in pings:
        grouped.setdefault(str(ping.get("event")), []).append(ping)
    return grouped


def assert_documented(ping: Mapping[str, Any]) -> None:
    event = ping["event"]
    assert set(ping) == set(DOCUMENTED[event]), ping
    assert ping["topic"] == "watchdog-proxy"
    for key, kind in DOCUMENTED[event].items():
        if ping[key] is not None:
            assert type(ping[key]) is kind, (event, key, ping[key])


@pytest.fixture
def ping_centre() -> Iterator[PingCentre]:
    stub = PingCentre()
    yield stub
    stub.stop()


def test_service_pings_have_the_documented_keys_and_types(ping_centre: PingCentre) -> None:
    """Pings have the documented keys and JSON types; a raising worker still sends is_error."""
    items = 45
    with instrumented_app(
        SERVICE, service_env(ping_centre.url), *service_args(error_rate=0.3, seed=7)
    ) as url:
        submitted = submit(url, items)
        wait_for("the items to be processed", lambda: status(url)["processed"] == items, 60)
        final = status(url)

        def delivered() -> bool:
            pings = by_event(list(ping_centre.pings))
            return len(pings["worker_works"]) == items and len(pings["poller_heartbeat"]) >= 2

        wait_for("the pings", delivered, 30)
    pings = by_event(list(ping_centre.pings))
    assert set(pings) == set(DOCUMENTED)
    for event_pings in pings.values():
        for ping in event_pings:
            assert_documented(ping)
            assert abs(ping["timestamp"] - time.time() * 1000) < 600_000

    assert sorted(ping["watchdog_id"] for ping in pings["new_item"]) == sorted(submitted)
    for ping in pings["new_item"]:
        assert ping["type"] == "image/png" and ping["consumer_name"] in CONSUMERS
    works = pings["worker_works"]
    assert sorted(ping["watchdog_id"] for ping in works) == sorted(submitted)
    assert len({ping["worker_id"] for ping in works}) == items

    failed = [ping for ping in works if ping["is_error"]]
    assert final["errors"] >= 1 and len(failed) == final["errors"]
    for ping in failed:  # PhotoDNA raised while we waited for its answer
        assert ping["is_match"] is None
        assert isinstance(ping["photodna_tracking_id"], str)
        assert isinstance(ping["timing_sent"], int) and isinstance(ping["timing_received"], int)
        assert ping["timing_submitted"] is None
    good = [ping for ping in works if not ping["is_error"]]
    assert sum(ping["is_match"] for ping in good) == final["matches"]
    for ping in good:
        assert all(type(ping[key]) is int for key in DOCUMENTED["worker_works"] if "timing" in key)
        assert type(ping["is_match"]) is bool

    beats = pings["poller_heartbeat"]
    assert len({ping["poller_id"] for ping in beats}) == 1
    for ping in beats:
        assert min(ping[key] for key in DOCUMENTED["poller_heartbeat"] if "items" in key) >= 0


def test_pings_sent_while_stopping_reach_ping_centre(ping_centre: PingCentre) -> None:
    """The heartbeat the service sends as it stops (SIGTERM) reaches Ping Centre before exit."""
    with instrumented_app(
        SERVICE, service_env(ping_centre.url), *service_args(error_rate=0, seed=3, heartbeat=3600)
    ) as url:
        submit(url, 3)
        wait_for(
            "the start heartbeat",
            lambda: len(by_event(list(ping_centre.pings))["poller_heartbeat"]) == 1,
            30,
        )
    beats = by_event(list(ping_centre.pings))["poller_heartbeat"]
    assert len(beats) == 2, "one when the poller starts, one when it stops"


def test_every_ping_is_delivered_after_a_ping_centre_outage(ping_centre: PingCentre) -> None:
    """After a 20 s Ping Centre outage every ping arrives once: the submitted ids, one work each."""
    ping_centre.down = True
    down_since = time.monotonic()
    with instrumented_app(
        SERVICE, service_env(ping_centre.url), *service_args(error_rate=0.1, seed=11)
    ) as url:
        submitted = submit(url, 25)
        wait_for("the first items", lambda: status(url)["processed"] == 25, 60)
        wait_for("delivery attempts", lambda: ping_centre.requests > 0, 30)
        wait_for("half the outage", lambda: time.monotonic() - down_since >= OUTAGE_SECONDS / 2, 60)
        submitted += submit(url, 25, start=25)  # the service keeps working meanwhile
        wait_for("the second items", lambda: status(url)["processed"] == 50, 60)
        wait_for("the outage", lambda: time.monotonic() - down_since >= OUTAGE_SECONDS, 60)
        assert ping_centre.pings == []  # nothing got through while it was down
        ping_centre.down = False
        back_at = time.monotonic()

        def all_delivered() -> bool:
            pings = by_event(list(ping_centre.pings))
            return len(pings["new_item"]) >= 50 and len(pings["worker_works"]) >= 50

        wait_for("every ping after the outage", all_delivered, DELIVERY_DEADLINE)
        delivered_after = time.monotonic() - back_at
    pings = by_event(list(ping_centre.pings))
    assert sorted(ping["watchdog_id"] for ping in pings["new_item"]) == sorted(submitted)
    per_item = Counter(ping["watchdog_id"] for ping in pings["worker_works"])
    assert per_item == Counter(submitted), "one worker_works per item"
    for event_pings in pings.values():
        for ping in event_pings:
            assert_documented(ping)
    assert pings["poller_heartbeat"], "heartbeats spooled during the outage arrive too"
    assert delivered_after < DELIVERY_DEADLINE
