"""The test servers are real and answer: InfluxDB 1.x and VictoriaMetrics round-trips."""

from __future__ import annotations

import time

from tests.support.servers import InfluxDB1, VictoriaMetrics, unique_name


def test_influxdb1_write_then_select_round_trip(influxdb1: InfluxDB1) -> None:
    """Two line-protocol points POSTed to InfluxDB 1.x /write come back from SELECT."""
    db = influxdb1.fresh_database()
    t0 = time.time_ns()
    body = (
        f"requests,service=api,resource=/items value=1.5,count=3i {t0}\n"
        f'requests,service=api,resource=/items value=2.5,count=4i,note="x y" {t0 + 1}\n'
    )
    influxdb1.write(body, db, precision="ns")

    rows = influxdb1.select('SELECT "value", "count", "note", "service" FROM "requests"', db)

    assert rows == [
        {"time": t0, "value": 1.5, "count": 3, "note": None, "service": "api"},
        {"time": t0 + 1, "value": 2.5, "count": 4, "note": "x y", "service": "api"},
    ]
    assert db in influxdb1.databases()
    influxdb1.drop_database(db)
    assert db not in influxdb1.databases()


def test_victoria_metrics_influx_write_then_export(victoria_metrics: VictoriaMetrics) -> None:
    """A line-protocol point written to VictoriaMetrics /write is returned by /api/v1/export."""
    measurement = unique_name("vmcheck")
    t_ms = time.time_ns() // 1_000_000
    victoria_metrics.write(f"{measurement},host=h1 usage=42.5 {t_ms * 1_000_000}\n")

    series = victoria_metrics.wait_for(f'{{__name__="{measurement}_usage"}}', 1, timeout=10)

    assert series == [
        {
            "metric": {"__name__": f"{measurement}_usage", "host": "h1"},
            "values": [42.5],
            "timestamps": [t_ms],
        }
    ]
