"""Thin wrappers over the OpenTelemetry API that set the ``luna.*`` span attributes.

Each acts on the current span. Outside a request (no recording span) they do nothing. Used on a
span below the request's SERVER span, the value is merged into the request when the spans end.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

from opentelemetry import trace

from otel_luna import _attributes as attr


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
