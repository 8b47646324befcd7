"""Times and durations as the reports read and print them: ``--since`` parsed, the window it
opens, epoch milliseconds and durations shown."""

from __future__ import annotations

import re
import time

__all__ = [
    "MAX_DURATION_NS",
    "SECOND_NS",
    "duration_text",
    "iso_ms",
    "parse_duration",
    "width_text",
    "window_start",
]

SECOND_NS = 1_000_000_000
_DURATION_UNITS_NS = {
    "ms": 1_000_000,
    "s": SECOND_NS,
    "m": 60 * SECOND_NS,
    "h": 3600 * SECOND_NS,
    "d": 86400 * SECOND_NS,
    "w": 7 * 86400 * SECOND_NS,
}
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w)")
#: The longest ``--since``: 100 years (36525 d); beyond, InfluxDB refuses the time and a file's
#: window would start before year 1.
MAX_DURATION_NS = 36525 * _DURATION_UNITS_NS["d"]


def parse_duration(text: str) -> int:
    """``90s``, ``15m``, ``2h``, ``7d``, ``1w``, ``1h30m``, ``500ms`` → nanoseconds (> 0, at
    most :data:`MAX_DURATION_NS`)."""
    compact = text.strip().lower()
    if not compact or _DURATION.sub("", compact):
        raise ValueError(f"not a duration: {text!r} (e.g. 90s, 15m, 2h, 1d, 1h30m)")
    total = sum(int(n) * _DURATION_UNITS_NS[unit] for n, unit in _DURATION.findall(compact))
    if total <= 0:
        raise ValueError(f"the duration must be > 0, got {text!r}")
    if total > MAX_DURATION_NS:
        raise ValueError(f"the duration must be at most 100 years (36525d), got {text!r}")
    return total


def window_start(since_ns: int | None, now_ns: int | None = None) -> int | None:
    """The start of the last ``since_ns`` before ``now_ns`` (default: now); ``None``: all."""
    if since_ns is None:
        return None
    return (time.time_ns() if now_ns is None else now_ns) - since_ns


def iso_ms(epoch_ms: int | None) -> str:
    """``2026-11-30T04:29:44.123Z``; ``-`` for ``None``."""
    if epoch_ms is None:
        return "-"
    seconds, millis = divmod(epoch_ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def duration_text(seconds: float | None) -> str:
    """``12.5 s``, ``3.2 min``, ``4.0 h``; ``-`` for ``None``."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def width_text(nanoseconds: int | None) -> str:
    """A bucket width: ``500 ms``, ``15 s``, ``5 min``, ``2 h``, ``1 d``; ``-`` for none."""
    if not nanoseconds:
        return "-"
    if nanoseconds < SECOND_NS:
        return f"{nanoseconds // 1_000_000} ms"
    seconds = nanoseconds // SECOND_NS
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"
