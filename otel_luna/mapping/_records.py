"""The mapping's input: one typed record per span and per usage data point.

The adapters make them — :mod:`otel_luna.ingest._sdk` from SDK objects, ``otel_luna.serve``
from OTLP messages — and from here on the two ways in are one. A usage sample's ``origin`` and
``stream`` are made here too (:func:`origin_of`, :func:`resource_identity`, :func:`stream_of`),
so that both adapters tell senders and streams apart alike.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Mapping
from typing import Any, NamedTuple


class SpanRecord(NamedTuple):
    """What the mapping reads of one ended span."""

    attributes: Mapping[str, Any]
    is_server: bool
    trace_id: int
    span_id: int
    parent_span_id: int | None
    start_ns: int
    end_ns: int
    status_error: bool
    service: str
    #: Whether the parent is in another process (propagated context): the span is the root of
    #: its process's part of the trace. False when the sender does not say (OTLP span flags).
    parent_is_remote: bool = False


class UsageSample(NamedTuple):
    """One data point of the ``luna.usages`` counter."""

    service: str
    estimator: Any
    start_ns: int
    time_ns: int
    value: int | float
    cumulative: bool
    #: Who sent it (a checksum of the sender's resource): senders of one service whose clocks
    #: give the same time still write distinct points.
    origin: int = 0
    #: The identity of its cumulative stream but for the start time: resource, scope and point
    #: attributes (:func:`stream_of`). Two senders of one service and estimator, or
    #: one sender's two scopes, are two streams (0: told apart by service and estimator only).
    stream: int = 0


def origin_of(resource_attributes: Mapping[str, Any]) -> int:
    """The ``origin`` of samples from a resource: a checksum of its attributes, the same for
    the SDK's resource and its OTLP encoding."""
    described = repr(sorted((str(key), repr(value)) for key, value in resource_attributes.items()))
    return zlib.crc32(described.encode(errors="surrogatepass"))


def _described(attributes: Mapping[str, Any]) -> bytes:
    """Attributes as bytes that do not depend on their order (the same for the SDK's mapping
    and its OTLP encoding)."""
    pairs = sorted((str(key), repr(value)) for key, value in attributes.items())
    return repr(pairs).encode(errors="surrogatepass")


def resource_identity(resource_attributes: Mapping[str, Any]) -> bytes:
    """The resource's part of a stream's identity (:func:`stream_of`): a 16-byte digest of its
    attributes, computed once per resource."""
    return hashlib.blake2b(_described(resource_attributes), digest_size=16).digest()


def stream_of(
    resource: bytes,
    scope_name: str,
    scope_version: str,
    point_attributes: Mapping[str, Any],
) -> int:
    """The identity of a data point's stream, without its start time (``UsageSample.start_ns``
    is the rest): the resource (:func:`resource_identity`), the instrumentation scope and the
    point's attributes — what the Collector's ``cumulativetodelta`` tells streams apart by. A
    128-bit digest: a fixed size per stream whatever the attributes hold, and no two senders
    share one by chance."""
    digest = hashlib.blake2b(resource, digest_size=16)
    digest.update(repr((scope_name, scope_version)).encode(errors="surrogatepass"))
    digest.update(_described(point_attributes))
    return int.from_bytes(digest.digest(), "big")
