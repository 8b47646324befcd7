"""The watchdog-proxy events, as data (``shared/seeds/002_*.txt``).

Every ping is ``{"topic": "watchdog-proxy", "timestamp": <epoch ms>, "event": <name>, ...}``
followed by exactly the event's fields with these JSON types. ``TAGS`` are the low-cardinality
fields that become InfluxDB tags; the rest are fields.
"""

from __future__ import annotations

from typing import Final

TOPIC: Final = "watchdog-proxy"

NEW_ITEM: Final = "new_item"
POLLER_HEARTBEAT: Final = "poller_heartbeat"
WORKER_WORKS: Final = "worker_works"

#: event → ((field, JSON type), ...) in the documented order.
EVENTS: Final[dict[str, tuple[tuple[str, type], ...]]] = {
    NEW_ITEM: (("consumer_name", str), ("watchdog_id", str), ("type", str)),
    POLLER_HEARTBEAT: (
        ("poller_id", str),
        ("items_in_queue", int),
        ("items_in_progress", int),
        ("items_in_waiting", int),
    ),
    WORKER_WORKS: (
        ("worker_id", str),
        ("consumer_name", str),
        ("watchdog_id", str),
        ("photodna_tracking_id", str),
        ("is_match", bool),
        ("is_error", bool),
        ("timing_sent", int),
        ("timing_received", int),
        ("timing_submitted", int),
    ),
}

#: Fields written as InfluxDB tags (few distinct values); everything else is a field.
TAGS: Final = frozenset({"consumer_name", "is_match", "is_error"})

__all__ = [
    "EVENTS",
    "NEW_ITEM",
    "POLLER_HEARTBEAT",
    "TAGS",
    "TOPIC",
    "WORKER_WORKS",
]
