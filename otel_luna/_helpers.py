"""Thin wrappers over the OpenTelemetry API that set the ``luna.*`` span attributes.

Each acts on the current span. Outside a request (no recording span) they do nothing, but for
:func:`record_usages`, which counts on the ``luna.usages`` counter then. Used on a span below
the request's SERVER span, the value is merged into the request when the spans end.

None of them raises into the application (the OpenTelemetry API's rule): a value a helper cannot
use is dropped with a warning, logged once per kind of mistake (:func:`misuse`). Integer
arguments take any integral number (``numpy.int64`` included), not ``bool``.
"""

from __future__ import annotations

import logging
import operator
import threading
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from opentelemetry import metrics, trace

from otel_luna import _attributes as attr
from otel_luna.mapping._usages import MAX_ESTIMATOR_LENGTH, valid_estimator
from otel_luna.schema import luna as schema
from otel_luna.settings._parsers import USAGES_PER_REQUEST
from otel_luna.settings._settings import usages_requested

_logger = logging.getLogger("otel_luna")
_warned: set[str] = set()
_WARNED_LIMIT = 256
#: How many estimators' keys :func:`record_usages` keeps ready; more are made per call.
_ESTIMATORS_LIMIT = 256
#: The largest count a field can hold (InfluxDB integers are int64).
_INT64_MAX = 2**63 - 1


def misuse(message: str) -> None:
    """A helper got a value it cannot use: say so once per message; never raise."""
    if message not in _warned and len(_warned) < _WARNED_LIMIT:
        _warned.add(message)
        _logger.warning("otel-luna: %s; the value is ignored", message)


def integer(value: Any) -> int | None:
    """``value`` as an int if it is an integral number (not a bool), else None."""
    if type(value) is int:
        return value
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def set_request_id(request_id: str) -> None:
    """Write ``request_id`` as the request's ``request_id`` field (sets ``luna.request_id``)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute(attr.REQUEST_ID, str(request_id))


def set_error(code: int) -> None:
    """Mark the request failed with LUNA error ``code`` (sets ``luna.error_code``)."""
    number = integer(code)
    if number is None and isinstance(code, str) and code.strip().isdigit():
        number = int(code)
    if number is None:
        misuse(f"set_error: the LUNA error code must be an integer, got {type(code).__name__}")
        return
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute(attr.ERROR_CODE, number)


def add_tags(**tags: str | int | float | bool) -> None:
    """Add tags to the request's points (sets ``luna.tag.<name>``)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes({attr.TAG_PREFIX + name: value for name, value in tags.items()})


def add_fields(**fields: str | int | float | bool) -> None:
    """Add fields to the request's points (sets ``luna.field.<name>``). A field's type follows
    from its name (:func:`otel_luna.schema.luna.field_type`): a value of another type is
    ignored with a warning, as the mapping would drop it."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    values = {}
    for name, value in fields.items():
        kind = schema.field_type(name)
        if schema.fitted(value, kind) is None:
            misuse(
                f"add_fields: field {name!r} is {schema.FIELD_TYPE_NAMES[kind]} by its name "
                f"(docs/attributes.md), got {type(value).__name__}"
            )
            continue
        values[attr.FIELD_PREFIX + name] = value
    span.set_attributes(values)


class monitor_time:
    """Time a stage of the request into field ``field`` (float seconds): ``luna.time.<field>``.

    A context manager or decorator. Timing the same field twice in a request adds the durations.
    """

    __slots__ = ("_key", "_span", "_start")

    def __init__(self, field: str) -> None:
        if isinstance(field, str) and schema.field_type(field) is not float:
            misuse(f"monitor_time: a timing's field name ends in _time or _seconds, got {field!r}")
            self._key: str | None = None
        elif isinstance(field, str):
            self._key = attr.TIME_PREFIX + field
        else:
            misuse(f"monitor_time: the field name must be a string, got {type(field).__name__}")
            self._key = None
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
        if self._key is not None and span is not None and span.is_recording():
            before = getattr(span, "attributes", None) or {}
            previous = before.get(self._key)
            if isinstance(previous, float):
                elapsed += previous
            span.set_attribute(self._key, elapsed)

    def __call__(self, function: Any) -> Any:
        import functools
        import inspect

        key: Any = self._key[len(attr.TIME_PREFIX) :] if self._key is not None else None
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


#: Setting ``usages`` of this process, for :func:`record_usages`: set by the luna exporters when
#: built (they hold the settings), else read once from the environment (an app that exports
#: spans over OTLP to ``otel-luna serve`` has no luna exporter).
_usages_mode: str | None = None
#: Called once, the first time usages go to the counter: a luna traces exporter's check that
#: something writes the counter (:func:`set_usages_mode`).
_on_counter: Callable[[], None] | None = None
#: Estimator → (its span attribute, its counter attributes), for the first
#: :data:`_ESTIMATORS_LIMIT` names: an app passing ever new names does not grow it.
_estimators: dict[str, tuple[str, dict[str, str]]] = {}
_counter: Any = None
#: Adding to a span's usages reads, then sets its attribute: one thread at a time.
_span_lock = threading.Lock()


def set_usages_mode(mode: str, on_counter: Callable[[], None] | None = None) -> None:
    """Tell :func:`record_usages` the ``usages`` setting (``request`` or ``interval``) and what
    to call, once, when usages first go to the counter (``None``: nothing)."""
    global _usages_mode, _on_counter
    _usages_mode = mode
    _on_counter = on_counter


def _read_usages_mode() -> str:
    global _usages_mode
    try:
        _usages_mode = usages_requested()
    except Exception:  # noqa: BLE001 - never into the application: the default then
        _usages_mode = USAGES_PER_REQUEST
    return _usages_mode


def _estimator(estimator: str) -> tuple[str, dict[str, str]] | None:
    if not valid_estimator(estimator):
        misuse(
            f"record_usages: estimator name {estimator[:60]!r} is not an identifier "
            f"([a-z][a-z0-9_]*) of at most {MAX_ESTIMATOR_LENGTH} characters; "
            f"luna-handlers' names: {', '.join(schema.ESTIMATORS)}"
        )
        return None
    found = (attr.USAGES_PREFIX + estimator, {attr.ESTIMATOR: estimator})
    if len(_estimators) < _ESTIMATORS_LIMIT:
        _estimators[estimator] = found
    return found


def _count(number: int, attributes: dict[str, str]) -> None:
    """Add to the ``luna.usages`` counter (made at first use)."""
    global _counter, _on_counter
    if _counter is None:
        _counter = metrics.get_meter("otel_luna").create_counter(
            attr.USAGES_INSTRUMENT, unit="{estimation}", description="SDK estimations performed"
        )
    if _on_counter is not None:
        check, _on_counter = _on_counter, None
        try:
            check()
        except Exception:  # a warning that failed: never into the application
            _logger.debug("otel-luna: the usages check failed", exc_info=True)
    _counter.add(number, attributes)


def record_usages(**counts: int) -> None:
    """Count SDK estimations: ``record_usages(face_detector=1, liveness_estimator=2)``.

    Inside a request (a recording span) it adds to the span's ``luna.usages.<estimator>``
    attributes: the request's ``usages_statistic`` point, at its time, sums them over its spans.
    Outside one (or the trace sampled out), and with ``OTEL_EXPORTER_LUNA_USAGES=interval``, it
    adds to the ``luna.usages`` counter (attribute ``luna.estimator``), which the luna metrics
    exporter writes as one point per service and export interval. A name that is not an
    identifier, or a count that is not an integer >= 0, is ignored with a warning (never
    raised); a count of 0 records nothing.
    """
    mode = _usages_mode or _read_usages_mode()
    span = trace.get_current_span()
    on_span = mode == USAGES_PER_REQUEST and span.is_recording()
    added: dict[str, int] = {}
    for estimator, count in counts.items():
        known = _estimators.get(estimator) or _estimator(estimator)
        if known is None:
            continue
        number = count if type(count) is int else integer(count)
        if number is None or not 0 <= number <= _INT64_MAX:  # more could not be written
            misuse(
                f"record_usages: {estimator}: a usage count must be an integer >= 0 "
                "(at most 2**63 - 1)"
            )
            continue
        if not number:
            continue
        if on_span:
            added[known[0]] = number
        else:
            _count(number, known[1])
    if added:
        with _span_lock:
            before = getattr(span, "attributes", None) or {}
            for key, number in added.items():
                previous = before.get(key)
                if type(previous) is int:
                    added[key] = previous + number
            span.set_attributes(added)


def record_license(
    status: str,
    liveness_balance: int,
    warnings: Iterable[str] = (),
    errors: Iterable[str] = (),
) -> None:
    """Write one ``licensing`` point: a licence check with its status and liveness balance.

    Emits a ``luna.license_check`` span (a new trace, linked to the current span) carrying the
    ``luna.license.*`` attributes. ``status`` must be one of ok, warning, error, exception (else
    nothing is written, with a warning); a ``liveness_balance`` that is not an integer is left
    out of the point, with a warning.
    """
    if status not in schema.LICENSE_STATUSES:
        misuse(
            f"record_license: the status must be one of {', '.join(schema.LICENSE_STATUSES)}, "
            f"got {status!r}"
        )
        return
    balance = integer(liveness_balance)
    if balance is None:
        misuse("record_license: liveness_balance must be an integer")
    current = trace.get_current_span().get_span_context()
    links = [trace.Link(current)] if current.is_valid else None
    tracer = trace.get_tracer("otel_luna")
    span = tracer.start_span(
        attr.LICENSE_SPAN,
        context=trace.set_span_in_context(trace.INVALID_SPAN),
        links=links,
        attributes={
            attr.LICENSE_STATUS: status,
            **({} if balance is None else {attr.LICENSE_LIVENESS_BALANCE: balance}),
            attr.LICENSE_WARNINGS: [str(message) for message in warnings],
            attr.LICENSE_ERRORS: [str(message) for message in errors],
        },
    )
    span.end()
