"""The one fork hook of the process: after ``fork()`` the child renews what it holds, in order.

A child has none of its parent's threads, but every lock one of them held at the fork stays
held, and every connection pool is shared with the parent. So the child renews, before anything
else runs in it (``os.register_at_fork(after_in_child=...)``, registered once, here):

1. the module-level locks, each module's :func:`at_fork` function, in the order the modules
   registered them (import order);
2. every live object that :func:`track` was given, the newest first: each ingest (its lock and
   counters), then each delivery (:class:`~otel_luna.delivery._writer.BatchWriter`: its
   counters, spool, dead-letter file and sink, then a worker thread of its own). Each one's
   ``after_fork_in_child()`` renews what it owns and nothing else. Newest first because an
   owner is made after what it owns: an ingest renews its lock before its delivery starts the
   worker that reads the ingest's counters under that lock.

Objects are held by weak references: one that is gone is not renewed. A renewal that raises is
logged and the others still run.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable
from itertools import count
from typing import Protocol

_logger = logging.getLogger(__name__)


class Renewable(Protocol):
    """What :func:`track` takes: it renews its locks, threads and connections in a forked child."""

    def after_fork_in_child(self) -> None: ...


_modules: list[Callable[[], None]] = []
_objects: weakref.WeakValueDictionary[int, Renewable] = weakref.WeakValueDictionary()
_made = count()


def at_fork(renew: Callable[[], None]) -> Callable[[], None]:
    """Run ``renew`` (a module's: new module-level locks) in every forked child, before the
    objects' renewals. Usable as a decorator."""
    _modules.append(renew)
    return renew


def track(renewable: Renewable) -> None:
    """Call ``renewable.after_fork_in_child()`` in every forked child while it lives."""
    _objects[next(_made)] = renewable


def after_fork_in_child() -> None:
    """What the hook runs: the modules' renewals, then the objects' (see the module)."""
    for renew in list(_modules):
        _run(renew)
    for renewable in reversed(list(_objects.values())):  # a dict: newest last, so first here
        _run(renewable.after_fork_in_child)


def _run(renew: Callable[[], None]) -> None:
    try:
        renew()
    except Exception:
        _logger.exception("otel-luna: renewing %r after fork failed", renew)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=after_fork_in_child)
