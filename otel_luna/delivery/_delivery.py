"""Lines → one destination: the spool, batching, retries, dead letters, shutdown.

:func:`open_delivery` builds the delivery of a destination from the settings: the disk (or
memory) spool under a directory of its own (:func:`destination_slug`), the dead-letter file and
the :class:`~otel_luna.delivery._writer.BatchWriter` whose one thread writes to the sink.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Mapping

from otel_luna.delivery._deadletters import DeadLetters
from otel_luna.delivery._fallback_spool import open_spool
from otel_luna.delivery._writer import BatchWriter
from otel_luna.outcomes import Reason
from otel_luna.redact import redact
from otel_luna.settings._settings import Settings
from otel_luna.sinks._base import SinkLike, as_sink


def open_delivery(
    settings: Settings,
    sink: SinkLike,
    *,
    memory_fallback: bool = True,
    host_counts: Callable[[], Mapping[Reason, int]] | None = None,
) -> BatchWriter:
    """The delivery of ``settings``' destination through ``sink``.

    ``memory_fallback``: a spool whose disk refuses writes keeps points in memory (inside an
    application) instead of raising :class:`~otel_luna.delivery._spool.SpoolUnavailable`
    (``otel-luna serve``, which answers with backpressure). ``host_counts``: counters its
    host keeps (the ingest's) for the stats ``otel-luna status`` shows.
    """
    return BatchWriter(
        as_sink(sink, settings),  # a sink not made from Sink says its format here, once
        # Dead letters first: an unwritable path fails before the spool is opened.
        dead_letters=DeadLetters(
            settings.dead_letter, settings.dead_letter_max_bytes, settings.secrets
        ),
        spool=open_spool(
            settings.spool,
            os.path.join(settings.spool_dir, destination_slug(settings)),
            settings.spool_max_bytes,
            memory_fallback=memory_fallback,
            retry_interval=settings.spool_retry_interval,
        ),
        flush_interval=settings.flush_interval,
        batch_size=settings.batch_size,
        secrets=settings.secrets,
        host_counts=host_counts,
        destination=destination_name(settings),
    )


def destination_name(settings: Settings) -> str:
    """The destination as log lines name it, without credentials: the endpoint, and the
    database (1.x) or the bucket (2.x) of an InfluxDB."""
    name = redact(settings.endpoint, settings.secrets)
    if settings.sink_name == "influxdb-v1":
        return f"{name} (database {settings.database})"
    if settings.sink_name == "influxdb-v2":
        return f"{name} (bucket {settings.bucket})"
    return name


def destination_slug(settings: Settings) -> str:
    """A directory name per destination, so a spool is only ever replayed to where it was bound.

    Readable first part, then a hash of everything that picks the destination.
    """
    v2 = settings.sink_name == "influxdb-v2"
    target = settings.bucket if v2 else settings.database
    parts = [settings.sink_name, settings.endpoint, target, settings.retention_policy or ""]
    if v2:
        parts.append(settings.org or "")
    # What a sink declares may pick the destination too (a topic); secrets never do.
    options = sorted(
        (each.name, repr(value)) for each, value in settings.sink_options.items if not each.secret
    )
    if options:
        parts.append(repr(options))
    key = "\0".join(parts)
    readable = re.sub(r"[^A-Za-z0-9.]+", "_", f"{settings.endpoint}_{target}").strip("_")
    return f"{readable[:60]}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
