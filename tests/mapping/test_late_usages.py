"""Usages of work that ends after its request was written (a background task, a thread started
from a handler) and of data that no request took (expired, evicted): never lost. Each is a
``usages_statistic`` point of its own, at the request's time (or the parked span's start);
only the rest of the ``luna.*`` data is counted as late, expired or evicted."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests as http

from otel_luna.mapping._records import SpanRecord
from otel_luna.mapping._requests import RequestMapper
from otel_luna.mapping._timestamps import MOVE_WINDOW
from otel_luna.outcomes import Reason
from otel_luna.schema import luna as schema
from otel_luna.schema._point import Point
from tests.support.servers import InfluxDB1

T0 = 1_700_000_000_000_000_007  # nanosecond resolution: spread() leaves it as it is
SERVICE = "luna-handlers"
HTTP = {"http.request.method": "POST", "http.route": "/detector", "http.response.status_code": 200}
USAGES = "luna.usages."
SECOND = 10**9


def record(
    attributes: dict[str, Any],
    *,
    server: bool = False,
    span_id: int = 2,
    parent: int | None = None,
    start_ns: int = T0,
    service: str = SERVICE,
) -> SpanRecord:
    return SpanRecord(
        attributes, server, 1, span_id, parent, start_ns, start_ns + 10**6, False, service
    )


def problems(mapper: RequestMapper) -> Counter[Reason]:
    counts = mapper.take_counts()
    counts.pop(Reason.SERVER_SPANS, None)
    return counts


def usages(points: list[Point]) -> list[Point]:
    return [point for point in points if point.measurement == schema.USAGES_STATISTIC]


def test_a_child_ending_after_its_request_writes_its_usages_at_the_requests_time() -> None:
    """A background task's span ends after the SERVER span was mapped: its usages are a point
    of their own at the request's time (a slot of its own, never the request's usages point),
    its other luna.* data counted as late; nothing waits."""
    mapper = RequestMapper()
    request_points = mapper.add(
        record({**HTTP, USAGES + "face_detector": 1}, server=True, span_id=10, start_ns=T0)
    )
    (own,) = usages(request_points)
    assert own.time_ns == T0 and own.fields == {"face_detector_usages": 1}
    late = record(
        {USAGES + "face_detector": 4, "luna.tag.kind": "bg"},
        span_id=11,
        parent=10,
        start_ns=T0 + 5 * SECOND,
    )
    (point,) = mapper.add(late)
    assert point.measurement == schema.USAGES_STATISTIC
    assert point.fields == {"face_detector_usages": 4}
    assert point.tags == (("service", SERVICE),)
    assert point.time_ns != own.time_ns and T0 < point.time_ns <= T0 + MOVE_WINDOW
    assert mapper.pending == 0
    assert problems(mapper) == {Reason.LATE_LUNA_ATTRIBUTES: 1}
    # A second late child of the same request: a time of its own again; the same one resent
    # (a retry) keeps its time.
    (second,) = mapper.add(late._replace(span_id=12))
    assert second.time_ns not in (own.time_ns, point.time_ns)
    assert mapper.add(late)[0].time_ns == point.time_ns


def test_a_request_sent_again_children_first_is_mapped_as_the_first_time() -> None:
    """A sender's retry sends a request's batch again, the child before its SERVER span: the
    child waits for the request coming later in the batch (it is not late), and the points are
    the ones of the first time — the same times, the same sums (InfluxDB overwrites them with
    themselves)."""
    mapper = RequestMapper()
    child = record({USAGES + "liveness_estimator": 2, "luna.tag.kind": "x"}, span_id=11, parent=10)
    server = record({**HTTP, USAGES + "face_detector": 1}, server=True, span_id=10)

    def batch() -> list[Point]:
        mapper.batch_span_ids = {child.span_id, server.span_id}  # as the ingest sets them
        return [point for each in (child, server) for point in mapper.add(each)]

    first, again = batch(), batch()
    assert again == first
    (point,) = usages(first)
    assert point.fields == {"face_detector_usages": 1, "liveness_estimator_usages": 2}
    assert Reason.LATE_LUNA_ATTRIBUTES not in problems(mapper)
    assert mapper.pending == 0


def test_a_late_grandchild_finds_its_request_through_an_ended_internal_span() -> None:
    """SERVER → INTERNAL (ended, mapped, no luna data) → a thread's span ending after both:
    its usages land at the request's time, through the INTERNAL span's parent link."""
    mapper = RequestMapper()
    assert mapper.add(record({}, span_id=21, parent=20)) == []  # INTERNAL, ends first
    assert mapper.add(record(HTTP, server=True, span_id=20, start_ns=T0 + 1)) != []
    (point,) = mapper.add(
        record({USAGES + "body_detector": 3}, span_id=22, parent=21, start_ns=T0 + 9 * SECOND)
    )
    assert point.fields == {"body_detector_usages": 3}
    assert T0 + 1 < point.time_ns <= T0 + 1 + MOVE_WINDOW
    assert mapper.pending == 0 and not problems(mapper)


def test_a_grandchild_ending_after_its_parent_waits_for_the_request() -> None:
    """An INTERNAL span ended (its request still running) before its child: the child's data
    waits for the request, not for the INTERNAL span that will never end again."""
    mapper = RequestMapper()
    mapper.add(record({}, span_id=31, parent=30))
    mapper.add(record({USAGES + "face_detector": 2, "luna.tag.kind": "t"}, span_id=32, parent=31))
    points = mapper.add(record(HTTP, server=True, span_id=30))
    (requests,) = [point for point in points if point.measurement == schema.REQUESTS]
    assert ("kind", "t") in requests.tags
    assert usages(points)[0].fields == {"face_detector_usages": 2}
    assert mapper.pending == 0 and not problems(mapper)


def test_expired_data_writes_its_usages_at_the_parked_spans_start() -> None:
    """Data whose parent never ends (lost, or in a process that is gone) expires: its usages
    are written as a point of their own at the parked span's start, with its service; only
    the rest is counted expired."""
    mapper = RequestMapper(pending_ttl_ns=10 * SECOND)
    mapper.arrived_ns = 0
    assert (
        mapper.add(
            record(
                {USAGES + "face_detector": 2, "luna.tag.kind": "x"},
                span_id=41,
                parent=40,
                start_ns=T0 + 4,
                service="other",
            )
        )
        == []
    )
    assert mapper.add(record({USAGES + "face_detector": 5}, span_id=43, parent=42)) == []
    mapper.arrived_ns = 11 * SECOND  # the next parked span expires both
    points = mapper.add(record({"luna.tag.kind": "y"}, span_id=45, parent=44))
    assert sorted((p.tags, p.time_ns, p.fields) for p in points) == [
        ((("service", "luna-handlers"),), T0, {"face_detector_usages": 5}),
        ((("service", "other"),), T0 + 4, {"face_detector_usages": 2}),
    ]
    assert problems(mapper) == {Reason.EXPIRED_LUNA_ATTRIBUTES: 1}
    assert mapper.pending == 1


def test_evicted_data_writes_its_usages() -> None:
    """Past the bound of waiting spans, the oldest's usages are written, the rest counted."""
    mapper = RequestMapper(pending_limit=1)
    mapper.add(record({USAGES + "face_detector": 1, "luna.tag.n": "1"}, span_id=51, parent=50))
    (point,) = mapper.add(record({USAGES + "face_detector": 7}, span_id=53, parent=52))
    assert point.fields == {"face_detector_usages": 1} and point.time_ns == T0
    assert problems(mapper) == {Reason.EVICTED_LUNA_ATTRIBUTES: 1}
    (point,) = mapper.add(record({"luna.tag.n": "1"}, span_id=55, parent=54))
    assert point.fields == {"face_detector_usages": 7}
    assert not problems(mapper)  # usages only: nothing lost


def test_the_ended_spans_memory_is_bounded() -> None:
    """The memory of ended spans keeps between half and all of ``ended_limit`` spans: a span
    ending after more than that many others lost its request, and waits (then expires with its
    usages written)."""
    mapper = RequestMapper(ended_limit=100)
    mapper.add(record(HTTP, server=True, span_id=1))
    for span_id in range(1000, 1100):
        mapper.add(record({}, span_id=span_id, parent=1))
    assert len(mapper._ended) + len(mapper._ended_before) <= 100
    assert mapper.add(record({USAGES + "face_detector": 1}, span_id=7, parent=1)) == []
    assert mapper.pending == 1


@pytest.mark.slow
def test_fastapi_background_work_writes_exact_sums(
    influxdb1: InfluxDB1, influxdb1_database: str, tmp_path: Path
) -> None:
    """A FastAPI app under ``opentelemetry-instrument`` with only ``OTEL_TRACES_EXPORTER=luna``
    whose requests count estimations in a ``BackgroundTasks`` task and in a thread started with
    the request's context, each in a span ending after the response: every usage is written
    (the sums are exact), the request's own at its time, the later ones as points of their own
    next to it; nothing counted lost."""
    from tests.e2e.test_deployments import UVICORN_RUNNING, started, uvicorn_argv
    from tests.mapping.test_usages_per_request import traces_only_env

    env = traces_only_env(influxdb1, influxdb1_database, tmp_path)
    argv = uvicorn_argv("usages_background_app:app")
    answers: list[dict[str, Any]] = []
    with started(argv, env) as app:
        (url,) = app.wait_for(UVICORN_RUNNING)
        with http.Session() as session:
            for index in range(60):
                response = session.post(
                    f"{url}/job", params={"faces": index % 4, "id": f"b{index}"}, timeout=30
                )
                assert response.status_code == 200, response.text
                answers.append(response.json())
        app.signal(15)
        assert app.wait() == -15, app.output
    assert "otel-luna" not in app.output, app.output
    requests = {
        row["request_id"]: row
        for row in influxdb1.select("SELECT * FROM requests", influxdb1_database)
    }
    assert len(requests) == 60
    points = influxdb1.select("SELECT * FROM usages_statistic", influxdb1_database)
    assert len({point["time"] for point in points}) == len(points)
    by_time = {point["time"]: point for point in points}
    totals: Counter[str] = Counter()
    for answer in answers:
        time_ns = requests[answer["id"]]["time"]
        assert by_time[time_ns]["face_detector_usages"] == 1
        totals.update(answer["usages"])
        totals.update(answer["later"])
        for name, count in answer["later"].items():  # a point of its own, next to the request
            assert any(
                point[f"{name}_usages"] == count
                and abs(point["time"] - time_ns) <= 2 * MOVE_WINDOW
                and point["time"] != time_ns
                for point in points
            ), (answer, name)
    assert len(points) == 60 + 2 * sum(1 for answer in answers if answer["later"])
    columns = ", ".join(f'sum("{name}_usages") AS "{name}"' for name in totals)
    (row,) = influxdb1.select(f"SELECT {columns} FROM usages_statistic", influxdb1_database)
    assert {name: row[name] for name in totals} == dict(totals)


def test_a_too_long_estimator_is_dropped_alone() -> None:
    """An estimator whose field key would be too long to write is dropped alone, counted
    (``attribute_invalid_estimator``): the request's other estimators are written, and the
    point encodes; through the counter it is an ``invalid_estimator`` sample, alone too."""
    from otel_luna.encoding._lineprotocol import LineProtocolEncoder
    from otel_luna.mapping._records import UsageSample
    from otel_luna.mapping._usages import MAX_ESTIMATOR_LENGTH, UsageMapper

    longest, too_long = "e" * MAX_ESTIMATOR_LENGTH, "e" * (MAX_ESTIMATOR_LENGTH + 1)
    mapper = RequestMapper()
    points = mapper.add(
        record(
            {**HTTP, USAGES + "face_detector": 2, USAGES + too_long: 1, USAGES + longest: 3},
            server=True,
        )
    )
    (point,) = usages(points)
    assert point.fields == {"face_detector_usages": 2, longest + "_usages": 3}
    assert problems(mapper) == {Reason.ATTRIBUTE_INVALID_ESTIMATOR: 1}
    encoder = LineProtocolEncoder()
    assert all(encoder.encode_point(p) for p in points) and not encoder.take_counts()
    counter = UsageMapper()
    samples = [UsageSample(SERVICE, name, 0, T0, 1, False) for name in ("face_detector", too_long)]
    (point,) = counter.points(samples)
    assert point.fields == {"face_detector_usages": 1}
    assert counter.take_counts() == {Reason.INVALID_ESTIMATOR: 1}


def test_a_profiles_mappers_never_give_two_usages_points_one_time() -> None:
    """The span and usage mappers of a profile claim their times from one ``SeriesTimes``: a
    counter point of a service at the very nanosecond of a request's usages point moves, so
    neither overwrites the other in InfluxDB."""
    from otel_luna.mapping._records import UsageSample
    from otel_luna.profiles import LUNA
    from otel_luna.settings import Settings

    span_mapper, usage_mapper = LUNA.mappers(Settings.load({}))
    assert usage_mapper is not None
    (request_usages,) = usages(
        span_mapper.add(record({**HTTP, USAGES + "face_detector": 2}, server=True))
    )
    sample = UsageSample(SERVICE, "face_detector", 0, request_usages.time_ns, 1, False)
    (counted,) = usage_mapper.points([sample])
    assert counted.tags == request_usages.tags
    assert counted.time_ns != request_usages.time_ns
