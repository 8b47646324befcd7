"""The compiled common case of the in-process span path (``native/sdk_spans.h``): a batch of
SDK spans read, mapped and encoded in one pass while they are what most of an instrumented
application's traffic is (a SERVER span whose tag set is cached, with its own
``luna.tag.*``, ``luna.time.*`` and ``luna.usages.*`` keys and nothing waiting for it; a span
below it that cannot matter). It stops at the first span
that is anything else, before changing any state for it: the adapter (:func:`span_records`)
gives that span to the pure-Python path, the reference, which fills the caches for the next.
The two write the same bytes and keep the same state (``tests/ingest/test_native_spans.py``).

It reads, by name, the state that :class:`~otel_luna.mapping.RequestMapper` (``_pending``,
``_ended``, ``_ended_before``, ``_ended_generation``, ``batch_span_ids``, ``_tagsets``,
``_classified``, ``_key_limit``, ``times``), its ``SeriesTimes`` (``_current``, ``_previous``,
``_generation``) and :class:`~otel_luna.encoding.LineProtocolEncoder` (``_prefixes``,
``_field_keys``) keep.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode

from otel_luna import _attributes as attr
from otel_luna._compiled import NATIVE
from otel_luna.encoding import LineProtocolEncoder
from otel_luna.mapping import RequestMapper
from otel_luna.outcomes import Reason
from otel_luna.schema import luna as schema
from otel_luna.schema._keys import MAX_TAG_VALUE_BYTES

if NATIVE is not None:
    NATIVE.configure_sdk(
        ReadableSpan,
        SpanContext,
        Status,
        SpanKind.SERVER,
        StatusCode.ERROR,
        schema.REQUESTS,
        schema.ERRORS,
        schema.USAGES_STATISTIC,
        schema.UNKNOWN_ERROR_CODE,
        attr.LUNA_PREFIX,
        MAX_TAG_VALUE_BYTES,
    )

_SERVER_SPANS = Reason.SERVER_SPANS


class NativeSpans:
    """What :attr:`SpanFilter.take <otel_luna.ingest.SpanFilter>` calls: the compiled pass over
    a batch, for one mapper and encoder, writing into the batch :meth:`begin` set (the ingest
    does, under its lock, before it takes the batch's records)."""

    def __init__(
        self,
        mapper: RequestMapper,
        encoder: LineProtocolEncoder,
        on_error: Callable[[BaseException], None],
    ) -> None:
        """``on_error``: told what stopped the compiled pass (the Python path takes over)."""
        self._mapper = mapper
        self._on_error = on_error
        # The encoder's caches: cleared, never replaced (the same dicts throughout).
        self._prefixes = encoder._prefixes
        self._field_keys = encoder._field_keys
        self._lines: list[str] = []
        self._earliest = self._latest = 0

    @classmethod
    def of(
        cls, mapper: Any, encoder: Any, on_error: Callable[[BaseException], None]
    ) -> NativeSpans | None:
        """One for the LUNA profile's mapper and the line-protocol encoder, if compiled."""
        if NATIVE is None or type(mapper) is not RequestMapper:
            return None
        if type(encoder) is not LineProtocolEncoder:
            return None
        return cls(mapper, encoder, on_error)

    def begin(self, lines: list[str], earliest: int, latest: int) -> None:
        """The lines of the batch being taken, and its time window."""
        self._lines, self._earliest, self._latest = lines, earliest, latest

    def __call__(self, spans: Sequence[Any], start: int, services: Any) -> int:
        """Map ``spans[start:]`` while they are the common case; the index of the first left."""
        if type(spans) is not list:  # what a BatchSpanProcessor hands over is
            return start
        index: int
        try:
            index, servers, error = NATIVE.sdk_spans(  # type: ignore[union-attr]  # see of()
                spans,
                start,
                services,
                self._mapper,
                self._prefixes,
                self._field_keys,
                self._lines,
                self._earliest,
                self._latest,
            )
        except Exception as failed:  # noqa: BLE001 - state not as expected: Python takes it all
            self._on_error(failed)  # logged, rate-limited; nothing is lost
            return start
        if servers:
            self._mapper.counts[_SERVER_SPANS] += servers
        if error is not None:  # it stopped at spans[index] (out of memory?): Python takes that one
            self._on_error(error)
        return index
