"""Line protocol round trip through a real InfluxDB 1.x: what we send is what it stores."""

from __future__ import annotations

import itertools
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otel_luna.encoding._lineprotocol import InvalidPointError, LineProtocolEncoder
from otel_luna.schema._point import Point
from tests.support.servers import InfluxDB1

# Keys and values full of what line protocol must escape, plus arbitrary Unicode.
TRICKY = st.sampled_from([" ", ",", "=", '"', "\\", "\n", "\r", "\t", "#", "'", "é", "日", "🙂"])
TEXT = st.lists(st.one_of(TRICKY, st.characters(codec="utf-8")), max_size=12).map("".join)
_times = itertools.count(1_700_000_000_000_000_000, 1_000)


@settings(
    max_examples=int(os.environ.get("ROUNDTRIP_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    measurement=TEXT,
    tag_key=TEXT,
    tag_value=TEXT,
    field_key=TEXT,
    text=TEXT,
    number=st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**63), 2**63 - 1),
)
def test_arbitrary_unicode_round_trips_or_is_rejected(
    influxdb1: InfluxDB1,
    measurement: str,
    tag_key: str,
    tag_value: str,
    field_key: str,
    text: str,
    number: float,
) -> None:
    """Each point is stored exactly as given, or rejected by the encoder with a counted reason."""
    encoder = LineProtocolEncoder()
    time_ns = next(_times)
    point = Point(measurement, ((tag_key, tag_value),), {field_key: text, "n": number}, time_ns)
    if field_key == "n" or tag_key in (field_key, "n"):
        return  # one name for two columns: not a line-protocol question
    try:
        line = encoder.encode_point(point)
    except InvalidPointError as error:
        assert error.reason  # rejected with a reason; the exporter counts it
        return
    database = influxdb1.fresh_database("rt")
    try:
        influxdb1.write(line + "\n", database)
        stored = influxdb1.query("SELECT * FROM /.*/", database, epoch="ns")
    finally:
        influxdb1.drop_database(database)
    (series,) = stored["results"][0]["series"]
    row = dict(zip(series["columns"], series["values"][0], strict=True))
    assert series["name"] == measurement
    assert row["time"] == time_ns
    assert row[field_key] == text
    assert row["n"] == number if isinstance(number, int) else float(row["n"]) == number
    if tag_value:
        assert row[tag_key] == tag_value
    else:
        assert encoder.counts["empty_tag_value"] == 1
