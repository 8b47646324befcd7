"""The 2.x API path: the ``influxdb-v2`` sink writing our line protocol into a real VictoriaMetrics.

VictoriaMetrics serves ``/api/v2/write`` (it stores ``<measurement>_<field>`` series, numeric
fields only), so it stands in for an InfluxDB 2.x server that cannot be had here.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tests.exporter.test_influxdb1_apps import TRAFFIC, drive
from tests.support.apprunner import instrumented_app
from tests.support.servers import VictoriaMetrics

FLASK_APP = Path(__file__).parent.parent / "apps" / "flask_app.py"


def test_flask_app_through_the_v2_api(victoria_metrics: VictoriaMetrics) -> None:
    """Every request lands as numeric requests/errors fields with the documented labels."""
    service = "luna-vm-test"
    env = {
        "OTEL_TRACES_EXPORTER": "luna",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_SERVICE_NAME": service,
        "OTEL_EXPORTER_LUNA_ENDPOINT": victoria_metrics.url,
        "OTEL_EXPORTER_LUNA_API_VERSION": "2",
        "OTEL_EXPORTER_LUNA_ORG": "luna",
        "OTEL_EXPORTER_LUNA_BUCKET": "luna_monitoring",
        "OTEL_EXPORTER_LUNA_TOKEN": "unused-by-victoria-metrics",
        "OTEL_EXPORTER_LUNA_GZIP": "true",
    }
    with instrumented_app(FLASK_APP, env) as url:
        drive(url)
    match = f'{{__name__="requests_execution_time",service="{service}"}}'
    series = victoria_metrics.wait_for(match, len(TRAFFIC))
    counted: Counter[tuple[str, str]] = Counter()
    for one in series:
        labels = one["metric"]
        assert set(labels) <= {"__name__", "service", "route", "status_code", "handler_id", "db"}
        counted[labels["route"], labels["status_code"]] += len(one["values"])
        assert all(value > 0 for value in one["values"])
    assert sum(counted.values()) == len(TRAFFIC)
    assert counted["POST:/extractor", "400"] == 3
    stages = victoria_metrics.wait_for(
        f'{{__name__="requests_download_images_time",service="{service}"}}', 7
    )
    assert {one["metric"]["route"] for one in stages} == {"POST:/handlers/{handler_id}/events"}
    errors = victoria_metrics.wait_for(f'{{__name__="errors_request_id",service="{service}"}}', 5)
    codes = Counter(one["metric"]["error_code"] for one in errors for _ in one["values"])
    assert codes == Counter({"12031": 3, "0": 2})
