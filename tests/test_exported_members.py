"""The public API of the core, pinned (as httpx's ``tests/test_exported_members.py`` does):
each public package's and module's ``__all__``, literally. A change to the public surface is a
change to this file, made on purpose (and to docs/api.md, which says who each name is for).

The add-ons (``otel_luna.serve``, ``.report``, ``.demo``) are built on these names only
(``tests/test_imports.py`` checks that); everything else lives in private modules (``_x.py``).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import otel_luna

#: ``__all__`` of every public module of the core, sorted.
EXPORTED: dict[str, list[str]] = {
    "otel_luna": [
        "LunaMetricExporter",
        "LunaSpanExporter",
        "Point",
        "Settings",
        "SettingsError",
        "add_fields",
        "add_tags",
        "flush",
        "monitor_time",
        "record_license",
        "record_usages",
        "set_error",
        "set_request_id",
    ],
    "otel_luna.delivery": [
        "Due",
        "RateLog",
        "SpoolRefused",
        "SpoolUnavailable",
        "destination_name",
        "destination_slug",
        "make_directories",
        "open_delivery",
        "process_directories",
        "read_small",
        "read_stats",
        "replace_file",
    ],
    "otel_luna.encoding": [
        "InvalidPointError",
        "LineProtocolEncoder",
        "LineProtocolSyntaxError",
        "LineReader",
        "PingEncoder",
        "parse_line",
        "parse_lines",
        "split_lines",
    ],
    "otel_luna.ingest": [
        "DeliveryState",
        "Ingest",
        "METRICS",
        "Result",
        "SpanFilter",
        "TRACES",
    ],
    "otel_luna.mapping": [
        "ESTIMATOR",
        "HTTP_ROUTE",
        "MAPPED_PREFIXES",
        "ROUTE_FALLBACK_KEYS",
        "RequestMapper",
        "SERVER_SPAN_KEYS",
        "SERVICE_NAME",
        "SpanRecord",
        "USAGES_INSTRUMENT",
        "UsageMapper",
        "UsageSample",
        "WatchdogMapper",
        "origin_of",
        "resource_identity",
        "stream_of",
    ],
    "otel_luna.outcomes": [
        "Counting",
        "Counts",
        "Outcome",
        "Reason",
        "describe",
        "problems",
        "rejected",
    ],
    "otel_luna.profiles": [
        "Encoder",
        "JSON",
        "LINE_PROTOCOL",
        "LUNA",
        "PROFILES",
        "Profile",
        "SpanMapper",
        "WATCHDOG",
        "profile_of",
    ],
    "otel_luna.redact": [
        "MASK",
        "basic_credentials",
        "credential_forms",
        "printable",
        "redact",
    ],
    "otel_luna.schema": [
        "FieldValue",
        "Point",
    ],
    "otel_luna.schema.luna": [
        "DEFAULT_FIELD_TYPE",
        "ERRORS",
        "ERROR_FIELDS",
        "ERROR_TAGS",
        "ESTIMATORS",
        "FIELD_TYPE_FIRST_WORDS",
        "FIELD_TYPE_LAST_WORDS",
        "FIELD_TYPE_NAMES",
        "LICENSE_MESSAGE_SEPARATOR",
        "LICENSE_STATUSES",
        "LICENSING",
        "REQUESTS",
        "REQUEST_FIELDS",
        "REQUEST_TAGS",
        "STAGE_TIME_FIELDS",
        "UNKNOWN_ERROR_CODE",
        "USAGES_STATISTIC",
        "USAGES_SUFFIX",
        "field_type",
        "fitted",
        "name_words",
    ],
    "otel_luna.schema.watchdog": [
        "EVENTS",
        "NEW_ITEM",
        "POLLER_HEARTBEAT",
        "TAGS",
        "TOPIC",
        "WORKER_WORKS",
    ],
    "otel_luna.selfmetrics": [
        "EVENTS_HELP",
        "EventTotals",
        "POINTS_HELP",
        "PointTotals",
        "SPOOL_HELP",
        "Source",
        "register",
        "totals",
    ],
    "otel_luna.settings": [
        "OTEL_EXPORTER_LUNA_CONFIG",
        "Row",
        "Setting",
        "Settings",
        "SettingsError",
        "describe",
        "env_name",
        "number",
        "parse_address",
        "parse_bool",
        "parse_header_text",
        "parse_port",
        "parse_text",
        "setting",
    ],
    "otel_luna.sinks": [
        "Failure",
        "JSON",
        "LINE_PROTOCOL",
        "SINK_GROUP",
        "Sink",
        "SinkError",
        "SinkLike",
        "basic_auth",
        "classify",
        "classify_connection_error",
        "connection_trouble",
        "file_path",
        "load_sink",
        "parse_retry_after",
        "server_reason",
        "suppress_instrumentation",
    ],
    "otel_luna.testing": [
        "InMemorySink",
        "in_memory_exporter",
    ],
    "otel_luna.watchdog": [
        "new_item",
        "poller_heartbeat",
        "worker_works",
    ],
}

#: Public modules that are data (the series' declarations), read by name, not re-exported.
#: The add-ons and what ships for them: not the core's API.
ADD_ONS = ("otel_luna.serve", "otel_luna.report", "otel_luna.demo", "otel_luna.examples")
#: Packages whose ``__init__`` has code of its own besides re-exports (imports of its own).
NOT_FACADES = {"otel_luna.watchdog"}


def public_modules() -> list[str]:
    """Every module of the core whose dotted name has no part starting with ``_``."""
    names = ["otel_luna"]
    for found in pkgutil.walk_packages(otel_luna.__path__, "otel_luna."):
        parts = found.name.split(".")
        if any(part.startswith("_") for part in parts):
            continue
        if found.name.startswith(ADD_ONS):
            continue
        names.append(found.name)
    return sorted(names)


@pytest.mark.parametrize("name", sorted(EXPORTED))
def test_exported_members(name: str) -> None:
    """The module's ``__all__`` is the pinned list, with no name twice, and each name exists."""
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert sorted(exported) == EXPORTED[name]
    assert len(set(exported)) == len(exported)
    missing = [each for each in exported if not hasattr(module, each)]
    assert missing == []


#: The pinned packages (not modules, whose imports are their own) that only re-export.
FACADES = sorted(
    name
    for name in set(EXPORTED) - NOT_FACADES
    if hasattr(importlib.import_module(name), "__path__")
)


@pytest.mark.parametrize("name", FACADES)
def test_a_package_has_no_public_name_outside_its_all(name: str) -> None:
    """A package's ``__init__`` only re-exports: every public attribute that is not a
    submodule is in ``__all__`` (a name imported for its own use starts with ``_``)."""
    module = importlib.import_module(name)
    public = {
        each
        for each, value in vars(module).items()
        if not each.startswith("_") and not inspect.ismodule(value) and each != "annotations"
    }
    assert sorted(public - set(module.__all__)) == []


def test_every_public_module_of_the_core_is_pinned() -> None:
    """A new public module (no ``_`` in its name) of the core is pinned here (the schema's data
    modules too: their names are what an add-on may read)."""
    assert sorted(public_modules()) == sorted(EXPORTED)


def test_the_public_names_are_documented() -> None:
    """docs/api.md names every exported name (as ``name``)."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text()
    missing = [
        f"{module}.{each}"
        for module, names in EXPORTED.items()
        for each in names
        if f"`{each}" not in text
    ]
    assert missing == []
