"""Profiles: which series a deployment writes, and what it takes to write them.

A profile names its mappers (spans → points, usage samples → points) and the wire formats its
points can be written in; the sink says which format it takes (its ``format`` attribute). The
pair is checked once, when the ingest is built: a profile and a sink that cannot work together
are a start-up error naming the settings, never a stream of rejected points.

To add a profile: a mapper with the :class:`SpanMapper` interface (``add(record)``,
``take_counts()``, ``prefix`` and ``wants(...)``; :class:`~otel_luna.outcomes.Counting` gives
``take_counts``) that claims its
points' times from the :class:`~otel_luna.mapping._timestamps.SeriesTimes` it is built with,
its series in :mod:`otel_luna.schema`, an entry in :data:`PROFILES`, and its name among the
values the ``schema`` setting accepts (``parse_schema`` in :mod:`otel_luna.settings._parsers`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from otel_luna.encoding._jsonping import PingEncoder
from otel_luna.encoding._lineprotocol import LineProtocolEncoder
from otel_luna.mapping._requests import RequestMapper
from otel_luna.mapping._timestamps import SeriesTimes
from otel_luna.mapping._usages import CumulativeToDelta, UsageMapper
from otel_luna.mapping._watchdog import WatchdogMapper
from otel_luna.outcomes import Reason
from otel_luna.redact import redact
from otel_luna.schema._point import Point
from otel_luna.settings._declare import SettingsError
from otel_luna.settings._settings import env_name

__all__ = [
    "JSON",
    "LINE_PROTOCOL",
    "LUNA",
    "PROFILES",
    "WATCHDOG",
    "Encoder",
    "Profile",
    "SpanMapper",
    "profile_of",
]

if TYPE_CHECKING:
    from otel_luna.mapping._records import SpanRecord
    from otel_luna.settings._settings import Settings

LINE_PROTOCOL = "line-protocol"
JSON = "json"


class SpanMapper(Protocol):
    """Spans → points, one span at a time. :meth:`take_counts` returns what it counted (the
    problems) since the last call: the ingest takes them after each batch. ``arrived_ns`` is
    when the spans being added arrived (monotonic ns), for state it keeps between spans to
    expire by (the ingest sets it for each batch). ``batch_span_ids`` are the span ids of the
    batch being added (a fresh set, set with it; the mapper may take ids out as it maps them):
    a sender's retry sends a request's spans again, its children before it.

    :meth:`wants` says, from what a span holds before any record is built, whether :meth:`add`
    could make anything of it — a point, data kept for another span, a count: ``is_server``,
    ``marked`` (a key of the span starts with :attr:`prefix`), its ``span_id`` (data kept for
    it) and ``local_parent_id`` (its parent's span id, None for a root or a remote parent). The
    adapters build no record for a span it does not want (``Ingest.span_filter``); it must say
    yes whenever ``add`` would make anything of the span, or note itself what ``add`` would
    have noted (a mapper that remembers ended spans' parents) before it says no."""

    arrived_ns: int
    batch_span_ids: set[int]
    #: A span other than a SERVER span whose keys none start with this is ``marked=False``.
    prefix: str

    def wants(
        self, is_server: bool, marked: bool, span_id: int, local_parent_id: int | None
    ) -> bool: ...

    def add(self, record: SpanRecord) -> list[Point]: ...

    def take_counts(self) -> Counter[Reason]: ...


class Encoder(Protocol):
    """Points → lines of one wire format; raises ``InvalidPointError`` for a point it cannot
    carry; :meth:`take_counts` returns the values it dropped since the last call."""

    def encode_point(self, point: Point) -> str: ...

    def take_counts(self) -> Counter[Reason]: ...


#: The encoder of each wire format.
ENCODERS: dict[str, Callable[[], Encoder]] = {
    LINE_PROTOCOL: LineProtocolEncoder,
    JSON: PingEncoder,
}


@dataclass(frozen=True)
class Profile:
    name: str
    #: What the profile writes, for messages.
    series: str
    #: Wire formats its points can be written in.
    formats: frozenset[str]
    #: The mappers, given the settings and the times both claim (:meth:`mappers`).
    span_mapper: Callable[[Settings, SeriesTimes], SpanMapper]
    #: None: the profile writes nothing from metrics.
    usage_mapper: Callable[[Settings, SeriesTimes], UsageMapper] | None

    def mappers(self, settings: Settings) -> tuple[SpanMapper, UsageMapper | None]:
        """The span and usage mappers, claiming their points' times from one
        :class:`SeriesTimes`: a request's usages point and the counter's of one service never
        share a time (one would overwrite the other in InfluxDB)."""
        times = SeriesTimes()
        usage_mapper = None if self.usage_mapper is None else self.usage_mapper(settings, times)
        return self.span_mapper(settings, times), usage_mapper

    def encoder(self, sink_format: str, settings: Settings) -> Encoder:
        """The encoder for a sink taking ``sink_format``; a :class:`SettingsError` naming the
        schema and endpoint settings if this profile cannot be written in it."""
        if sink_format not in self.formats:
            raise SettingsError(
                env_name("schema"),
                f"profile {self.name!r} writes {self.series} as "
                f"{' or '.join(sorted(self.formats))}, but the destination "
                f"({env_name('endpoint')}={redact(settings.endpoint, settings.secrets)!r}, "
                f"sink {redact(settings.sink_name, settings.secrets)!r}) "
                f"takes {sink_format}; {_hint(self, sink_format)}",
            )
        return ENCODERS[sink_format]()


def _hint(profile: Profile, sink_format: str) -> str:
    others = [p.name for p in PROFILES.values() if sink_format in p.formats and p is not profile]
    if others and sink_format == JSON:
        return f"use schema {others[0]!r}, or a line-protocol destination (a .lp file, InfluxDB)"
    return "choose a destination that takes " + " or ".join(sorted(profile.formats))


LUNA = Profile(
    "luna",
    "the LUNA PLATFORM series (requests, errors, usages_statistic, licensing)",
    frozenset({LINE_PROTOCOL}),
    lambda settings, times: RequestMapper(route_limit=settings.route_limit, times=times),
    # serve --workers N: a client's connection can move to a worker that never saw its streams
    lambda settings, times: UsageMapper(
        CumulativeToDelta(
            first_in_full=settings.sees_whole_streams,
            max_ahead_ns=round(settings.max_time_ahead * 1e9),
        ),
        times=times,
    ),
)
WATCHDOG = Profile(
    "watchdog",
    "the watchdog events (new_item, poller_heartbeat, worker_works)",
    frozenset({LINE_PROTOCOL, JSON}),
    lambda settings, times: WatchdogMapper(times),
    None,
)
PROFILES = {profile.name: profile for profile in (LUNA, WATCHDOG)}


def profile_of(settings: Settings) -> Profile:
    return PROFILES[settings.schema]
