"""Fork safety: each forked child delivers through its own spool and worker; nothing lost or
written twice, also when a child exits without flushing."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import weakref
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # forked children in a child process

SCRIPT = textwrap.dedent(
    """
    import multiprocessing, os, sys
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    import otel_luna
    from otel_luna import LunaSpanExporter, Settings
    from otel_luna.delivery import _writer as delivery

    delivery.ADOPT_INTERVAL = 0.2
    target, spool = sys.argv[1], sys.argv[2]
    exporter = LunaSpanExporter(Settings.load(
        {}, endpoint="file://" + target, spool_dir=spool, flush_interval=0.1))
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("fork-test")

    def request(request_id):
        attributes = {"http.method": "GET", "http.route": "/v", "http.status_code": 200}
        with tracer.start_as_current_span("r", kind=trace.SpanKind.SERVER, attributes=attributes):
            otel_luna.set_request_id(request_id)

    for index in range(5):
        request(f"parent-{index}")

    def child(name, flush):
        for index in range(20):
            request(f"{name}-{index}")
        if flush:
            provider.force_flush()
        # multiprocessing ends the child with os._exit: no atexit, no shutdown

    context = multiprocessing.get_context("fork")
    children = [context.Process(target=child, args=(f"child{n}", n == 0)) for n in range(3)]
    for process in children:
        process.start()
    for process in children:
        process.join()
        assert process.exitcode == 0, process.exitcode
    for index in range(5):
        request(f"parent-late-{index}")
    # The parent delivers its own lines and adopts what the children left in their spools.
    import time
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        exporter.force_flush(5000)
        lines = open(target).read().count(chr(10))
        if lines >= 70:
            break
        time.sleep(0.1)
    provider.shutdown()
    """
)


def test_forked_children_deliver_everything_once(tmp_path: Path) -> None:
    """Parent and 3 forked children: every request's point exactly once, none lost."""
    target = tmp_path / "out.lp"
    spool = tmp_path / "spool"
    subprocess.run([sys.executable, "-c", SCRIPT, str(target), str(spool)], check=True, timeout=120)
    ids = Counter(
        line.split('request_id="')[1].split('"')[0] for line in target.read_text().splitlines()
    )
    expected = {f"parent-{i}" for i in range(5)} | {f"parent-late-{i}" for i in range(5)}
    expected |= {f"child{n}-{i}" for n in range(3) for i in range(20)}
    assert set(ids) == expected
    assert max(ids.values()) == 1
    leftover = [path for path in spool.rglob("*.seg") if path.stat().st_size]
    assert leftover == []


LOCK_HELD_SCRIPT = textwrap.dedent(
    """
    import os, sys, threading, time
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from otel_luna import LunaSpanExporter, Settings

    target, spool = sys.argv[1], sys.argv[2]
    exporter = LunaSpanExporter(Settings.load(
        {}, endpoint="file://" + target, spool_dir=spool, flush_interval=0.1))
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("fork-lock-test")

    # Another thread of the parent is inside export() (holds the pipeline's lock) at the fork.
    held, release = threading.Event(), threading.Event()

    def hold():
        with exporter._ingest._lock:
            held.set()
            release.wait()

    threading.Thread(target=hold, daemon=True).start()
    held.wait()
    pid = os.fork()
    if pid == 0:
        attributes = {"http.method": "GET", "http.route": "/v", "http.status_code": 200}
        with tracer.start_as_current_span("r", kind=trace.SpanKind.SERVER, attributes=attributes):
            pass
        ok = exporter.force_flush(10_000)  # export() took the lock; this delivers
        os._exit(0 if ok else 3)
    release.set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            sys.exit(os.waitstatus_to_exitcode(status))
        time.sleep(0.05)
    os.kill(pid, 9)
    sys.exit("the child's first export blocked on the lock the parent's thread held")
    """
)


def test_child_exports_although_a_parent_thread_held_the_lock_at_fork(tmp_path: Path) -> None:
    """A lock held by another thread of the parent at fork() stays held in the child unless it
    is re-created: the child's first export would block forever."""
    target = tmp_path / "out.lp"
    result = subprocess.run(
        [sys.executable, "-c", LOCK_HELD_SCRIPT, str(target), str(tmp_path / "spool")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert target.read_text().startswith("requests,route=GET:/v,")


def test_one_fork_hook_renews_modules_then_objects_newest_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """otel_luna._fork runs the modules' renewals, then each live tracked object's, in the
    reverse order they were tracked (an owner, made after what it owns, first); one that is
    gone is skipped, one that raises stops no other."""
    from otel_luna import _fork

    monkeypatch.setattr(_fork, "_modules", [])
    monkeypatch.setattr(_fork, "_objects", weakref.WeakValueDictionary())
    calls: list[str] = []

    class Thing:
        def __init__(self, name: str) -> None:
            self.name = name

        def after_fork_in_child(self) -> None:
            calls.append(self.name)
            if self.name == "bad":
                raise RuntimeError("cannot")

    first, bad, gone, last = Thing("first"), Thing("bad"), Thing("gone"), Thing("last")
    for each in (first, bad, gone, last):
        _fork.track(each)
    _fork.at_fork(lambda: calls.append("module"))
    del gone
    gc.collect()
    _fork.after_fork_in_child()
    assert calls == ["module", "last", "bad", "first"]


def test_deliveries_and_ingests_register_no_fork_hook_of_their_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Making an ingest (and its delivery) tracks both in the one hook; none registers its own."""
    from otel_luna import _fork
    from otel_luna.ingest import Ingest
    from otel_luna.settings import Settings
    from otel_luna.testing import InMemorySink

    registered: list[object] = []
    monkeypatch.setattr(os, "register_at_fork", lambda **hooks: registered.append(hooks))
    ingest = Ingest(Settings.load({}, spool="memory", flush_interval=0.05), InMemorySink())
    try:
        assert registered == []
        tracked = list(_fork._objects.values())
        assert ingest in tracked and ingest.delivery in tracked
        assert tracked.index(ingest.delivery) < tracked.index(ingest)
    finally:
        ingest.shutdown()
