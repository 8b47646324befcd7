"""The one way tests (and benchmarks) wait for something: poll until it is done, or fail."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

_T = TypeVar("_T")

#: Seconds between two polls.
POLL_INTERVAL = 0.05


def wait_until(
    probe: Callable[[], _T],
    done: Callable[[_T], Any] = bool,
    timeout: float = 60.0,
    what: str = "the condition",
    *,
    interval: float = POLL_INTERVAL,
) -> _T:
    """Call ``probe`` until ``done(value)`` (by default: until the value is truthy); return the
    value. After ``timeout`` seconds fail with an AssertionError naming ``what`` and the last
    value."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if done(value):
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not done after {timeout:g} s; last value: {value!r}")
        time.sleep(interval)
