"""Exit by signal: what the SDK still holds reaches the spool when the process gets SIGTERM.

Kubernetes stops a pod with SIGTERM. A process that dies of it never runs ``atexit``, so the
spans waiting in the SDK's ``BatchSpanProcessor`` and the metrics not yet collected would be
lost; uvicorn, for one, shuts down gracefully, restores the handler it found and raises the
signal again, so even a served app dies of it (status 143).

:func:`watch` (called by both exporters) installs, once per process and only from the main
thread, a SIGTERM handler that chains to the one it replaced:

1. within the grace time (``SHUTDOWN_TIMEOUT``), in helper threads joined with a deadline (the
   main thread may have been interrupted holding a lock they need): the global tracer provider
   is flushed and every metric reader of the global meter provider collects, so what was
   recorded before the signal is exported — into the spool, which is durable;
2. then, by what was installed before:

   * a Python callable (the app's or the server's own handler): it is called and its
     graceful shutdown goes on; ``atexit`` (or a later re-raise) delivers the spool;
   * ``SIG_IGN``: nothing more, the process goes on;
   * ``SIG_DFL`` (or a handler installed outside Python): every live pipeline delivers within
     what is left of the grace time, then the default action is restored and the signal raised
     again, so the process still dies of SIGTERM (status 143). What was not delivered in time
     stays in the disk spool and is delivered by the next process of the same destination.

A SIGTERM arriving while the handler is flushing does not start another flush: it goes to the
previous handler at once when that is a Python callable, else the handler already running
re-raises it.

``otel-luna serve`` does not use this module: it has its own handler.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Protocol

from opentelemetry import metrics, trace

from otel_luna import _fork
from otel_luna.settings._settings import Settings

_logger = logging.getLogger(__name__)

SIGNAL = signal.SIGTERM

Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None
"""What :func:`signal.getsignal` returns: a callable, ``SIG_DFL``, ``SIG_IGN`` or ``None``."""


class Flushable(Protocol):
    """An ingest (one per destination, :class:`~otel_luna.ingest.Ingest`), called a pipeline
    here: delivers what it has spooled within ``timeout`` seconds."""

    def force_flush(self, timeout: float | None) -> bool: ...


# What the handler does after the flush, by the kind of handler it replaced.
CHAIN = "chain"  # a Python callable: call it and return
IGNORE = "ignore"  # SIG_IGN: return
DELIVER_AND_RAISE = "deliver_and_raise"  # SIG_DFL / None: deliver, restore SIG_DFL, re-raise


def action_for(previous: Handler) -> str:
    """What follows the flush when ``previous`` was the handler before ours."""
    if previous is signal.SIG_IGN or previous == signal.SIG_IGN:
        return IGNORE
    if previous is signal.SIG_DFL or previous == signal.SIG_DFL or previous is None:
        return DELIVER_AND_RAISE
    if callable(previous):
        return CHAIN
    return DELIVER_AND_RAISE  # an unknown integer disposition: be the default action


def run_bounded(tasks: Sequence[Callable[[], object]], deadline: float, name: str) -> bool:
    """Run each task in a daemon thread of its own; wait for them until ``deadline``.

    ``True`` when every task finished in time. A task that raises is logged, and counts as
    finished. The caller never blocks past the deadline, whatever locks the tasks wait for.
    """

    def guarded(task: Callable[[], object]) -> None:
        try:
            task()
        except Exception:
            _logger.exception("otel-luna: %s failed", name)

    threads = []
    for task in tasks:
        thread = threading.Thread(
            target=guarded, args=(task,), name=f"otel-luna-{name}", daemon=True
        )
        try:
            thread.start()
        except RuntimeError as error:  # interpreter shutting down: no new threads
            _logger.warning("otel-luna: %s skipped: %s", name, error)
            return False
        threads.append(thread)
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return not any(thread.is_alive() for thread in threads)


def _millis_left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic()) * 1000


def flush_traces(deadline: float) -> None:
    """Export the spans the global tracer provider's processors hold (into our spool)."""
    flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    if callable(flush):
        flush(int(_millis_left(deadline)))


def collect_metrics(deadline: float) -> None:
    """Have every reader of the global meter provider collect and export now (into our spool).

    ``collect()`` rather than the provider's ``force_flush()``: the latter then waits for every
    exporter to deliver, which would hold the app's own shutdown for as long as the database is
    unreachable. The provider's ``force_flush()`` is used only when its readers cannot be seen.
    """
    provider = metrics.get_meter_provider()
    # The SDK's MeterProvider keeps its readers here (no public accessor).
    readers = getattr(provider, "_metric_readers", None)
    if readers is None:
        flush = getattr(provider, "force_flush", None)
        if callable(flush):
            flush(_millis_left(deadline))
        return
    for reader in readers:
        collect = getattr(reader, "collect", None)
        if callable(collect):
            try:
                collect(timeout_millis=_millis_left(deadline))
            except Exception:
                _logger.exception("otel-luna: collecting %r at SIGTERM failed", reader)


def flush_sdk(deadline: float) -> bool:
    """Step 1: what the SDK holds goes to the exporters, within ``deadline``."""
    return run_bounded(
        [lambda: flush_traces(deadline), lambda: collect_metrics(deadline)], deadline, "sdk-flush"
    )


def flush_pipelines(pipelines: Iterable[Flushable], deadline: float) -> bool:
    """Every pipeline delivers its spool, all at once, within ``deadline``; ``False`` unless
    each one said it delivered everything."""

    failed: list[Flushable] = []

    def flush(pipeline: Flushable) -> Callable[[], object]:
        def run() -> None:
            if not pipeline.force_flush(max(0.0, deadline - time.monotonic())):
                failed.append(pipeline)

        return run

    finished = run_bounded([flush(pipeline) for pipeline in pipelines], deadline, "deliver")
    return finished and not failed


def raise_default(signum: int) -> None:
    """Restore the default action of ``signum`` and raise it: the process dies of it."""
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


@dataclass
class Watcher:
    """The pipelines of this process and the SIGTERM handler that flushes them.

    One per process (:data:`WATCHER`); tests make their own and call :meth:`handle` directly.
    ``flush_sdk``, ``flush_pipelines`` and ``raise_default`` are the steps, replaceable there.
    """

    flush_sdk: Callable[[float], bool] = flush_sdk
    flush_pipelines: Callable[[Iterable[Flushable], float], bool] = flush_pipelines
    raise_default: Callable[[int], None] = raise_default
    grace: float = 0.0
    previous: Handler = None
    installed: bool = False
    handling: bool = False
    pipelines: weakref.WeakSet[Any] = field(default_factory=weakref.WeakSet)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def after_fork_in_child(self) -> None:
        # A lock held by another thread of the parent would stay held forever in the child.
        self.lock = threading.Lock()
        self.handling = False

    def watch(self, pipeline: Flushable, settings: Settings) -> bool:
        """Track ``pipeline``; install the handler if ``settings.handle_sigterm`` allows and
        this is the main thread. ``True`` when the handler is installed (now or before)."""
        with self.lock:
            self.pipelines.add(pipeline)
            if not settings.handle_sigterm:
                return self.installed
            self.grace = max(self.grace, settings.shutdown_timeout)
            if self.installed:
                return True
            if threading.current_thread() is not threading.main_thread():
                return False
            try:
                previous = signal.getsignal(SIGNAL)
                signal.signal(SIGNAL, self.on_signal)
            except (ValueError, OSError) as error:  # not the main interpreter, ...
                _logger.warning("otel-luna: cannot handle SIGTERM: %s", error)
                return False
            self.previous = previous
            self.installed = True
            return True

    def live_pipelines(self) -> list[Flushable]:
        """A snapshot of the pipelines still alive."""
        with self.lock:
            return list(self.pipelines)

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        """The installed handler (runs in the main thread)."""
        if self.handling:  # a second signal while the first is being handled
            previous = self.previous
            if action_for(previous) == CHAIN and callable(previous):
                previous(signum, frame)
            return
        self.handling = True
        try:
            self.handle(signum, frame)
        finally:
            self.handling = False

    def handle(self, signum: int, frame: FrameType | None) -> str:
        """Flush, then chain, ignore, or deliver and re-raise; returns which (if it returns)."""
        deadline = time.monotonic() + self.grace
        previous = self.previous
        action = action_for(previous)
        if not self.flush_sdk(deadline):
            self._warn("exporting what the SDK held")
        if action == CHAIN and callable(previous):
            previous(signum, frame)
            return action
        if action == IGNORE:
            return action
        pipelines: list[Flushable] = []
        # The snapshot takes our lock: never in the main thread, which may hold it.
        run_bounded([lambda: pipelines.extend(self.live_pipelines())], deadline, "pipelines")
        if not self.flush_pipelines(pipelines, deadline):
            self._warn("delivering")
        self.raise_default(signum)
        return action

    def _warn(self, what: str) -> None:
        with contextlib.suppress(Exception):
            _logger.warning(
                "otel-luna: SIGTERM: %s took longer than %.1f s (SHUTDOWN_TIMEOUT); what was "
                "not delivered stays in the spool for the next start",
                what,
                self.grace,
            )


WATCHER = Watcher()
_fork.at_fork(WATCHER.after_fork_in_child)


def flush(timeout: float = 10.0) -> bool:
    """Export what the SDK holds and deliver every exporter's spool, within ``timeout`` seconds;
    ``True`` when all of it was done in time. Never raises, never waits past the timeout.

    For an application whose own SIGTERM handler ends the process without ``atexit`` (restores
    ``SIG_DFL`` and raises the signal again, or ``os._exit``): call it there first. What is not
    delivered in time stays in the disk spool for the next start.
    """
    try:
        seconds = max(0.0, float(timeout))
    except (TypeError, ValueError):
        seconds = 10.0  # flush(None) and the like: the default, never an exception
    deadline = time.monotonic() + (seconds if seconds == seconds else 10.0)
    exported = flush_sdk(deadline)
    pipelines: list[Flushable] = []
    run_bounded([lambda: pipelines.extend(WATCHER.live_pipelines())], deadline, "pipelines")
    return flush_pipelines(pipelines, deadline) and exported


def watch(pipeline: Flushable, settings: Settings) -> bool:
    """Track ``pipeline`` and install the SIGTERM handler of this process (see the module)."""
    return WATCHER.watch(pipeline, settings)
