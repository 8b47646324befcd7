"""OpenTelemetry spans → LUNA ``requests`` / ``errors`` points. Pure: data in, data out.

Rules (``docs/mapping.md`` has the full table):

* every finished SERVER span gives one ``requests`` point; a failed one (HTTP status >= 400,
  span status ERROR, or a LUNA error code set) also gives an ``errors`` point;
* ``luna.*`` attributes (:mod:`otel_luna._attributes`) set on spans *below* a SERVER span in the
  same process are merged into it when they end, so a stage timed inside a child span or in another
  task of the request still lands on the request's point;
* a request whose spans carry ``luna.usages.<estimator>`` counts (summed over its spans) also
  gives one ``usages_statistic`` point, at the time of its ``requests`` point; a span that is no
  SERVER span and whose parent is not in the process (none: a background job; remote: a
  message consumer) gives one of its own, at its start;
* a span that ends after its request was written (a background task) gives its usages as a
  point of their own at the request's time, found through the ended spans the mapper remembers
  (bounded: ``ended_limit``); its other ``luna.*`` data is late (counted). Waiting data that
  expires or is evicted writes its usages too, at its span's start: only the rest is counted;
* a licence-check span (attribute ``luna.license.status``) gives one ``licensing`` point;
* other spans give nothing.

Every point gets its own time (:mod:`otel_luna.mapping._timestamps`), so no request overwrites
another in InfluxDB whatever the sender's clock resolution. User keys that InfluxDB reserves or that
would shadow the series' own tags and fields are dropped and counted; the point is written without
them. Every field has one type whatever the sender (:func:`~otel_luna.schema.luna.field_type`):
a ``luna.field.*`` or ``luna.time.*`` value that does not fit its field's type is dropped and
counted, the point written with the rest. ``route`` is the framework's template in LUNA's
``{name}`` form (:func:`luna_template`: Flask, Django, FastAPI/Starlette and aiohttp alike), else
the path. It is bounded: a request that matched no route is written as ``METHOD:{unmatched}``,
and past ``route_limit`` distinct values per service, new ones as ``{overflow}``; METHOD is an
RFC 9110 token of at most 32 characters, else ``_OTHER``. No attribute value of any type makes
the mapping raise: a value it cannot use is left out and counted; a route too long to be written
is refused before it is templated, and templating is linear in the route's length.

The mapper keeps the not-yet-merged ``luna.*`` data of ended child spans, bounded in bytes, in
entries and in age — measured from when the data arrived (``arrived_ns``, a monotonic time the
ingest hands in with each batch: the mapping reads no clock), never from span times, which the
sender chooses. One point takes at most ``user_key_limit`` user tags, fields and timings; the
per-service route budgets are bounded in all (``route_budget_limit`` routes, least recently used
services forgotten first). Whatever a bound costs is counted.
"""

from __future__ import annotations

import enum
import re
import sys
from collections.abc import Mapping
from typing import Any, TypeVar

from otel_luna import _attributes as attr
from otel_luna.mapping._records import SpanRecord
from otel_luna.mapping._timestamps import SeriesTimes
from otel_luna.mapping._usages import valid_estimator
from otel_luna.outcomes import Counting, Reason
from otel_luna.schema import luna as schema
from otel_luna.schema._keys import (
    MAX_KEY_BYTES,
    MAX_TAG_VALUE_BYTES,
    key_problem,
    tag_value_problem,
)
from otel_luna.schema._point import FieldValue, Point

#: Names of the series' own tags and fields: a ``luna.tag.*``, ``luna.field.*`` or ``luna.time.*``
#: attribute of one of these names would shadow them (dashboards filter on them).
_RESERVED_NAMES = frozenset(
    (*schema.REQUEST_TAGS, *schema.ERROR_TAGS, *schema.REQUEST_FIELDS, *schema.ERROR_FIELDS)
)
#: ``route`` of a request that matched no route of the application (e.g. a scanner's 404s).
UNMATCHED_ROUTE = "{unmatched}"
#: ``route`` of requests past the per-service limit of distinct routes.
OVERFLOW_ROUTE = "{overflow}"
#: Default most distinct ``route`` values per service that the application does not bound.
ROUTE_LIMIT = 1000
#: HTTP methods a route template may be written with as they are (the semantic conventions'
#: known methods): other methods are chosen by clients, so they count against the limit.
_STANDARD_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY"}
)
#: An HTTP method as RFC 9110 has it (a token: tchar only), at most this long; anything else in
#: ``http.request.method``, ``http.method`` or ``http.request.method_original`` is ``_OTHER``.
METHOD_MAX_LENGTH = 32
_METHOD_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1," + str(METHOD_MAX_LENGTH) + "}")
#: An ``http.route`` longer than this cannot be written (every character is at least a byte of
#: the series key, which InfluxDB bounds): the request is refused (``key_too_long``) before any
#: templating work.
LONGEST_ROUTE = MAX_KEY_BYTES

#: Child data waiting for its SERVER ancestor is dropped this long after it arrived.
PENDING_TTL_NS = 300 * 10**9
#: ... or when more than this many spans' data wait at once (oldest first),
PENDING_LIMIT = 100_000
#: ... or when they take more than this many bytes of memory (estimated; oldest first).
PENDING_BYTES = 32 * 1024 * 1024
#: How many ended spans the mapper remembers (between half and all of them), so that a span
#: ending after its request was written (a background task) still finds the request: a SERVER
#: span's service, start and owner, another span's parent.
ENDED_LIMIT = 100_000
#: Most parent links followed up from a span to its request (a sender's loop ends there).
_MAX_DEPTH = 64
#: Most user tags, fields, timings and estimators (``luna.tag.*``, ``luna.field.*``,
#: ``luna.time.*``, ``luna.usages.*``) one request takes, from its span and all below it;
#: further names are dropped and counted.
USER_KEY_LIMIT = 256
#: Most routes the per-service route budgets remember, all services together.
ROUTE_BUDGET_LIMIT = 100_000
#: Bytes a waiting value costs beyond the value itself (its dict slot and key).
_ENTRY_BYTES = 100
_TAGSET_CACHE_LIMIT = 4096
# The two spellings, unpacked once for the hot path (the tables stay in _attributes).
_METHOD_NEW, _METHOD_OLD = attr.HTTP_METHOD
_STATUS_NEW, _STATUS_OLD = attr.HTTP_STATUS_CODE
_CLASSIFIED_CACHE_LIMIT = 1024
_SERVER_SPANS = Reason.SERVER_SPANS
# A point without the NamedTuple's argument parsing: a third of the cost, on the hot path.
_point = tuple.__new__


class _Kind(enum.IntEnum):
    """What a ``luna.*`` attribute key is, so what its value becomes."""

    TIME = 0  # luna.time.<name>: a stage timing, float seconds (they add up)
    TAG = 1  # luna.tag.<name>: a user tag
    FIELD = 2  # luna.field.<name>: a user field, of its name's type
    REQUEST_ID = 3  # luna.request_id
    ERROR_CODE = 4  # luna.error_code
    LICENSE = 5  # luna.license.status: the span is a licence check
    LICENSE_PART = 6  # the rest of a licence check, read with its status
    UNKNOWN = 7  # a luna.* key otel-luna does not know
    REFUSED = 8  # a user name that cannot be written (the reason in the name's place)
    USAGE = 9  # luna.usages.<estimator>: SDK estimations, an integer >= 0 (they add up)


# The members as module names: the hot path compares them as ints, and an enum class's
# attribute costs a lookup through its metaclass (about 150 ns on Python 3.11).
(
    _TIME,
    _TAG,
    _FIELD,
    _REQUEST_ID,
    _ERROR_CODE,
    _LICENSE,
    _LICENSE_PART,
    _UNKNOWN,
    _REFUSED,
    _USAGE,
) = _Kind
#: Kinds whose value is made text (or a float), not a field the encoder checks.
_AS_TEXT = frozenset({_TIME, _TAG, _REQUEST_ID, _ERROR_CODE})
_LICENSE_KINDS = frozenset({_LICENSE, _LICENSE_PART})
_TYPE_MISMATCH = "type_mismatch"
_PREFIX_KINDS = ((attr.TIME_PREFIX, _TIME), (attr.TAG_PREFIX, _TAG), (attr.FIELD_PREFIX, _FIELD))
_EXACT_KINDS = {
    attr.REQUEST_ID: _REQUEST_ID,
    attr.ERROR_CODE: _ERROR_CODE,
    attr.LICENSE_STATUS: _LICENSE,
    attr.LICENSE_LIVENESS_BALANCE: _LICENSE_PART,
    attr.LICENSE_WARNINGS: _LICENSE_PART,
    attr.LICENSE_ERRORS: _LICENSE_PART,
}
_SCALARS = frozenset({str, int, float, bool})
_NONE_HELD = (0, 0, 0, 0)
#: What a request's data holds per user name, in the order :meth:`RequestMapper._trim` keeps.
_HELD = ("tags", "fields", "times", "usages")
_NO_PROBLEMS: tuple[Reason, ...] = ()
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


#: A classified luna.* key: (attribute key, kind, name or reason, the field's type or None).
_LunaKey = tuple[str, _Kind, str, "type[FieldValue] | None"]


class _RequestData:
    """``luna.*`` data of one request, gathered from its spans."""

    __slots__ = (
        "arrived_ns",
        "error_code",
        "fields",
        "owner",
        "request_id",
        "service",
        "size",
        "start_ns",
        "tags",
        "times",
        "usages",
    )

    def __init__(self) -> None:
        #: When it was parked to wait for its parent (monotonic), and its bytes then.
        self.arrived_ns = 0
        self.size = 0
        #: The span first parked: where its usages are written if no request takes them.
        self.service = ""
        self.start_ns = 0
        self.owner = 0
        self.request_id: str | None = None
        self.error_code: Any = None
        self.tags: dict[str, str] = {}
        self.fields: dict[str, FieldValue] = {}
        self.times: dict[str, float] = {}
        #: ``<estimator>_usages`` → estimations (> 0), summed over the request's spans.
        self.usages: dict[str, int] = {}

    def keys(self) -> int:
        """User tags, fields, timings and estimators held."""
        return len(self.tags) + len(self.fields) + len(self.times) + len(self.usages)

    def held(self) -> tuple[int, int, int, int]:
        """How many tags, fields, timings and estimators it holds."""
        return len(self.tags), len(self.fields), len(self.times), len(self.usages)

    def for_request(self) -> bool:
        """Whether it holds data for a ``requests`` point (anything but usages)."""
        return bool(
            self.tags
            or self.fields
            or self.times
            or self.request_id is not None
            or self.error_code is not None
        )

    def weigh(self) -> int:
        """Bytes of memory it holds, about."""
        size = sys.getsizeof(self.request_id) + sys.getsizeof(self.error_code)
        for values in (self.tags, self.fields, self.times, self.usages):
            size += _ENTRY_BYTES * len(values) + sum(map(sys.getsizeof, values.values()))
        return size

    def absorb(self, below: _RequestData, limit: int) -> int:
        """Take the data of a descendant; this span's own values win, timings and usages add
        up. Past
        ``limit`` user keys in all, the descendant's new ones are left out: how many."""
        if self.request_id is None:
            self.request_id = below.request_id
        if self.error_code is None:
            self.error_code = below.error_code
        room = limit - self.keys()
        self.tags, room, left_out = _merged(self.tags, below.tags, room)
        self.fields, room, more = _merged(self.fields, below.fields, room)
        left_out += more
        room, more = _summed(self.times, below.times, room)
        left_out += more
        room, more = _summed(self.usages, below.usages, room)
        return left_out + more


_V = TypeVar("_V")


_N = TypeVar("_N", int, float)


def _summed(mine: dict[str, _N], theirs: dict[str, _N], room: int) -> tuple[int, int]:
    """Add ``theirs`` into ``mine``, new names while ``room`` lasts: (room left, names left
    out)."""
    left_out = 0
    for key, value in theirs.items():
        if key in mine:
            mine[key] += value
        elif room <= 0:
            left_out += 1
        else:
            room -= 1
            mine[key] = value
    return room, left_out


def _merged(
    mine: dict[str, _V], theirs: dict[str, _V], room: int
) -> tuple[dict[str, _V], int, int]:
    """``mine`` with the names of ``theirs`` it lacks, at most ``room`` of them; (merged, room
    left, names left out). Its own values win."""
    new = [key for key in theirs if key not in mine]
    if len(new) <= room:
        return {**theirs, **mine}, room - len(new), 0
    taken = set(new[: max(room, 0)])
    kept = {key: value for key, value in theirs.items() if key in mine or key in taken}
    return {**kept, **mine}, 0, len(new) - len(taken)


def _first(attributes: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        value = attributes.get(key)
        if value is not None:
            return value
    return None


def _method(attributes: Mapping[str, Any], problems: list[Reason]) -> str | None:
    """The request's method: ``http.request.method`` (or ``http.method``), for ``_OTHER`` its
    ``http.request.method_original``; None without either. A value that is no RFC 9110 token
    of at most :data:`METHOD_MAX_LENGTH` characters (empty, spaces, control characters, not a
    string) is ``_OTHER``, counted (``invalid_http_method``)."""
    method = _first(attributes, attr.HTTP_METHOD)
    if method is None:
        return None
    if method == "_OTHER":
        method = attributes.get(attr.HTTP_METHOD_ORIGINAL)
        if method is None:
            return "_OTHER"
    if type(method) is not str or _METHOD_TOKEN.fullmatch(method) is None:
        problems.append(Reason.INVALID_HTTP_METHOD)
        return "_OTHER"
    return method


def _status(status: Any, problems: list[Reason]) -> int | None:
    """The HTTP status as an int: an int 0-999 or a string of 1-3 ASCII digits; else None,
    counted (``invalid_http_status``) if there was a value."""
    if type(status) is int and 0 <= status <= 999:
        return status
    if type(status) is str and 0 < len(status) <= 3 and status.isascii() and status.isdigit():
        return int(status)
    if status is not None:
        problems.append(Reason.INVALID_HTTP_STATUS)
    return None


def _text(attributes: Mapping[str, Any], keys: tuple[str, ...], problems: list[Reason]) -> Any:
    """The first of ``keys`` set, if a string; a value of another type is left out, counted."""
    for key in keys:
        value = attributes.get(key)
        if value is None:
            continue
        if type(value) is str:
            return value
        problems.append(Reason.UNSUPPORTED_ATTRIBUTE_TYPE)
    return None


def _route(
    attributes: Mapping[str, Any], method: str | None, status: int | None, problems: list[Reason]
) -> tuple[str, bool]:
    """(``METHOD:/templated/route``, whether its values are bounded by the application).

    Without a template: ``METHOD:{unmatched}`` for a request the router did not match (404,
    405, a redirect such as a trailing-slash one), else the path without its query string. A
    template with a standard method is bounded by the application's routes; anything else (a
    path, a method of the client's choosing) is up to the client. A route, path or URL that is
    not a string is left out, counted (``unsupported_attribute_type``).
    """
    standard = method in _STANDARD_METHODS
    route = _text(attributes, (attr.HTTP_ROUTE,), problems)
    if not route and status is not None and (status in (404, 405) or 300 <= status < 400):
        return f"{method if standard else '_OTHER'}:{UNMATCHED_ROUTE}", True
    bounded = bool(route) and standard
    if route:
        route = luna_template(route)
    else:
        route = _text(attributes, attr.HTTP_PATH, problems)
        if route is None:
            url = _text(attributes, attr.HTTP_URL, problems)
            if url is not None:
                route = _path_of(url)
        if route is not None:
            route = route.partition("?")[0].partition("#")[0]
    if method is None:
        return (route or ""), bounded
    return f"{method}:{route or ''}", bounded


def _path_of(url: str) -> str:
    """The path of a URL: of ``scheme://host/path`` or ``//host/path`` the part after the
    host; a URL that is a path already (``/api/v1/users``, as senders put in ``http.url``)
    as it is."""
    if "://" in url:
        return "/" + url.partition("://")[2].partition("/")[2]
    if url.startswith("//"):
        return "/" + url[2:].partition("/")[2]
    return url if url.startswith("/") else "/" + url


# Werkzeug's (Flask's) ``<name>``, ``<converter:name>``, ``<converter(arguments):name>``, and
# Django's path converters ``<int:name>`` (its own ``<converter:name>`` syntax). Linear in the
# route's length: no part can run past the next ``<`` or ``>`` (the arguments hold neither), so
# the attempts from two ``<`` never scan the same characters (``[^)]*`` alone would scan to the
# end of the route from every ``<(``: quadratic, seconds for ``"/<a(" * 100000``).
_ANGLE_PARAMETER = re.compile(r"<(?:[A-Za-z_]\w*(?:\([^()<>]*\))?:)?([A-Za-z_]\w*)>", re.ASCII)
_NAME = re.compile(r"[A-Za-z_]\w*", re.ASCII)


def luna_template(route: str) -> str:
    """A framework's route template in LUNA's form, every parameter ``{name}``.

    Flask/Werkzeug ``/items/<int:item_id>``, Django ``items/<int:item_id>`` (a path route,
    without the leading slash) and ``^items/(?P<item_id>[0-9]+)/$`` (a regex route),
    Starlette/FastAPI ``/files/{path:path}`` and aiohttp ``/items/{id:\\d+}`` all become
    ``/items/{item_id}``-style; a template in that form already is returned as it is.
    Linear in the route's length whatever it holds (``tests/mapping/test_route_templates.py``).
    """
    if route.startswith("^") or "(?P<" in route:
        route = _django_regex(route)
    if "<" in route:
        route = _ANGLE_PARAMETER.sub(r"{\1}", route)
    if ":" in route and "{" in route:
        route = _plain_braces(route)
    if not route.startswith("/"):
        route = "/" + route
    return route


def _plain_braces(route: str) -> str:
    """``{name:regex}`` and ``{name:convertor}`` → ``{name}`` (the regex may hold braces)."""
    out = []
    index = 0
    while True:
        start = route.find("{", index)
        name = _NAME.match(route, start + 1) if start >= 0 else None
        if name is None or not route.startswith(":", name.end()):
            if start < 0:
                out.append(route[index:])
                return "".join(out)
            out.append(route[index : start + 1])
            index = start + 1
            continue
        depth, position = 1, name.end() + 1
        while position < len(route) and depth:
            char = route[position]
            if char == "\\":
                position += 1
            elif char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
            position += 1
        if depth:  # unbalanced: not a parameter, left as it is
            out.append(route[index:])
            return "".join(out)
        out.append(f"{route[index:start]}{{{name.group()}}}")
        index = position


def _django_regex(route: str) -> str:
    """A Django regex route (``^items/(?P<item_id>[0-9]+)/$``, or ``files/(?P<name>.+)$``
    under an ``include()`` of a ``path()``) as a template (``items/{item_id}/``): anchors left
    out, named groups as ``{name}``, escaped characters as themselves; what is left of the
    regex (unnamed groups, ``?``) stays."""
    out = []
    position = 1 if route.startswith("^") else 0
    end = len(route)
    if route.endswith("\\Z"):
        end -= 2
    elif route.endswith("$") and not route.endswith("\\$"):
        end -= 1
    while position < end:
        char = route[position]
        if route.startswith("(?P<", position):
            close = route.find(">", position)
            closing = _group_end(route, close + 1, end) if close > 0 else -1
            if closing < 0:  # not a well-formed group: the rest as it is
                out.append(route[position:end])
                break
            out.append("{" + route[position + 4 : close] + "}")
            position = closing + 1
            continue
        if char == "\\" and position + 1 < end:
            out.append(route[position + 1])
            position += 2
            continue
        out.append(char)
        position += 1
    return "".join(out)


def _group_end(pattern: str, position: int, end: int) -> int:
    """Index of the ``)`` that closes the group whose body starts at ``position``; -1 if none."""
    depth = 1
    in_class = False
    while position < end:
        char = pattern[position]
        if char == "\\":
            position += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return position
        position += 1
    return -1


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _joined(messages: Any) -> str | None:
    """Licence messages (a string, or an array of strings) as one string; None for any other
    value (a number, bytes, a kvlist, an array holding anything but strings)."""
    if messages is None:
        return ""
    if type(messages) is str:
        return messages
    if type(messages) in (tuple, list) and all(type(message) is str for message in messages):
        return schema.LICENSE_MESSAGE_SEPARATOR.join(messages)
    return None


class RequestMapper(Counting):
    """Maps finished spans to points, one span at a time, in the order they end; what it
    drops or refuses is counted (``counts``, handed over by :meth:`take_counts`).

    Not thread-safe: the ingest holds its lock around :meth:`add` and :meth:`take_counts`.
    """

    def __init__(
        self,
        *,
        pending_ttl_ns: int = PENDING_TTL_NS,
        pending_limit: int = PENDING_LIMIT,
        pending_bytes: int = PENDING_BYTES,
        user_key_limit: int = USER_KEY_LIMIT,
        route_limit: int = ROUTE_LIMIT,
        route_budget_limit: int = ROUTE_BUDGET_LIMIT,
        tagset_cache_limit: int = _TAGSET_CACHE_LIMIT,
        ended_limit: int = ENDED_LIMIT,
        times: SeriesTimes | None = None,
    ):
        """``tagset_cache_limit``: most tag sets remembered (0: none, each one made anew);
        ``times``: the times its points claim, shared with the usage mapper of its profile."""
        super().__init__()
        self.times = SeriesTimes() if times is None else times
        #: Monotonic time (ns) the spans being added arrived: the ingest sets it for each
        #: batch; waiting child data expires by it.
        self.arrived_ns = 0
        #: The span ids of the batch being added (the ingest sets them with ``arrived_ns``),
        #: less the SERVER spans mapped since: a request among them is still to come in this
        #: batch (a sender's retry, children first), so its children wait for it instead of
        #: being late.
        self.batch_span_ids: set[int] = set()
        self._route_limit = route_limit
        self._route_budget_limit = route_budget_limit
        #: Routes of each service's budget; services in least recently used order.
        self._routes: dict[str, set[str]] = {}
        self._routes_held = 0
        #: Insertion order is arrival order: the oldest waiting data come first.
        self._pending: dict[int, _RequestData] = {}
        self._pending_bytes = 0
        #: Ended spans, in two generations (swapped when the newer is full: forgetting the
        #: oldest costs nothing per span): a SERVER span's id → (service, start), another's
        #: id → its parent's id; for spans that end after their request was written.
        self._ended: dict[int, int | tuple[str, int]] = {}
        self._ended_before: dict[int, int | tuple[str, int]] = {}
        self._ended_generation = max(1, ended_limit // 2)
        self._ttl_ns = pending_ttl_ns
        self._limit = pending_limit
        self._bytes_limit = pending_bytes
        self._key_limit = user_key_limit
        self._tagsets: dict[tuple[Any, ...], Any] = {}
        self._tagset_limit = tagset_cache_limit
        self._classified: dict[tuple[str, ...], tuple[_LunaKey, ...]] = {}

    #: The attribute keys that make a span other than a SERVER span matter (see :meth:`wants`).
    prefix = attr.LUNA_PREFIX

    def wants(
        self, is_server: bool, marked: bool, span_id: int, local_parent_id: int | None
    ) -> bool:
        """Whether :meth:`add` can make anything of a span (a point, data to pass up, a
        count): a SERVER span, a span with a ``luna.*`` key (``marked``: a licence check, data
        for its request), or one whose descendants' data wait for it. The adapters ask before
        they build a record, so that the rest (an instrumentation's INTERNAL and CLIENT spans)
        cost almost nothing; asked between the ``add`` calls, in the order the spans come.
        A span it does not want still links its ended span to ``local_parent_id`` (the
        parent's span id if it is in this process), as :meth:`add` would, so that the usages of
        a descendant ending late find their request through it."""
        if is_server or marked or span_id in self._pending:
            return True
        if local_parent_id is not None:
            ended = self._ended
            ended[span_id] = local_parent_id
            if len(ended) >= self._ended_generation:
                self._ended_before, self._ended = ended, {}
        return False

    @property
    def pending(self) -> int:
        """Spans whose ``luna.*`` data wait for a SERVER ancestor to end."""
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        """Bytes of memory (estimated) the waiting data take."""
        return self._pending_bytes

    @property
    def routes_held(self) -> int:
        """Routes the per-service route budgets remember."""
        return self._routes_held

    def add(self, record: SpanRecord) -> list[Point]:
        """Points for one ended span (empty for all but SERVER and licence-check spans)."""
        (
            attributes,
            is_server,
            trace_id,
            span_id,
            parent_span_id,
            start_ns,
            end_ns,
            status_error,
            service,
            parent_is_remote,
        ) = record
        data = self._pending.pop(span_id, None) if self._pending else None
        if data is not None:
            self._pending_bytes -= data.size
        # Spans of one kind carry the same attribute keys in the same order: classify the
        # luna.* keys once per key tuple instead of testing every key of every span.
        keys = tuple(attributes)
        luna_keys = self._classified.get(keys)
        if luna_keys is None:
            luna_keys = self._classify(keys)
        if luna_keys:
            if luna_keys[0][1] == _LICENSE:
                others = sum(1 for item in luna_keys if item[1] not in _LICENSE_KINDS)
                if others:
                    self.counts[Reason.LUNA_ATTRIBUTE_ON_LICENSE_CHECK] += others
                return self._license(attributes, start_ns, (trace_id << 64) | span_id, service)
            if data is None:
                data = _RequestData()
                had = _NONE_HELD
                check = len(luna_keys) > self._key_limit  # at most one name per key
            else:  # what came from below keeps its place under the limit
                had = data.held()
                check = True
            for key, kind, name, field_type in luna_keys:
                value = attributes[key]
                # The two kinds every request carries, inline when _gather would take them as
                # they are: a float timing, a tag that is printable ASCII within its bound.
                if kind == _TIME and value.__class__ is float:
                    times = data.times
                    times[name] = times.get(name, 0.0) + value
                elif (
                    kind == _TAG
                    and value.__class__ is str
                    and value.isascii()
                    and value.isprintable()
                    and "\\" not in value
                    and len(value) <= MAX_TAG_VALUE_BYTES
                ):
                    data.tags[name] = value
                else:
                    self._gather(data, kind, name, value, field_type)
            if check and data.keys() > self._key_limit:
                self._trim(data, had)
        ended = self._ended
        if is_server:
            self.batch_span_ids.discard(span_id)
            ended[span_id] = (service, start_ns)
            if len(ended) >= self._ended_generation:
                self._ended_before, self._ended = ended, {}
            self.counts[_SERVER_SPANS] += 1
            points = self._points(
                attributes, trace_id, span_id, start_ns, end_ns, status_error, service, data
            )
            if data is not None and data.usages:  # at its requests point's time (same owner)
                points.append(
                    self._usages(data.usages, service, start_ns, (trace_id << 64) | span_id)
                )
            return points
        if parent_span_id is not None and not parent_is_remote:
            ended[span_id] = parent_span_id
            if len(ended) >= self._ended_generation:
                self._ended_before, self._ended = ended, {}
        if data is None:
            return []
        owner = (trace_id << 64) | span_id  # timestamps.owner_of
        points = []
        if data.usages and (parent_span_id is None or parent_is_remote):
            # The root of its process's part of the trace (a background job, a consumer of a
            # message): no request of this process will take its usages. Its own point.
            points.append(self._usages(data.usages, service, start_ns, owner))
            if not data.for_request():
                return points
            data.usages = {}
        if parent_span_id is None:
            self.counts[Reason.ORPHAN_LUNA_ATTRIBUTES] += 1
            return points
        waits_for, request = (
            (parent_span_id, None) if parent_is_remote else self._request_of(parent_span_id)
        )
        if request is not None and waits_for in self.batch_span_ids:
            request = None  # its request comes again later in this batch (a retry): wait for it
        if request is None:
            data.service, data.start_ns, data.owner = service, start_ns, owner
            self._hold_for_parent(waits_for, data, points)
            return points
        # Its request was written already (a background task, a thread it started): the
        # usages as a point of their own at the request's time (a time of their own: the
        # request's usages point stays as it is); what else it holds is late.
        if data.usages:
            points.append(self._usages(data.usages, request[0], request[1], owner))
        if data.for_request():
            self.counts[Reason.LATE_LUNA_ATTRIBUTES] += 1
        return points

    def _request_of(self, parent_span_id: int) -> tuple[int, tuple[str, int] | None]:
        """Up the ended spans from ``parent_span_id``: (the first ancestor not ended yet, None)
        — the one to wait for — or (its id, its (service, start)) if a SERVER span that ended
        comes first."""
        current, before = self._ended, self._ended_before
        for _ in range(_MAX_DEPTH):
            up = current.get(parent_span_id)
            if up is None:
                up = before.get(parent_span_id)
                if up is None:
                    return parent_span_id, None
            if up.__class__ is tuple:
                return parent_span_id, up  # a SERVER span's
            parent_span_id = up  # type: ignore[assignment]  # a parent's id
        return parent_span_id, None

    def _usages(self, usages: dict[str, int], service: str, start_ns: int, owner: int) -> Point:
        """The ``usages_statistic`` point of one request (or root span): its summed usages,
        at the time its ``requests`` point has (or would have): the same owner claims it."""
        time_ns = self.times.claim(start_ns, owner)
        return _point(Point, (schema.USAGES_STATISTIC, (("service", service),), usages, time_ns))

    def _license(
        self, attributes: Mapping[str, Any], start_ns: int, owner: int, service: str
    ) -> list[Point]:
        status = attributes[attr.LICENSE_STATUS]
        balance = attributes.get(attr.LICENSE_LIVENESS_BALANCE)
        if status not in schema.LICENSE_STATUSES:
            self.counts[Reason.INVALID_LICENSE_STATUS] += 1
            return []
        fields: dict[str, FieldValue] = {}
        for name, key in (("warnings", attr.LICENSE_WARNINGS), ("errors", attr.LICENSE_ERRORS)):
            messages = _joined(attributes.get(key))
            if messages is None:  # written without these messages
                self.counts[Reason.UNSUPPORTED_ATTRIBUTE_TYPE] += 1
                messages = ""
            fields[name] = messages
        balance = schema.fitted(balance, int)  # an integer, also when sent as 3.0 (JSON)
        if balance is not None:
            fields = {"liveness_balance": balance, **fields}
        else:
            self.counts[Reason.INVALID_LIVENESS_BALANCE] += 1
        tags = (("license_status", status), ("service", service))
        return [Point(schema.LICENSING, tags, fields, self.times.claim(start_ns, owner))]

    def _classify(self, keys: tuple[str, ...]) -> tuple[_LunaKey, ...]:
        """The luna.* keys among ``keys``, classified; a licence check first."""
        luna_keys: list[_LunaKey] = []
        for key in keys:
            if not key.startswith(attr.LUNA_PREFIX):
                continue
            if key.startswith(attr.USAGES_PREFIX):
                estimator = key[len(attr.USAGES_PREFIX) :]
                if valid_estimator(estimator):
                    luna_keys.append((key, _USAGE, estimator + schema.USAGES_SUFFIX, int))
                else:
                    luna_keys.append((key, _REFUSED, "invalid_estimator", None))
                continue
            for prefix, kind in _PREFIX_KINDS:
                if key.startswith(prefix):
                    name = key[len(prefix) :]
                    problem = "shadows_schema" if name in _RESERVED_NAMES else key_problem(name)
                    field_type = None if kind == _TAG else schema.field_type(name)
                    if problem is None and kind == _TIME and field_type is not float:
                        problem = _TYPE_MISMATCH  # a timing is float seconds: not this field
                    if problem is None:
                        luna_keys.append((key, kind, name, field_type))
                    else:
                        luna_keys.append((key, _REFUSED, problem, None))
                    break
            else:
                luna_keys.append((key, _EXACT_KINDS.get(key, _UNKNOWN), key, None))
        luna_keys.sort(key=lambda item: item[1] != _LICENSE)
        result = tuple(luna_keys)
        if len(self._classified) >= _CLASSIFIED_CACHE_LIMIT:
            self._classified.clear()
        self._classified[keys] = result
        return result

    def _gather(
        self,
        data: _RequestData,
        kind: _Kind,
        name: str,
        value: Any,
        field_type: type[FieldValue] | None,
    ) -> None:
        """One ``luna.*`` attribute's value into the request's ``data``, or counted: why not."""
        scalar = type(value) in _SCALARS
        if type(value) is int and not _INT64_MIN <= value <= _INT64_MAX and kind in _AS_TEXT:
            # Only Python's SDK can send one (OTLP's are int64): str() of 4301 digits raises,
            # float() of 1e309 too. (A field's is the encoder's: int_out_of_range.)
            self.counts[Reason.INT_OUT_OF_RANGE] += 1
            return
        if kind == _TIME:
            if scalar and type(value) is not str and type(value) is not bool:
                data.times[name] = data.times.get(name, 0.0) + float(value)
                return
        elif kind == _TAG:
            if scalar:
                text = str(value).lower() if type(value) is bool else str(value)
                # isprintable() is False for \n and \r: one C loop each instead of four.
                if (
                    not (text.isascii() and text.isprintable())
                    or "\\" in text
                    or len(text) > MAX_TAG_VALUE_BYTES
                ):
                    problem = tag_value_problem(text)
                    if problem is not None:  # the request is written without this tag
                        self.counts[Reason.of("attribute_" + problem)] += 1
                        return
                data.tags[name] = text
                return
        elif kind == _FIELD:
            if scalar:
                if type(value) is not field_type:
                    value = schema.fitted(value, field_type)  # type: ignore[arg-type]  # set for _FIELD
                    if value is None:  # the request is written without this field
                        self.counts[Reason.ATTRIBUTE_TYPE_MISMATCH] += 1
                        return
                elif type(value) is str and not value.isascii() and not _encodable(value):
                    self.counts[Reason.ATTRIBUTE_INVALID_UTF8] += 1  # written without this field
                    return
                data.fields[name] = value
                return
        elif kind == _REQUEST_ID:
            if not scalar:  # an array, kvlist or bytes: the trace id stands in for it
                self.counts[Reason.UNSUPPORTED_ATTRIBUTE_TYPE] += 1
                return
            text = str(value)
            if not text.isascii() and not _encodable(text):
                self.counts[Reason.ATTRIBUTE_INVALID_UTF8] += 1  # the trace id stands in for it
                return
            data.request_id = text
            return
        elif kind == _ERROR_CODE:
            if scalar:
                problem = tag_value_problem(str(value))
                if problem is not None:  # still a failed request: of an unknown code
                    self.counts[Reason.of("attribute_" + problem)] += 1
                    value = schema.UNKNOWN_ERROR_CODE
                data.error_code = value
                return
        elif kind == _USAGE:
            number = schema.fitted(value, int) if scalar else None  # 3.0 from JSON too
            if type(number) is not int or not 0 <= number <= _INT64_MAX:
                self.counts[Reason.ATTRIBUTE_INVALID_USAGE] += 1  # the rest is written
                return
            if number:
                data.usages[name] = data.usages.get(name, 0) + number
            return
        elif kind == _LICENSE_PART:  # without luna.license.status: not a licence check
            self.counts[Reason.INCOMPLETE_LICENSE_CHECK] += 1
            return
        elif kind == _REFUSED:  # name holds the reason
            self.counts[Reason.of("attribute_" + name)] += 1
            return
        else:
            self.counts[Reason.UNKNOWN_LUNA_ATTRIBUTE] += 1
            return
        self.counts[Reason.UNSUPPORTED_ATTRIBUTE_TYPE] += 1

    def _trim(self, data: _RequestData, had: tuple[int, int, int, int]) -> None:
        """Down to ``user_key_limit`` user names: those from below (``had`` of the tags,
        fields, timings and estimators, the first of each) stay; of the span's own new names,
        the first that fit (tags, then fields, timings, estimators). What is left out is
        counted."""
        room = self._key_limit - sum(had)
        for name, before in zip(_HELD, had, strict=True):
            held: dict[str, Any] = getattr(data, name)
            new = len(held) - before
            if new > room:
                self.counts[Reason.TOO_MANY_LUNA_ATTRIBUTES] += new - room
                setattr(data, name, dict(list(held.items())[: before + max(room, 0)]))
            room -= min(new, max(room, 0))

    def _hold_for_parent(
        self, parent_span_id: int, data: _RequestData, points: list[Point]
    ) -> None:
        """Keep a child span's ``data`` until its parent ends (merged with what waits for it
        already); then drop the expired and, past the bounds, the oldest: their usages as a
        point of their own (onto ``points``) at the start of the span first parked, the rest
        counted."""
        pending = self._pending
        waiting = pending.get(parent_span_id)
        if waiting is None:
            data.arrived_ns = self.arrived_ns
            data.size = data.weigh()
            pending[parent_span_id] = data
            self._pending_bytes += data.size
        else:
            left_out = waiting.absorb(data, self._key_limit)
            if left_out:
                self.counts[Reason.TOO_MANY_LUNA_ATTRIBUTES] += left_out
            size = waiting.weigh()
            self._pending_bytes += size - waiting.size
            waiting.size = size
        # The oldest first: expired ones, then as many as the bounds want gone.
        oldest = self.arrived_ns - self._ttl_ns
        while pending:
            key = next(iter(pending))
            first = pending[key]
            if first.arrived_ns < oldest:
                reason = Reason.EXPIRED_LUNA_ATTRIBUTES
            elif len(pending) > self._limit or self._pending_bytes > self._bytes_limit:
                reason = Reason.EVICTED_LUNA_ATTRIBUTES
            else:
                break
            del pending[key]
            self._pending_bytes -= first.size
            if first.usages:
                points.append(
                    self._usages(first.usages, first.service, first.start_ns, first.owner)
                )
            if first.for_request():
                self.counts[reason] += 1

    def _points(
        self,
        attributes: Mapping[str, Any],
        trace_id: int,
        span_id: int,
        start_ns: int,
        end_ns: int,
        status_error: bool,
        service: str,
        data: _RequestData | None,
    ) -> list[Point]:
        get = attributes.get
        method_new, method_old, route = get(_METHOD_NEW), get(_METHOD_OLD), get(attr.HTTP_ROUTE)
        raw_status = get(_STATUS_NEW)
        if raw_status is None:
            raw_status = get(_STATUS_OLD)
        data_tags = None
        request_id = error_code = None
        request_fields: dict[str, FieldValue] = {}
        if data is not None:
            request_id = data.request_id
            error_code = data.error_code
            if data.tags:
                if data.fields or data.times:
                    for name in data.tags:
                        if name in data.fields or name in data.times:
                            self._drop_tag_field_conflicts(data)
                            break
                data_tags = tuple(data.tags.items())
            request_fields = data.fields
        # Tag sets repeat (a few routes x statuses): cache both sorted tuples, keyed on every
        # attribute they are made of (the method's original spelling too). Values that compare
        # equal across types (True == 1 == 1.0) map differently: the status's type is part of
        # the key, and only a string route is cached, or none when the request matched no
        # route (METHOD:{unmatched}: made of the key alone, so cached[3]); only a string method
        # ever is (a standard one, see _tagset; the other attributes are read only then). A
        # key holding a value
        # that cannot be one (a kvlist) is made anew each time. What making it counted is kept
        # with it and counted again at each use.
        key = (
            service,
            method_new,
            method_old,
            get(attr.HTTP_METHOD_ORIGINAL),
            route,
            raw_status,
            raw_status.__class__,
            status_error,
            data_tags,
        )
        cacheable = route.__class__ is str or route is None
        try:
            cached = self._tagsets.get(key) if cacheable else None
        except TypeError:  # unhashable
            cacheable = False
            cached = None
        if cached is None:
            if route.__class__ is str and len(route) > LONGEST_ROUTE:  # before any templating
                # (never cached: a hit needs no look). Its points are refused: a failed
                # request's two, as the encoder would count them.
                status = _status(raw_status, [])
                failed = status_error or error_code is not None or (status or 0) >= 400
                self.counts[Reason.KEY_TOO_LONG] += 2 if failed else 1
                return []
            cached = self._tagset(attributes, service, raw_status, status_error, data)
            # Only a tag set made of the key alone: a path (no http.route) or a method of the
            # client's choosing goes through the per-service route budget every time.
            if cacheable and cached[3] and self._tagset_limit:
                if len(self._tagsets) >= self._tagset_limit:
                    self._tagsets.clear()
                self._tagsets[key] = cached
        tags, error_tags_base, status, _, problems = cached
        if problems:
            self.counts.update(problems)
        if request_id is None:
            request_id = f"{trace_id:032x}"
        duration_ns = end_ns - start_ns
        if duration_ns < 0:  # the sender's clock stepped back: the request happened all the same
            self.counts[Reason.NEGATIVE_EXECUTION_TIME] += 1
            duration_ns = 0
        fields: dict[str, FieldValue] = {
            **request_fields,
            "request_id": request_id,
            "execution_time": duration_ns / 1e9,
        }
        if data is not None and data.times:
            if request_fields and not request_fields.keys().isdisjoint(data.times):
                self.counts[Reason.ATTRIBUTE_FIELD_AND_TIME] += len(
                    request_fields.keys() & data.times.keys()
                )
            fields.update(data.times)
        time_ns = self.times.claim(start_ns, (trace_id << 64) | span_id)  # timestamps.owner_of
        requests = _point(Point, (schema.REQUESTS, tags, fields, time_ns))
        if not (status_error or error_code is not None or (status is not None and status >= 400)):
            return [requests]
        code = schema.UNKNOWN_ERROR_CODE if error_code is None else str(error_code)
        error_tags = tuple(sorted((*error_tags_base, ("error_code", code))))
        error_fields = {**request_fields, "request_id": request_id}
        return [requests, _point(Point, (schema.ERRORS, error_tags, error_fields, time_ns))]

    def _drop_tag_field_conflicts(self, data: _RequestData) -> None:
        """A name used both as a user tag and a user field (or timing): keep the tag."""
        for name in data.tags.keys() & (data.fields.keys() | data.times.keys()):
            self.counts[Reason.ATTRIBUTE_TAG_AND_FIELD] += 1
            data.fields.pop(name, None)
            data.times.pop(name, None)

    def _bounded_route(self, service: str, route: str, bounded: bool) -> str:
        """``route``, or :data:`OVERFLOW_ROUTE` once the service has ``route_limit`` others
        that the application does not bound (paths, clients' methods). The budgets remember
        ``route_budget_limit`` routes in all: past that, the least recently used services'
        are forgotten (counted), and such a service starts a new budget when it comes back."""
        if bounded:
            return route
        routes = self._routes
        seen = routes.pop(service, None)  # put back last: the most recently used
        if seen is None:
            seen = set()
        routes[service] = seen
        if route in seen:
            return route
        if len(seen) >= self._route_limit:
            self.counts[Reason.ROUTE_OVERFLOW] += 1
            return OVERFLOW_ROUTE
        seen.add(route)
        self._routes_held += 1
        while self._routes_held > self._route_budget_limit:
            oldest = next(iter(routes))
            forgotten = routes.pop(oldest)
            self._routes_held -= len(forgotten)
            self.counts[Reason.ROUTES_FORGOTTEN] += len(forgotten)
            if oldest == service:  # one service alone over the bound: it starts anew
                routes[service] = {route}
                self._routes_held += 1
                break
        return route

    def _tagset(
        self,
        attributes: Mapping[str, Any],
        service: str,
        raw_status: Any,
        status_error: bool,
        data: _RequestData | None,
    ) -> tuple[
        tuple[tuple[str, str], ...],
        tuple[tuple[str, str], ...],
        int | None,
        bool,
        tuple[Reason, ...],
    ]:
        """(requests tags, errors tags without error_code, status as int, whether the tags
        depend on nothing but the attributes that key the cache, what was counted making
        them) — the slow path."""
        found: list[Reason] = []
        method = _method(attributes, found)
        status = _status(raw_status, found)
        if status is None and status_error and method is not None:
            status = 500  # an unhandled exception: the framework answered 500 unrecorded
        route, bounded = _route(attributes, method, status, found)
        route = self._bounded_route(service, route, bounded)
        # A SERVER span without HTTP attributes (gRPC, a message consumer) has no route or
        # status: line protocol cannot carry an empty tag, so it is left out here (it is no
        # dropped value: there is none).
        base = {"service": service}
        if route:
            base["route"] = route
        if status is not None:
            base["status_code"] = str(status)
        if data is not None and data.tags:
            base = {**data.tags, **base}
        tags = tuple(sorted(base.items()))
        errors_base = tuple(item for item in tags if item[0] != "error_code")
        return tags, errors_base, status, bounded, (tuple(found) if found else _NO_PROBLEMS)
