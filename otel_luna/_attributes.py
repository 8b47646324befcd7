"""Span attribute names that carry LUNA monitoring data.

An application in any language produces the LUNA series by setting these attributes on the
request's span (or on any span below it in the same process: they are merged upward into the
nearest SERVER span). The Python helpers in :mod:`otel_luna` are thin wrappers that set them.
"""

from __future__ import annotations

#: String. The request id written in the ``request_id`` field. Default: the trace id (32 hex chars).
REQUEST_ID = "luna.request_id"
#: Integer. The LUNA error code of a failed request; setting it marks the request as failed.
ERROR_CODE = "luna.error_code"
#: Prefix. ``luna.tag.<name>`` adds tag ``<name>`` to the ``requests`` and ``errors`` points.
TAG_PREFIX = "luna.tag."
#: Prefix. ``luna.field.<name>`` adds field ``<name>`` to the ``requests`` and ``errors`` points.
FIELD_PREFIX = "luna.field."
#: Prefix. ``luna.time.<name>`` (float seconds) adds stage timing field ``<name>`` to the
#: ``requests`` point. Values from several spans of one request are summed.
TIME_PREFIX = "luna.time."
#: Prefix. ``luna.usages.<estimator>`` (integer >= 0): SDK estimations the request performed,
#: written as field ``<estimator>_usages`` of the request's ``usages_statistic`` point. Values
#: from several spans of one request are summed.
USAGES_PREFIX = "luna.usages."

LUNA_PREFIX = "luna."

# HTTP semantic conventions, new (stable) spelling first, then the old one.
HTTP_METHOD = ("http.request.method", "http.method")
HTTP_METHOD_ORIGINAL = "http.request.method_original"
HTTP_ROUTE = "http.route"
HTTP_STATUS_CODE = ("http.response.status_code", "http.status_code")
HTTP_PATH = ("url.path", "http.target")
HTTP_URL = ("url.full", "http.url")

SERVICE_NAME = "service.name"

#: Prefix of the watchdog events' attributes (``watchdog.event``, ``watchdog.<field>``).
WATCHDOG_PREFIX = "watchdog."

# -- what the mapping reads of a span ------------------------------------------------------------
# The OTLP receiver converts only these attributes (serve/_otlp.py); the in-process exporters
# hand over the SDK's dict as it is. A mapper that reads another attribute must add it here
# (tests/mapping/test_otlp_paths.py checks the mappers against these).
#: Every attribute under these prefixes, of any span.
MAPPED_PREFIXES = (LUNA_PREFIX, WATCHDOG_PREFIX)
#: These of a SERVER span: its method, route and status (``mapping/_requests.py``).
SERVER_SPAN_KEYS = frozenset((*HTTP_METHOD, HTTP_METHOD_ORIGINAL, HTTP_ROUTE, *HTTP_STATUS_CODE))
#: And these of a SERVER span whose ``http.route`` is missing or empty: the route is made from
#: its path then.
ROUTE_FALLBACK_KEYS = frozenset((*HTTP_PATH, *HTTP_URL))

# -- usages_statistic outside a request (or in interval mode): an OpenTelemetry counter ---------
#: Monotonic counter of SDK estimations; one data point stream per estimator.
USAGES_INSTRUMENT = "luna.usages"
#: Attribute of ``luna.usages`` naming the estimator (``face_detector``, ...).
ESTIMATOR = "luna.estimator"

# -- licensing: one span per licence check -------------------------------------------------------
#: Name of the span :func:`otel_luna.record_license` starts and ends at once.
LICENSE_SPAN = "luna.license_check"
#: String, one of ok, warning, error, exception. Its presence makes a span a licence check.
LICENSE_STATUS = "luna.license.status"
#: Integer: liveness estimations left before the licence expires.
LICENSE_LIVENESS_BALANCE = "luna.license.liveness_balance"
#: String array: licence warning messages.
LICENSE_WARNINGS = "luna.license.warnings"
#: String array: licence error messages.
LICENSE_ERRORS = "luna.license.errors"
