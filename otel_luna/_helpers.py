"""Thin wrappers over the OpenTelemetry API that set the ``luna.*`` span attributes.

Each acts on the current span. Outside a request (no recording span) they do nothing. Used on a
span below the request's SERVER span, the value is merged into the request when the spans end.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from opentelemetry import metrics, trace

from otel_luna import _attributes as attr
from otel_luna import schema
from otel_luna.usages import valid_estimator


def set_request_id(request_id: str) -> None:
    """Write ``request_id`` as the request's ``request_id`` field (sets ``luna.request_id``)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute(attr.REQUEST_ID, str(request_id))


def set_error(code: int) -> None:
    """Mark the request failed with LUNA error ``code`` (sets ``luna.error_code``)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute(attr.ERROR_CODE, int(code))


def add_tags(**tags: str | int | float | bool) -> None:
    """Add tags to the request's points (sets ``luna.tag.<name>``)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes({attr.TAG_PREFIX + name: value for name, value in tags.items()})


def add_fields(**fields: str | int | float | bool) -> None:
    """Add fields to the request's points (sets ``luna.field.<name>``)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes({attr.FIELD_PREFIX + name: value for name, value in fields.items()})


class monitor_time:
    """Time a stage of the request into field ``field`` (float seconds): ``luna.time.<field>``.

    A context manager or decorator. Timing the same field twice in a request adds the durations.
    """

    __slots__ = ("_key", "_span", "_start")

    def __init__(self, field: str) -> None:
        self._key = attr.TIME_PREFIX + field
        self._span: Any = None
        self._start = 0.0

    def __enter__(self) -> monitor_time:
        self._span = trace.get_current_span()
        self._start = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        elapsed = time.perf_counter() - self._start
        span = self._span
        self._span = None
        if span is not None and span.is_recording():
            before = getattr(span, "attributes", None) or {}
            previous = before.get(self._key)
            if isinstance(previous, float):
                elapsed += previous
            span.set_attribute(self._key, elapsed)

    def __call__(self, function: Any) -> Any:
        import functools
        import inspect

        key = self._key[len(attr.TIME_PREFIX) :]
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                with monitor_time(key):
                    return await function(*args, **kwargs)

            return timed_async

        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with monitor_time(key):
                return function(*args, **kwargs)

        return timed


class _Usages:
    """The ``luna.usages`` counter and one ready attribute dict per estimator."""

    def __init__(self) -> None:
        meter = metrics.get_meter("otel_luna")
        self.counter = meter.create_counter(
            attr.USAGES_INSTRUMENT, unit="{estimation}", description="SDK estimations performed"
        )
        self.attributes: dict[str, dict[str, str]] = {}

    def attributes_for(self, estimator: str) -> dict[str, str]:
        if not valid_estimator(estimator):
            raise ValueError(
                f"estimator name {estimator!r} is not an identifier ([a-z][a-z0-9_]*); "
                f"luna-handlers' names: {', '.join(schema.ESTIMATORS)}"
            )
        found = self.attributes[estimator] = {attr.ESTIMATOR: estimator}
        return found


_usages: _Usages | None = None


def record_usages(**counts: int) -> None:
    """Count SDK estimations: ``record_usages(face_detector=1, liveness_estimator=2)``.

    Adds to the ``luna.usages`` counter (attribute ``luna.estimator``); each export interval
    writes one ``usages_statistic`` point per service. A name that is not an identifier, or a
    count that is not a non-negative integer, raises ``ValueError``.
    """
    global _usages
    usages = _usages
    if usages is None:
        usages = _usages = _Usages()
    add = usages.counter.add
    known = usages.attributes
    for estimator, count in counts.items():
        attributes = known.get(estimator) or usages.attributes_for(estimator)
        if type(count) is not int or count < 0:
            raise ValueError(f"{estimator}: usage count must be an integer >= 0, got {count!r}")
        if count:
            add(count, attributes)


def record_license(
    status: str,
    liveness_balance: int,
    warnings: Iterable[str] = (),
    errors: Iterable[str] = (),
) -> None:
    """Write one ``licensing`` point: a licence check with its status and liveness balance.

    Emits a ``luna.license_check`` span (a new trace, linked to the current span) carrying the
    ``luna.license.*`` attributes. ``status`` must be one of ok, warning, error, exception and
    ``liveness_balance`` an integer, else ``ValueError``.
    """
    if status not in schema.LICENSE_STATUSES:
        raise ValueError(
            f"license status must be one of {', '.join(schema.LICENSE_STATUSES)}, got {status!r}"
        )
    if type(liveness_balance) is not int:
        raise ValueError(f"liveness_balance must be an integer, got {liveness_balance!r}")
    current = trace.get_current_span().get_span_context()
    links = [trace.Link(current)] if current.is_valid else None
    tracer = trace.get_tracer("otel_luna")
    span = tracer.start_span(
        attr.LICENSE_SPAN,
        context=trace.set_span_in_context(trace.INVALID_SPAN),
        links=links,
        attributes={
            attr.LICENSE_STATUS: status,
            attr.LICENSE_LIVENESS_BALANCE: liveness_balance,
            attr.LICENSE_WARNINGS: [str(message) for message in warnings],
            attr.LICENSE_ERRORS: [str(message) for message in errors],
        },
    )
    span.end()
