"""Cumulative ``luna.usages`` streams told apart by their full identity: a second sender, a
reset, a restart, a retry or a forgotten stream never inflates ``usages_statistic``; the state
kept per stream is bounded; the in-app warning when no luna metrics exporter runs."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common._internal.metrics_encoder import encode_metrics
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource

from otel_luna import _exporter as exporter
from otel_luna import _helpers
from otel_luna._exporter import LunaMetricExporter, LunaSpanExporter
from otel_luna.mapping._records import UsageSample
from otel_luna.mapping._usages import CumulativeToDelta, UsageMapper
from otel_luna.outcomes import Reason
from otel_luna.profiles import profile_of
from otel_luna.serve import ServeSettings
from otel_luna.serve import _otlp as otlp
from otel_luna.serve._receiver import Receiver
from otel_luna.testing import InMemorySink
from tests.settings.test_settings_errors import run_instrumented
from tests.support.servehelpers import METRICS_EXPORT, Serve, grpc_call, serve_env
from tests.support.servers import InfluxDB1

T0 = 1_700_000_000_000_000_000
SERVICE = "luna-handlers"
ESTIMATOR = "face_detector"


def written(mapper: UsageMapper, samples: list[UsageSample]) -> int:
    """The ``face_detector_usages`` of the points ``samples`` make."""
    return sum(int(p.fields.get(ESTIMATOR + "_usages", 0)) for p in mapper.points(samples))


# -- a second sender ----------------------------------------------------------------------------


def test_a_second_sender_with_another_start_time_does_not_inflate_usages() -> None:
    """Two senders of one service and estimator, cumulative, with different start times (two
    replicas whose resources differ only by when they started): each writes its own uses."""
    mapper = UsageMapper(CumulativeToDelta(created_ns=T0))
    total = 0
    for interval in range(1, 4):
        time_ns = T0 + interval * 60 * 10**9
        a = UsageSample(SERVICE, ESTIMATOR, T0 + 1, time_ns, 10 * interval, True)
        b = UsageSample(SERVICE, ESTIMATOR, T0 + 2, time_ns + 1, 1000, True)
        total += written(mapper, [a]) + written(mapper, [b])
    assert total == 30 + 1000


def test_the_otlp_identity_tells_senders_and_scopes_apart() -> None:
    """Resource attributes, scope and point attributes each make a stream of its own; the same
    ones make the same stream whatever their order."""

    def request(resource: dict[str, str], scope: str, attributes: dict[str, str]) -> UsageSample:
        message = otlp.ExportMetricsServiceRequest()
        resource_metrics = message.resource_metrics.add()
        for key, value in resource.items():
            resource_metrics.resource.attributes.add(key=key).value.string_value = value
        scope_metrics = resource_metrics.scope_metrics.add()
        scope_metrics.scope.name = scope
        metric = scope_metrics.metrics.add(name="luna.usages")
        metric.sum.aggregation_temporality = (
            AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
        )
        point = metric.sum.data_points.add(start_time_unix_nano=T0, time_unix_nano=T0 + 9)
        point.as_int = 1
        for key, value in {"luna.estimator": ESTIMATOR, **attributes}.items():
            point.attributes.add(key=key).value.string_value = value
        (sample,) = otlp.usage_samples(message)
        return sample

    base = request({"service.name": SERVICE, "host.name": "a"}, "s", {})
    assert base.stream != 0
    same = request({"host.name": "a", "service.name": SERVICE}, "s", {})
    assert same.stream == base.stream
    others = [
        request({"service.name": SERVICE, "host.name": "b"}, "s", {}),
        request({"service.name": SERVICE, "host.name": "a"}, "t", {}),
        request({"service.name": SERVICE, "host.name": "a"}, "s", {"tenant": "x"}),
    ]
    assert len({base.stream, *(sample.stream for sample in others)}) == 4


# -- the property ---------------------------------------------------------------------------------


@dataclass
class Sender:
    """One sender's cumulative counter, and what it truly reported."""

    number: int
    start_ns: int
    before_us: bool  # started before the converter: its first point is a baseline
    unknown_start: bool = False  # sends start time 0
    skew_ns: int = 0  # how far its clock runs ahead of ours
    value: int = 0
    exported: list[UsageSample] = field(default_factory=list)
    #: Per run of the counter, per segment between resets: [first exported, last exported].
    segments: list[list[int]] = field(default_factory=list)
    new_run: bool = True
    new_segment: bool = True
    #: The values it exported first after a reset or a restart of either end.
    first_seen: int = 0
    new_sight: bool = True

    def sample(self, time_ns: int) -> UsageSample:
        start_ns = 0 if self.unknown_start else self.start_ns + self.skew_ns
        return UsageSample(
            SERVICE,
            ESTIMATOR,
            start_ns,
            time_ns + self.skew_ns,
            self.value,
            True,
            stream=self.number,
        )

    def true_uses(self) -> int:
        return sum(last - first for first, last in self.segments)


SENDERS = 3
EVENTS = st.lists(
    st.tuples(
        st.sampled_from(
            ["use", "use", "export", "export", "restart", "reset", "retry", "late", "serve"]
        ),
        st.integers(0, SENDERS - 1),  # which sender
        st.integers(1, 40),  # how many uses
    ),
    min_size=10,
    max_size=100,
)
#: How far a sender's clock runs ahead of ours (negative: behind), in ns; a step is 1 µs.
SKEWS = st.sampled_from([0, 0, 5_000, -5_000, 10**12, -(10**12)])
#: ``max_time_ahead``: points dated later are refused (``time_too_far_ahead``), not written.
MAX_AHEAD = 10**9


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(  # a late retry of a stream that was evicted: no baseline from it
    events=[
        ("use", 0, 5),
        ("export", 0, 0),
        ("use", 0, 5),
        ("export", 0, 0),
        ("export", 1, 0),
        ("late", 0, 0),
        ("use", 0, 5),
        ("export", 0, 0),
    ],
    distinct=[True] * SENDERS,
    before_us=[False] * SENDERS,
    unknown_start=[False] * SENDERS,
    skews=[0] * SENDERS,
    limit=1,
)
@example(  # one sender without start time restarting again and again (second review)
    events=[("use", 0, 400), ("export", 0, 0), ("use", 0, 600), ("export", 0, 0)]
    + [("restart", 0, 0), ("use", 0, 10), ("export", 0, 0), ("use", 0, 1000), ("export", 0, 0)] * 4,
    distinct=[True] * SENDERS,
    before_us=[True] * SENDERS,
    unknown_start=[True] * SENDERS,
    skews=[0] * SENDERS,
    limit=1000,
)
@example(  # a sender's clock runs ahead across a restart of serve: not counted in full twice
    events=[("use", 0, 7), ("export", 0, 0), ("serve", 0, 0), ("use", 0, 1), ("export", 0, 0)],
    distinct=[True] * SENDERS,
    before_us=[False] * SENDERS,
    unknown_start=[False] * SENDERS,
    skews=[10**12] * SENDERS,
    limit=1000,
)
@given(
    events=EVENTS,
    distinct=st.lists(st.booleans(), min_size=SENDERS, max_size=SENDERS),
    before_us=st.lists(st.booleans(), min_size=SENDERS, max_size=SENDERS),
    unknown_start=st.lists(st.booleans(), min_size=SENDERS, max_size=SENDERS),
    skews=st.lists(SKEWS, min_size=SENDERS, max_size=SENDERS),
    limit=st.sampled_from([1, 2, 3, 1000]),
)
@pytest.mark.slow  # seconds of CPU
def test_interleaved_senders_resets_and_restarts_add_up(
    events: list[tuple[str, int, int]],
    distinct: list[bool],
    before_us: list[bool],
    unknown_start: list[bool],
    skews: list[int],
    limit: int,
) -> None:
    """Three senders of one service and estimator (some alike but for the start time, some
    with start time 0, some with a clock ahead of or behind serve's), in any interleaving of
    uses, exports, restarts (new start time), resets (lower value), retries of the last export,
    late retries of an older one and restarts of serve: the written sum never exceeds the uses
    the senders reported — but where senders alike in everything send start time 0 (the
    single-writer rule broken): their values add up, a documented limit
    (``test_two_senders_alike_with_start_time_0_are_reported``). With start times, clocks that
    agree, one serve and room for every stream it equals them."""
    now = [T0]

    def converter(created_ns: int) -> CumulativeToDelta:
        return CumulativeToDelta(
            created_ns,
            limit=limit,
            clock=lambda: now[0],
            max_ahead_ns=MAX_AHEAD,
        )

    def written_in_time(sample: UsageSample) -> int:
        """What ``sample`` writes, but for points dated past ``max_time_ahead`` (refused)."""
        points = mapper.points([sample])
        return sum(
            int(p.fields.get(ESTIMATOR + "_usages", 0))
            for p in points
            if p.time_ns <= now[0] + MAX_AHEAD
        )

    mapper = UsageMapper(converter(T0 - 10**6))  # serve has run for a while
    senders = [
        # alike senders share an identity (number 0) and differ only by start time
        Sender(
            number if distinct[number] else 0,
            T0 + (-(10**7) if before else 1) * (number + 1),
            before or unknown,
            unknown,
            skew,
        )
        for number, (before, unknown, skew) in enumerate(
            zip(before_us, unknown_start, skews, strict=True)
        )
    ]
    total = 0
    restarted = False
    for kind, which, uses in events:
        now[0] += 1000
        sender = senders[which]
        if kind == "use":
            sender.value += uses
            continue
        if kind == "serve":  # serve restarts: all it knew is gone
            restarted = True
            mapper = UsageMapper(converter(now[0]))
            for each in senders:
                each.new_sight = True
            continue
        if kind == "restart":  # a new start time; without start times, a reset
            sender.start_ns, sender.value = now[0] - 1, 0
            sender.before_us = sender.unknown_start
            sender.new_run = not sender.unknown_start
            sender.new_segment = True
            continue
        if kind in ("retry", "late"):
            if sender.exported:
                again = sender.exported[-1] if kind == "retry" else sender.exported[0]
                total += written_in_time(again)
            continue
        if kind == "reset":  # the counter starts over: its next export is lower, at once
            sender.value = 0
            sender.new_segment = True
        sample = sender.sample(now[0])
        if sender.new_segment or sender.new_sight:
            sender.first_seen += sender.value
            sender.new_sight = False
        if sender.new_run:
            sender.exported = []
        sender.exported.append(sample)
        if sender.new_segment:
            first = 0 if sender.segments and not sender.new_run else sender.value
            if sender.new_run and not sender.before_us:
                first = 0  # a run we saw start counts from its start
            sender.segments.append([first, sender.value])
        else:
            sender.segments[-1][1] = sender.value
        sender.new_run = sender.new_segment = False
        total += written_in_time(sample)
    truth = sum(sender.true_uses() for sender in senders)
    unknown = [sender.number for sender in senders if sender.unknown_start]
    alike_unknown = [sender for sender in senders if unknown.count(sender.number) > 1]
    if alike_unknown:  # nothing tells their values from one sender's resets and growth
        return
    assert total <= truth
    in_time = all(0 <= skew <= MAX_AHEAD for skew in skews)
    exact = in_time and not (restarted or any(unknown_start))
    if exact and not mapper.counts["usage_stream_evicted"]:
        assert total == truth


def test_a_sender_without_start_time_restarting_again_and_again_loses_nothing() -> None:
    """The second review's case: one sender with start time 0 sends 0, 400, 800, 1000, then
    restarts four times (10, 400, 800, 1010). Each lower value is a reset, counted from zero:
    5,040 written, the uses it reported (the first round's rule wrote 2,190 and called it two
    senders). Resets this close together are reported as a possible overlap, once."""
    mapper = UsageMapper(CumulativeToDelta(created_ns=T0))
    values = [0, 400, 800, 1000] + [10, 400, 800, 1010] * 4
    total = 0
    for number, value in enumerate(values, 1):
        time_ns = T0 + number * 60 * 10**9
        total += written(mapper, [UsageSample(SERVICE, ESTIMATOR, 0, time_ns, value, True, 1)])
    assert total == 1000 + 4 * 1010
    assert mapper.take_new_overlaps() == [(SERVICE, ESTIMATOR)]
    assert mapper.take_new_overlaps() == []


def test_two_senders_alike_with_start_time_0_are_reported() -> None:
    """The first review's case: two senders alike in resource, scope and attributes, both with
    start time 0, interleaved (A: 30, 31, 32; B: 1000, 1001, 1002). Nothing tells B's values
    from A's growth, nor A's from a reset of one sender: their values add up (2,973 for 4 uses;
    a rule on values alone that avoids it loses a restarting sender's uses, as the first fix
    did). They are counted as ``usage_stream_overlap`` and reported once, so that the operator
    sets start times or a distinct ``service.instance.id``."""
    mapper = UsageMapper(CumulativeToDelta(created_ns=T0))
    total = 0
    for interval in range(1, 4):
        time_ns = T0 + interval * 60 * 10**9
        a = UsageSample(SERVICE, ESTIMATOR, 0, time_ns, 29 + interval, True, stream=1)
        b = UsageSample(SERVICE, ESTIMATOR, 0, time_ns + 10**9, 999 + interval, True, stream=1)
        total += written(mapper, [a]) + written(mapper, [b])
    assert total == 970 + 31 + 970 + 32 + 970  # the documented limit: A's first is a baseline
    assert mapper.counts[Reason.USAGE_STREAM_OVERLAP] == 1
    assert mapper.take_new_overlaps() == [(SERVICE, ESTIMATOR)]
    assert mapper.take_new_overlaps() == []


def test_a_sender_clock_ahead_does_not_count_a_stream_in_full_twice() -> None:
    """A sender whose clock runs 200 s ahead of serve's: its stream started (on its clock)
    after serve restarted, yet serve's previous run counted it in full. Its next point, to the
    new run, is a baseline: the stream's age on its own clock says it began before the new run
    did."""
    second = 10**9
    ahead = 200 * second
    old_run = UsageMapper(CumulativeToDelta(T0 - 3600 * second, clock=lambda: T0 + 60 * second))
    # started at T0 (T0 + 200 s on its clock), exported at T0 + 60 s
    first = UsageSample(SERVICE, ESTIMATOR, T0 + ahead, T0 + 60 * second + ahead, 10, True)
    assert written(old_run, [first]) == 10
    restarted = T0 + 90 * second  # before the stream's start on the sender's clock
    new_run = UsageMapper(CumulativeToDelta(restarted, clock=lambda: T0 + 120 * second))
    after = first._replace(time_ns=T0 + 120 * second + ahead, value=12)
    assert written(new_run, [after]) == 0
    assert new_run.counts == {Reason.USAGE_BASELINE: 1}
    assert written(new_run, [after._replace(time_ns=after.time_ns + 1, value=15)]) == 3


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (2.5, Reason.FRACTIONAL_USAGE),
        (0.25, Reason.FRACTIONAL_USAGE),
        (float("nan"), Reason.NONFINITE_USAGE),
        (float("inf"), Reason.NONFINITE_USAGE),
        (-3, Reason.NEGATIVE_USAGE),
        (-3.0, Reason.NEGATIVE_USAGE),
    ],
)
@pytest.mark.parametrize("cumulative", [False, True])
def test_a_usage_that_is_not_a_whole_number_is_dropped_and_counted(
    value: float, reason: Reason, cumulative: bool
) -> None:
    """A delta or cumulative value of 2.5 uses (NaN, infinite, negative) is dropped and counted
    by its reason — never rounded; 3.0 is three uses."""
    mapper = UsageMapper(CumulativeToDelta(created_ns=T0, clock=lambda: T0 + 10**12))
    sample = UsageSample(SERVICE, ESTIMATOR, T0 + 1, T0 + 10, value, cumulative)
    assert written(mapper, [sample]) == 0
    assert mapper.counts == {reason: 1}
    whole = sample._replace(value=3.0, time_ns=T0 + 20)
    assert written(mapper, [whole]) == 3


def usages_request(service: str, points: list[tuple[int, int, float]]) -> Any:
    """An OTLP request of cumulative ``luna.usages`` points (start, time, value) of one stream;
    a float value is sent as ``as_double``."""
    request = otlp.ExportMetricsServiceRequest()
    resource_metrics = request.resource_metrics.add()
    resource_metrics.resource.attributes.add(key="service.name").value.string_value = service
    metric = resource_metrics.scope_metrics.add().metrics.add(name="luna.usages")
    metric.sum.aggregation_temporality = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
    metric.sum.is_monotonic = True
    for start_ns, time_ns, value in points:
        point = metric.sum.data_points.add(start_time_unix_nano=start_ns, time_unix_nano=time_ns)
        if isinstance(value, float):
            point.as_double = value
        else:
            point.as_int = value
        point.attributes.add(key="luna.estimator").value.string_value = ESTIMATOR
    return request


def test_serve_warns_once_of_senders_alike_and_drops_fractional_usages(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Through serve's receiver: the review's two senders alike with start time 0 get one
    short warning line naming the service (its first 100 characters) and the metric; a value of
    2.5 uses is rejected and named in the partial success (``fractional_usage``), not written as
    2."""
    sink = InMemorySink()
    receiver = Receiver(ServeSettings.load({}, spool="memory", flush_interval=30), sink=sink)
    try:
        now = time.time_ns()
        with caplog.at_level(logging.WARNING, logger="otel_luna"):
            for interval in range(1, 4):
                at = now + interval * 10**9
                for time_ns, value in ((at, 29 + interval), (at + 1000, 999 + interval)):
                    request = usages_request("alike" + "x" * 5000, [(0, time_ns, value)])
                    assert receiver.accept_metrics(request)[0] == 0
        rejected, message, _ = receiver.accept_metrics(
            usages_request("halves", [(now, now + 10**9, 2.5)])
        )
        assert rejected == 1 and "fractional_usage=1" in message
        assert receiver.ingest.force_flush(10)
    finally:
        receiver.shutdown()
    assert not any("service=halves" in line for line in sink.lines)
    warnings = [r.getMessage() for r in caplog.records if "usage_stream_overlap" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0], caplog.text
    assert "'alike" in warnings[0] and "luna.usages" in warnings[0] and len(warnings[0]) < 600
    assert "service.instance.id" in warnings[0]


# -- bounded state --------------------------------------------------------------------------------


def test_streams_past_the_limit_evict_the_least_recently_seen_and_say_so() -> None:
    """Past ``limit`` streams the least recently seen is forgotten (counted); when it comes
    back its value is a baseline, not counted again."""
    converter = CumulativeToDelta(created_ns=T0, limit=2, clock=lambda: T0 + 10**6)
    mapper = UsageMapper(converter)
    first = [UsageSample(SERVICE, ESTIMATOR, T0 + 1, T0 + 10, 5, True, stream=n) for n in range(3)]
    assert written(mapper, first) == 15
    assert len(converter) == 2
    assert mapper.counts[Reason.USAGE_STREAM_EVICTED] == 1
    back = UsageSample(SERVICE, ESTIMATOR, T0 + 1, T0 + 20, 7, True, stream=0)
    late = UsageSample(SERVICE, ESTIMATOR, T0 + 1, T0 + 5, 2, True, stream=0)
    assert written(mapper, [late]) == 0  # older than the forgotten point: no baseline
    assert written(mapper, [back]) == 0  # the forgotten stream: a baseline
    assert written(mapper, [back._replace(time_ns=T0 + 30, value=9)]) == 2
    assert mapper.counts[Reason.USAGE_BASELINE] == 1
    assert mapper.counts[Reason.OUT_OF_ORDER_USAGE] == 1


def test_streams_not_seen_for_a_while_expire() -> None:
    """A stream not seen for ``stale_ns`` is forgotten at the next mapping (counted); the others
    stay."""
    now = [T0]
    converter = CumulativeToDelta(created_ns=T0, stale_ns=100, clock=lambda: now[0])
    mapper = UsageMapper(converter)
    gone = UsageSample(SERVICE, ESTIMATOR, T0 + 1, T0 + 10, 5, True, stream=1)
    alive = gone._replace(stream=2)
    written(mapper, [gone, alive])
    now[0] += 60
    written(mapper, [alive._replace(time_ns=T0 + 70, value=6)])
    now[0] += 60
    assert written(mapper, []) == 0
    assert len(converter) == 1
    assert mapper.counts[Reason.USAGE_STREAM_EXPIRED] == 1
    assert written(mapper, [gone._replace(time_ns=T0 + 200, value=8)]) == 0  # a baseline


def test_with_several_serve_workers_a_first_point_is_a_baseline() -> None:
    """``serve --workers N``: a client's connection may move to a worker that never saw its
    stream, so there a stream's first cumulative point is a baseline (one worker: a stream that
    started after serve did counts in full)."""
    for workers, first in ((1, 10), (2, 0)):
        settings = ServeSettings.load({}, serve_workers=workers)
        profile = profile_of(settings)
        _, mapper = profile.mappers(settings)
        assert mapper is not None
        start = time.time_ns()
        sample = UsageSample(SERVICE, ESTIMATOR, start, start + 1, 10, True, stream=1)
        assert written(mapper, [sample]) == first
        assert written(mapper, [sample._replace(time_ns=start + 2, value=25)]) == 15


def test_record_usages_keeps_a_bounded_map_of_estimators(monkeypatch: pytest.MonkeyPatch) -> None:
    """An app passing ever new estimator names does not grow record_usages' ready map past its
    bound; every name is still counted."""
    added: list[str] = []

    class Recording:
        def add(self, amount: int, attributes: dict[str, str]) -> None:
            added.append(attributes["luna.estimator"])

    monkeypatch.setattr(_helpers, "_counter", Recording())
    monkeypatch.setattr(_helpers, "_estimators", {})
    names = [f"estimator_{number}" for number in range(_helpers._ESTIMATORS_LIMIT * 4)]
    for name in names:
        _helpers.record_usages(**{name: 1})  # outside a request: on the counter
    assert added == names
    assert len(_helpers._estimators) == _helpers._ESTIMATORS_LIMIT


# -- end to end: serve and a real InfluxDB 1.x ----------------------------------------------------


def test_two_senders_through_serve_store_their_true_counts(
    influxdb1: InfluxDB1, influxdb1_database: str
) -> None:
    """The issue's case through ``otel-luna serve`` into InfluxDB 1.x: two SDK senders of one
    service and estimator (alike but for their start times) send cumulative ``luna.usages``
    in turn. The first counts 10 per interval (30), the second 1000 once: 1030 are stored —
    not 3,060, as when a changed start time read as the first sender's restart."""
    with Serve(serve_env(influxdb1.url, influxdb1_database)) as serve:
        resource = Resource.create({"service.name": SERVICE})
        readers = [InMemoryMetricReader(), InMemoryMetricReader()]
        counters = []
        for reader in readers:
            provider = MeterProvider(metric_readers=[reader], resource=resource)
            counters.append(provider.get_meter("otel_luna").create_counter("luna.usages"))
        counters[1].add(1000, {"luna.estimator": ESTIMATOR})
        starts = set()
        for _ in range(3):
            counters[0].add(10, {"luna.estimator": ESTIMATOR})
            for reader in readers:
                request = encode_metrics(reader.get_metrics_data())
                metric = request.resource_metrics[0].scope_metrics[0].metrics[0]
                starts.add(metric.sum.data_points[0].start_time_unix_nano)
                body = request.SerializeToString()
                code, details, _, _ = grpc_call(serve.grpc_target, body, method=METRICS_EXPORT)
                assert code.name == "OK", details
        assert len(starts) == 2  # the senders differ by their start times only
    (row,) = influxdb1.select(
        f'SELECT sum("{ESTIMATOR}_usages") AS total FROM usages_statistic', influxdb1_database
    )
    assert row["total"] == 30 + 1000


# -- the warning ----------------------------------------------------------------------------------


@pytest.fixture
def warning_state(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """A fresh process state for the warning, and a luna exporter built from the environment
    that writes to a file."""
    monkeypatch.setattr(exporter, "_warned_without_metrics", False, raising=False)
    monkeypatch.setattr(exporter, "_metric_exporter_built", False, raising=False)
    monkeypatch.setattr(_helpers, "_usages_mode", None)
    monkeypatch.setattr(_helpers, "_on_counter", None)
    monkeypatch.setattr(_helpers, "_counter", _NoCounter())
    monkeypatch.setenv("OTEL_EXPORTER_LUNA_ENDPOINT", f"file://{tmp_path}/points.lp")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


class _NoCounter:
    def add(self, amount: int, attributes: dict[str, str]) -> None:
        pass


WARNING = "no luna metrics exporter writes it"


@pytest.mark.slow  # an app under opentelemetry-instrument
def test_opentelemetry_instrument_in_interval_mode_without_luna_metrics_warns_in_one_line(
    tmp_path: Any,
) -> None:
    """Under ``opentelemetry-instrument`` with ``OTEL_TRACES_EXPORTER=luna``,
    ``OTEL_EXPORTER_LUNA_USAGES=interval`` and metrics going elsewhere: one otel-luna line at
    start naming both variables; the app runs."""
    done = run_instrumented(
        tmp_path,
        metrics_exporter="console",
        endpoint=f"file://{tmp_path}/out.lp",
        usages="interval",
    )
    assert done.returncode == 0 and "the app ran" in done.stdout, done.stderr
    lines = [line for line in done.stderr.splitlines() if "otel-luna" in line]
    assert len(lines) == 1 and WARNING in lines[0], done.stderr
    assert "OTEL_METRICS_EXPORTER=console" in lines[0]
    assert "OTEL_EXPORTER_LUNA_USAGES=interval" in lines[0]


@pytest.mark.slow  # an app under opentelemetry-instrument
def test_opentelemetry_instrument_in_request_mode_needs_no_metrics_exporter(
    tmp_path: Any,
) -> None:
    """In request mode (the default) the luna traces exporter alone writes a request's usages:
    no warning at start without a luna metrics exporter."""
    done = run_instrumented(
        tmp_path, metrics_exporter="console", endpoint=f"file://{tmp_path}/out.lp"
    )
    assert done.returncode == 0 and "the app ran" in done.stdout, done.stderr
    assert "otel-luna" not in done.stderr, done.stderr


@pytest.mark.parametrize("metrics_exporter", [None, "otlp", "console,otlp", "none"])
def test_interval_mode_without_a_luna_metrics_exporter_warns_once_at_start(
    warning_state: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    metrics_exporter: str | None,
) -> None:
    """Built from the environment (as ``opentelemetry-instrument`` builds it) in interval mode
    with ``OTEL_METRICS_EXPORTER`` unset, ``none`` or naming no ``luna``: one warning line that
    says what is lost and what to set."""
    if metrics_exporter is None:
        monkeypatch.delenv("OTEL_METRICS_EXPORTER", raising=False)
    else:
        monkeypatch.setenv("OTEL_METRICS_EXPORTER", metrics_exporter)
    monkeypatch.setenv("OTEL_EXPORTER_LUNA_USAGES", "interval")
    with caplog.at_level(logging.WARNING, logger="otel_luna"):
        first, second = LunaSpanExporter(), LunaSpanExporter()
    first.shutdown()
    second.shutdown()
    lines = [r.getMessage() for r in caplog.records if WARNING in r.getMessage()]
    assert len(lines) == 1, caplog.text
    assert "OTEL_METRICS_EXPORTER=luna" in lines[0]
    assert "OTEL_EXPORTER_LUNA_USAGES=request" in lines[0]
    assert "\n" not in lines[0]


@pytest.mark.parametrize("metrics_exporter", [None, "otlp", "none"])
def test_request_mode_warns_once_when_usages_first_need_the_counter(
    warning_state: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    metrics_exporter: str | None,
) -> None:
    """Request mode (the default) without a luna metrics exporter: nothing at start, nothing
    for usages recorded inside a request; one line the first time usages are recorded outside
    any request (they go to the counter, which nothing writes), none after. It names why they
    went there and does not suggest the mode already in effect."""
    from opentelemetry.sdk.trace import TracerProvider

    if metrics_exporter is None:
        monkeypatch.delenv("OTEL_METRICS_EXPORTER", raising=False)
    else:
        monkeypatch.setenv("OTEL_METRICS_EXPORTER", metrics_exporter)
    with caplog.at_level(logging.WARNING, logger="otel_luna"):
        spans = LunaSpanExporter()
        assert WARNING not in caplog.text
        with TracerProvider().get_tracer("t").start_as_current_span("request"):
            _helpers.record_usages(face_detector=1)
        assert WARNING not in caplog.text
        _helpers.record_usages(face_detector=1)  # no recording span: the counter
        _helpers.record_usages(face_detector=2)
    spans.shutdown()
    lines = [r.getMessage() for r in caplog.records if WARNING in r.getMessage()]
    assert len(lines) == 1, caplog.text
    assert "usages recorded outside a request, or in a sampled-out trace" in lines[0]
    assert "OTEL_EXPORTER_LUNA_USAGES" not in lines[0]
    assert "OTEL_METRICS_EXPORTER=luna" in lines[0] and "\n" not in lines[0]


@pytest.mark.parametrize("metrics_exporter", ["luna", "otlp, luna"])
def test_no_warning_with_the_luna_metrics_exporter(
    warning_state: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    metrics_exporter: str,
) -> None:
    """``OTEL_METRICS_EXPORTER`` naming ``luna``, or a ``LunaMetricExporter`` built first in
    code: no warning, in either mode, whatever is recorded."""
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", metrics_exporter)
    with caplog.at_level(logging.WARNING, logger="otel_luna"):
        for mode in ("interval", "request"):
            monkeypatch.setenv("OTEL_EXPORTER_LUNA_USAGES", mode)
            LunaSpanExporter().shutdown()
            _helpers.record_usages(face_detector=1)
        monkeypatch.delenv("OTEL_METRICS_EXPORTER")
        metrics = LunaMetricExporter(sink=InMemorySink())
        for mode in ("interval", "request"):
            monkeypatch.setenv("OTEL_EXPORTER_LUNA_USAGES", mode)
            LunaSpanExporter().shutdown()
            _helpers.record_usages(face_detector=1)
        metrics.shutdown()
    assert WARNING not in caplog.text
