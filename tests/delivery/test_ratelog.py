"""The one rate limit of recurring log lines (serve's refusals, the ingest's mapping errors)."""

from __future__ import annotations

from otel_luna.delivery import Due, RateLog


def test_the_first_line_of_each_key_is_due_then_one_per_interval_with_the_skipped_count() -> None:
    """Per key: the first call is due, calls within the interval are counted, the next due
    line says how many were skipped and how long since the last line."""
    now = [100.0]
    log = RateLog(10.0, clock=lambda: now[0])
    assert log.due("a") == Due(0, None)
    assert log.due("b") == Due(0, None)  # keys apart
    assert log.due("a") is None
    now[0] += 9
    assert log.due("a") is None
    now[0] += 2
    assert log.due("a") == Due(2, 11.0)
    assert log.due("a") is None
    now[0] += 10
    assert log.due("a") == Due(1, 10.0)
