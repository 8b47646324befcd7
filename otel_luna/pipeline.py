"""Points → line protocol → delivery: the steps every way in shares after mapping."""

from __future__ import annotations

import functools
import hashlib
import os
import re
import threading
import weakref
from collections import Counter
from collections.abc import Iterable
from typing import Protocol

from otel_luna import selfmetrics
from otel_luna.delivery.spool import open_spool
from otel_luna.delivery.writer import BatchWriter, DeadLetters
from otel_luna.encoding.jsonping import PingEncoder
from otel_luna.encoding.lineprotocol import InvalidPointError, LineProtocolEncoder
from otel_luna.mapping.requests import RequestMapper
from otel_luna.mapping.watchdog import WatchdogMapper
from otel_luna.point import Point
from otel_luna.settings import Settings
from otel_luna.sinks import Sink, load_sink


class Encoder(Protocol):
    """Points to lines: :class:`LineProtocolEncoder` or :class:`PingEncoder`."""

    counts: Counter[str]

    def encode_point(self, point: Point) -> str: ...


def span_mapper(settings: Settings) -> RequestMapper | WatchdogMapper:
    """The mapping of the settings' schema profile."""
    if settings.schema == "watchdog":
        return WatchdogMapper()
    return RequestMapper(route_limit=settings.route_limit)


class Pipeline:
    """Encodes points and hands the lines to a :class:`BatchWriter`.

    ``lock`` guards the encoder (and whatever mapping state the caller keeps with it): callers
    hold it around :meth:`encode`. A disabled pipeline (``enabled = false``) has no writer and
    accepts everything without doing anything.
    """

    def __init__(
        self,
        settings: Settings,
        sink: Sink | None = None,
        signal: str = "traces",
        *,
        memory_fallback: bool = True,
    ) -> None:
        self.settings = settings
        self.lock = threading.Lock()
        if hasattr(os, "register_at_fork"):
            reinit = functools.partial(_reinit_in_child, weakref.ref(self))
            os.register_at_fork(after_in_child=reinit)
        self.failures: Counter[str] = Counter()
        self._tracked: list[Counter[str]] = []
        self.writer: BatchWriter | None = None
        self.encoder: Encoder = LineProtocolEncoder()
        if settings.enabled:
            if sink is None:
                sink = load_sink(settings)
            if getattr(sink, "format", "line-protocol") == "json":
                self.encoder = PingEncoder()
            self.writer = BatchWriter(
                sink,
                # Dead letters first: an unwritable path fails before the spool is opened.
                dead_letters=DeadLetters(
                    settings.dead_letter, settings.dead_letter_max_bytes, settings.secrets
                ),
                spool=open_spool(
                    settings.spool,
                    os.path.join(settings.spool_dir, destination_slug(settings)),
                    settings.spool_max_bytes,
                    memory_fallback=memory_fallback,
                ),
                flush_interval=settings.flush_interval,
                batch_size=settings.batch_size,
                write_timeout=settings.timeout,
                secrets=settings.secrets,
                # For `otel-luna status`: the mapping and encoder rejections (not counts(),
                # which holds the writer's own). Copies: other threads update them meanwhile.
                extra_counts=lambda: sum(
                    (
                        Counter(dict(counter))
                        for counter in (self.encoder.counts, self.failures, *self._tracked)
                    ),
                    Counter[str](),
                ),
            )
            selfmetrics.register(self, signal)

    def _reinit(self) -> None:
        """In a forked child: a lock the parent's export thread held stays held; replace it."""
        self.lock = threading.Lock()

    def encode(self, points: Iterable[Point], lines: list[str]) -> None:
        """Append the lines of ``points`` to ``lines``, counting invalid ones. Hold ``lock``."""
        encode_point = self.encoder.encode_point
        before = len(lines)
        for point in points:
            try:
                lines.append(encode_point(point))
            except InvalidPointError as error:
                self.failures[error.reason] += 1
        self.failures["mapped"] += len(lines) - before

    def submit(self, lines: list[str]) -> None:
        """Queue ``lines`` for delivery; returns at once."""
        if self.writer is not None:
            self.writer.submit(lines)

    def track(self, counter: Counter[str]) -> None:
        """Report ``counter`` (the caller's mapping counts) with the pipeline's own."""
        self._tracked.append(counter)

    def counts(self) -> Counter[str]:
        """Mapping, encoder, delivery and spool counters, summed."""
        total: Counter[str] = Counter()
        for counter in (self.encoder.counts, self.failures, *self._tracked):
            total.update(counter)
        if self.writer is not None:
            total.update(self.writer.all_counts())
        return total

    def queued(self) -> int:
        """Lines waiting in the spool."""
        return 0 if self.writer is None else self.writer.queued

    def force_flush(self, timeout: float | None) -> bool:
        return True if self.writer is None else self.writer.force_flush(timeout)

    def shutdown(self) -> None:
        if self.writer is not None:
            self.writer.shutdown(self.settings.shutdown_timeout)


def _reinit_in_child(ref: weakref.ref[Pipeline]) -> None:
    pipeline = ref()
    if pipeline is not None:
        pipeline._reinit()


def destination_slug(settings: Settings) -> str:
    """A directory name per destination, so a spool is only ever replayed to where it was bound.

    Readable first part, then a hash of everything that picks the destination.
    """
    target = settings.bucket if settings.sink_name == "influxdb-v2" else settings.database
    key = "\0".join(
        [settings.sink_name, settings.endpoint, target, settings.retention_policy or ""]
    )
    readable = re.sub(r"[^A-Za-z0-9.]+", "_", f"{settings.endpoint}_{target}").strip("_")
    return f"{readable[:60]}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
