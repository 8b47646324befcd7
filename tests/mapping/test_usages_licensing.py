"""usages_statistic and licensing: unit rules, and a real InfluxDB 1.x end to end."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import otel_luna
from otel_luna import _helpers
from otel_luna.encoding._lineprotocol import LineProtocolEncoder
from otel_luna.mapping._records import SpanRecord, UsageSample
from otel_luna.mapping._requests import RequestMapper
from otel_luna.mapping._timestamps import MOVE_WINDOW
from otel_luna.mapping._usages import CumulativeToDelta, UsageMapper
from otel_luna.outcomes import Reason
from tests.support.servers import InfluxDB1

SCRIPT = Path(__file__).parent.parent / "apps" / "usage_script.py"
VENV_BIN = Path(sys.executable).parent
T0 = 1_700_000_000_000_000_000


def test_cumulative_to_delta_with_restart_and_reset() -> None:
    """Deltas per stream: steady growth, a reset (lower value), a restart (new start time),
    a late point (ignored, counted)."""
    converter = CumulativeToDelta(created_ns=T0, clock=lambda: T0 + 100)
    counts: Counter[Reason] = Counter()
    converter.expire(counts)  # reads the clock
    stream = ("svc", "face_detector", 0)
    assert converter.delta(stream, T0 + 1, T0 + 10, 5, counts) == 5  # started after us: in full
    assert converter.delta(stream, T0 + 1, T0 + 20, 12, counts) == 7
    assert converter.delta(stream, T0 + 1, T0 + 20, 12, counts) == 0  # the same point again
    assert converter.delta(stream, T0 + 1, T0 + 30, 3, counts) == 3  # reset: from zero again
    assert converter.delta(stream, T0 + 1, T0 + 25, 1, counts) == 0  # older than the last
    assert converter.delta(stream, T0 + 9, T0 + 40, 4, counts) == 4  # restart: new start time
    assert converter.delta(stream, T0 + 9, T0 + 50, 10, counts) == 6
    other = ("svc", "body_detector", 0)
    assert converter.delta(other, T0 - 100, T0 + 10, 50, counts) == 0  # older than us: baseline
    assert converter.delta(other, T0 - 100, T0 + 20, 53, counts) == 3
    unknown = ("svc", "mask_estimator", 0)
    assert converter.delta(unknown, 0, T0 + 10, 7, counts) == 0  # unknown start: baseline
    assert converter.delta(unknown, T0 + 30, T0 + 30, 7, counts) == 0  # start = time: unknown
    assert counts == {"out_of_order_usage": 1, "usage_baseline": 3}


def test_usage_points_per_service_and_interval() -> None:
    """One point per service and interval; zero deltas and invalid names leave no field."""
    mapper = UsageMapper(CumulativeToDelta(created_ns=T0))
    samples = [
        UsageSample("a", "face_detector", T0, T0 + 11, 3, False),
        UsageSample("a", "liveness_estimator", T0, T0 + 11, 2, False),
        UsageSample("a", "mask_estimator", T0, T0 + 11, 0, False),
        UsageSample("b", "face_detector", T0, T0 + 11, 1, False),
        UsageSample("b", "Bad Name", T0, T0 + 11, 1, False),
        UsageSample("c", "mask_estimator", T0, T0 + 11, 0, False),
    ]
    lines = LineProtocolEncoder().encode(mapper.points(samples))
    moved = int(lines[1].rpartition(" ")[2])  # a time is one owner's, whatever the series
    assert T0 + 11 < moved <= T0 + 11 + MOVE_WINDOW
    assert lines == [
        "usages_statistic,service=a face_detector_usages=3i,liveness_estimator_usages=2i"
        f" {T0 + 11}",  # a nanosecond time: written as it is
        f"usages_statistic,service=b face_detector_usages=1i {moved}",
    ]
    assert mapper.counts["invalid_estimator"] == 1


def test_cumulative_samples_never_double_count() -> None:
    """The same cumulative total exported twice writes its growth once."""
    mapper = UsageMapper(CumulativeToDelta(created_ns=T0))
    first = mapper.points([UsageSample("a", "face_detector", T0, T0 + 10, 4, True)])
    again = mapper.points([UsageSample("a", "face_detector", T0, T0 + 20, 4, True)])
    later = mapper.points([UsageSample("a", "face_detector", T0, T0 + 30, 9, True)])
    assert [p.fields for p in first + again + later] == [
        {"face_detector_usages": 4},
        {"face_detector_usages": 5},
    ]


def test_license_span_maps_to_one_point() -> None:
    """A licence-check span gives one licensing point; message lists are joined with '; '."""
    attributes = {
        "luna.license.status": "warning",
        "luna.license.liveness_balance": 12,
        "luna.license.warnings": ("balance is low", "expires soon"),
        "luna.license.errors": (),
    }
    points = RequestMapper().add(
        SpanRecord(attributes, False, 1, 2, 3, T0, T0 + 1, False, "luna-handlers")
    )
    assert LineProtocolEncoder().encode(points) == [
        "licensing,license_status=warning,service=luna-handlers liveness_balance=12i,"
        f'warnings="balance is low; expires soon",errors="" {T0 + 551_618}'
    ]  # T0 is a whole second: digits of the span's number fill the millisecond


def test_other_luna_attributes_on_a_license_check_are_counted() -> None:
    """A licence-check span's licensing point takes only the licence's attributes: usages
    (or tags) set on it are dropped, each counted, never silently."""
    mapper = RequestMapper()
    attributes = {
        "luna.license.status": "ok",
        "luna.license.liveness_balance": 1,
        "luna.usages.face_detector": 2,
        "luna.tag.kind": "x",
    }
    (point,) = mapper.add(SpanRecord(attributes, False, 1, 2, 3, T0, T0 + 1, False, "s"))
    assert point.measurement == "licensing"
    assert mapper.take_counts() == {Reason.LUNA_ATTRIBUTE_ON_LICENSE_CHECK: 2}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: otel_luna.record_usages(**{"Face Detector": 1}), "not an identifier"),
        (lambda: otel_luna.record_usages(face_detector=-1), "integer >= 0"),
        (lambda: otel_luna.record_usages(face_detector=1.5), "integer >= 0"),
        (lambda: otel_luna.record_usages(face_detector=math.nan), "integer >= 0"),
        (lambda: otel_luna.record_usages(face_detector=True), "integer >= 0"),
        (lambda: otel_luna.record_license("expired", 3), "one of ok, warning"),
        (lambda: otel_luna.record_license("ok", "3"), "must be an integer"),
        (lambda: otel_luna.set_error("abc"), "must be an integer"),
        (lambda: otel_luna.monitor_time(None), "must be a string"),  # type: ignore[arg-type]
    ],
)
def test_helpers_never_raise_and_say_what_is_accepted(
    call: object, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A value a helper cannot use is ignored with a warning saying what is accepted: like the
    OpenTelemetry API, the helpers never raise into the application."""
    _helpers._warned.clear()
    with caplog.at_level(logging.WARNING, logger="otel_luna"):
        call()  # type: ignore[operator]
    assert message in caplog.text


def test_integral_numbers_are_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """numpy-style integers (anything with __index__) are accepted as counts."""

    class Int64:
        def __index__(self) -> int:
            return 3

    added: list[tuple[int, Any]] = []

    class Counter:
        def add(self, value: int, attributes: Any) -> None:
            added.append((value, attributes))

    monkeypatch.setattr(_helpers, "_counter", Counter())
    otel_luna.record_usages(face_detector=Int64())  # outside a request: on the counter
    assert added == [(3, {"luna.estimator": "face_detector"})]


def test_usages_and_licensing_into_influxdb1(influxdb1: InfluxDB1, influxdb1_database: str) -> None:
    """8 threads over several export intervals: per-field sums equal what was recorded,
    including the last interval of a process that exits right after recording; one licensing
    point per call with the documented names and types."""
    env = {
        **os.environ,
        "OTEL_TRACES_EXPORTER": "luna",
        "OTEL_METRICS_EXPORTER": "luna",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_METRIC_EXPORT_INTERVAL": "200",
        "OTEL_SERVICE_NAME": "luna-handlers",
        "OTEL_EXPORTER_LUNA_ENDPOINT": influxdb1.url,
        "OTEL_EXPORTER_LUNA_DATABASE": influxdb1_database,
    }
    done = subprocess.run(
        [str(VENV_BIN / "opentelemetry-instrument"), sys.executable, str(SCRIPT), "1.5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    recorded = json.loads(done.stdout.strip().splitlines()[-1])
    usages = recorded["usages"]
    columns = ", ".join(f'sum("{name}_usages") AS "{name}"' for name in usages)
    (row,) = influxdb1.select(f"SELECT {columns} FROM usages_statistic", influxdb1_database)
    assert {name: row[name] for name in usages} == usages
    intervals = influxdb1.select("SELECT count(*) FROM usages_statistic", influxdb1_database)
    assert max(v for k, v in intervals[0].items() if k.startswith("count_")) >= 5

    licensing = influxdb1.select("SELECT * FROM licensing", influxdb1_database)
    assert len(licensing) == recorded["license_checks"]
    assert {row["license_status"] for row in licensing} == {"ok", "warning", "error", "exception"}
    warned = [row for row in licensing if row["license_status"] == "warning"]
    assert all(row["warnings"] == "balance is low; expires soon" for row in warned)
    fields = influxdb1.query("SHOW FIELD KEYS FROM licensing", influxdb1_database)
    (series,) = fields["results"][0]["series"]
    assert dict(map(tuple, series["values"])) == {
        "liveness_balance": "integer",
        "warnings": "string",
        "errors": "string",
    }
    tags = influxdb1.query("SHOW TAG KEYS FROM licensing", influxdb1_database)
    assert [v[0] for v in tags["results"][0]["series"][0]["values"]] == [
        "license_status",
        "service",
    ]
    usage_fields = influxdb1.query("SHOW FIELD KEYS FROM usages_statistic", influxdb1_database)
    types = {name: kind for name, kind in usage_fields["results"][0]["series"][0]["values"]}
    assert set(types.values()) == {"integer"}
    assert set(types) == {f"{name}_usages" for name in usages}


def test_licence_attributes_without_status_are_counted_not_mapped() -> None:
    """A span with licence fields but no luna.license.status is no licence check."""
    mapper = RequestMapper()
    assert (
        mapper.add(
            SpanRecord({"luna.license.liveness_balance": 3}, False, 1, 2, None, T0, T0, False, "s")
        )
        == []
    )
    assert mapper.counts["incomplete_license_check"] == 1
