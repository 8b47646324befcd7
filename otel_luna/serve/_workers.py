"""``otel-luna serve --workers N``: N serve processes on the same ports, and their supervisor.

One serve process uses about one core (its Python threads share one interpreter lock). With
``N`` > 1 the command becomes a **supervisor** that starts ``N`` **workers**: fresh interpreters
(``python -m otel_luna.serve._workers``, never a fork of a process holding grpc threads), each
a whole :class:`~otel_luna.serve._main.Server` listening on the same gRPC and HTTP ports with
``SO_REUSEPORT``, so that the kernel spreads new connections over them. Each worker has its own
spool directory under the same spool root (the :class:`~otel_luna.delivery._disk_spool.DiskSpool`
design: ``<spool_dir>/<destination>/<pid>-<random>/``, locked while its process lives), so the
directory of a worker that died is adopted and delivered by a living one (within
``ADOPT_INTERVAL``) or by its replacement at its start.

The supervisor:

* binds the ports first (port 0: the kernel picks one) with ``SO_REUSEPORT`` and keeps those
  sockets bound, never listening, so the ports stay reserved while workers come and go; then
  passes the real ports to the workers and prints them once every worker is ready;
* restarts a worker that dies, logs its exit status and counts the restarts (in its log, in the
  ``stopped`` line, and in ``serve-supervisor-<pid>.json`` under the spool directory, which
  ``otel-luna status`` shows); a worker that keeps dying soon after its start is restarted
  after a delay that doubles up to :data:`BACKOFF_MAX`;
* on SIGTERM or SIGINT sends SIGTERM to every worker, waits for their graceful stop (each
  drains its requests and flushes its spool, as a single serve does), then exits 0.

A worker gets ``PR_SET_PDEATHSIG``: if the supervisor is killed, its workers get SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from otel_luna.delivery import SpoolRefused, make_directories, replace_file
from otel_luna.serve._settings import ServeSettings
from otel_luna.serve._startup import EXIT_USAGE, check_tls_files, host_port, listening
from otel_luna.serve._supervisor_status import STATUS_PREFIX, alive, status_files
from otel_luna.settings import SettingsError

_logger = logging.getLogger(__name__)

#: Seconds a worker may take from its start to listening on both ports.
START_TIMEOUT = 60.0
#: A worker that dies sooner than this after its start is failing, not unlucky.
QUICK_EXIT = 10.0
#: Delays before restarting a worker that keeps failing: the first quick failure is restarted
#: at once, the next after BACKOFF_INITIAL, doubling up to BACKOFF_MAX.
BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 30.0
#: Seconds between the supervisor's looks at its workers.
TICK = 0.2
#: Beyond a worker's own graceful stop (gRPC grace + the spool's SHUTDOWN_TIMEOUT), seconds
#: the supervisor waits before it kills the worker.
STOP_MARGIN = 15.0
#: The gRPC grace of :meth:`otel_luna.serve._main.Server.stop`.
GRPC_GRACE = 5.0
_READY = b"ready\n"


class _SaidWhy(RuntimeError):
    """A worker could not start, and said why in one line (a setting it cannot use)."""


def worker_count(setting: int) -> int:
    """Workers for ``SERVE_WORKERS``: the number itself, or for 0 the CPUs this process may
    run on (its affinity, which container CPU sets narrow; not a CFS quota)."""
    if setting > 0:
        return setting
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def reserve_port(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (0: any free port) with ``SO_REUSEPORT``, not
    listening: it holds the port for the workers, which bind it too and listen."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def describe_exit(returncode: int) -> str:
    """``exited with status 1`` or ``was killed by SIGKILL``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with status {returncode}"


class _Worker:
    """One worker process and the read end of the pipe it says ``ready`` on."""

    def __init__(self, slot: int, popen: subprocess.Popen[bytes], ready_fd: int) -> None:
        self.slot = slot
        self.popen = popen
        self.started = time.monotonic()
        self.ready = False
        self._ready_fd: int | None = ready_fd

    @property
    def pid(self) -> int:
        return self.popen.pid

    def check_ready(self, timeout: float = 0.0) -> bool | None:
        """True once it said ready; None while it may still; False if it never will (its
        end of the pipe closed without the word: it failed or exited)."""
        if self.ready:
            return True
        if self._ready_fd is None:
            return False
        poller = select.poll()  # not select(): serve may hold descriptors past FD_SETSIZE
        poller.register(self._ready_fd, select.POLLIN)
        if not poller.poll(timeout * 1000):
            return None
        data = os.read(self._ready_fd, len(_READY))
        self.close_pipe()
        self.ready = data == _READY
        return self.ready

    def close_pipe(self) -> None:
        if self._ready_fd is not None:
            os.close(self._ready_fd)
            self._ready_fd = None


class Supervisor:
    """Starts, watches, restarts and stops the workers (see the module doc)."""

    def __init__(
        self,
        settings: ServeSettings,
        overrides: Mapping[str, Any],
        workers: int,
        *,
        argv: Sequence[str] | None = None,
    ) -> None:
        self.settings = settings
        self.overrides = dict(overrides)
        self.count = workers
        #: The worker command before its arguments (tests may run another one).
        self.argv = list(argv or [sys.executable, "-m", __name__])
        self.workers: list[_Worker | None] = [None] * workers
        self.restarts = 0
        self.last_exit: dict[str, Any] | None = None
        self._failures = [0] * workers
        self._restart_at = [0.0] * workers
        self._stop = threading.Event()
        self._status_path = Path(settings.spool_dir) / f"{STATUS_PREFIX}{os.getpid()}.json"
        self._started = time.time()

    # -- starting --------------------------------------------------------------------------

    def _spawn(self, slot: int) -> _Worker:
        read_fd, write_fd = os.pipe()
        argv = [
            *self.argv,
            "--slot",
            str(slot),
            "--ready-fd",
            str(write_fd),
            "--parent",
            str(os.getpid()),
            "--overrides",
            json.dumps(self.overrides),
        ]
        try:
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, pass_fds=(write_fd,))
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        worker = _Worker(slot, popen, read_fd)
        self.workers[slot] = worker
        return worker

    def start(self) -> None:
        """Start every worker and wait until each listens; ``RuntimeError`` (every worker
        stopped) if one cannot start."""
        # The first alone, then the others: a setting that keeps one from starting keeps all
        # from starting, and is said once (the first's one line, exit status 2: _SaidWhy).
        deadline = time.monotonic() + START_TIMEOUT
        for group in (range(min(1, self.count)), range(1, self.count)):
            for slot in group:
                self._spawn(slot)
            for slot in group:
                worker = self.workers[slot]
                assert worker is not None
                self._check_started(worker, deadline)
        self._remove_gone_supervisors()
        self._write_status()

    def _check_started(self, worker: _Worker, deadline: float) -> None:
        """Wait until ``worker`` listens; else stop every worker and raise ``RuntimeError``."""
        ready = worker.check_ready(max(0.0, deadline - time.monotonic()))
        if ready:
            return
        status = None
        if ready is None:
            what = f"did not start within {START_TIMEOUT:.0f} s"
        else:
            try:
                status = worker.popen.wait(timeout=5)
                what = describe_exit(status)
            except subprocess.TimeoutExpired:
                what = "failed to start"
        self.stop()
        if status == EXIT_USAGE:
            raise _SaidWhy
        raise RuntimeError(f"worker {worker.slot} (pid {worker.pid}) {what}")

    def _remove_gone_supervisors(self) -> None:
        """Delete the status files of killed supervisors: by the name of the file (a pid in
        digits, checked), relative to the spool directory, never through a link."""
        root = self._status_path.parent
        try:
            root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            for name, pid in status_files(root_fd):
                if not alive(pid):
                    with contextlib.suppress(OSError):
                        os.unlink(name, dir_fd=root_fd)
        finally:
            os.close(root_fd)

    # -- watching --------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Watch the workers until :meth:`request_stop`; restart those that die."""
        while not self._stop.wait(TICK):
            self.check()

    def check(self) -> None:
        """One look at every worker: restart the dead (when their delay is over), note the
        ready, kill those that never get ready."""
        now = time.monotonic()
        changed = False
        for slot, worker in enumerate(self.workers):
            if self._stop.is_set():
                return
            if worker is None:
                if now >= self._restart_at[slot]:
                    try:
                        started = self._spawn(slot)
                    except OSError as error:  # no memory, no descriptors left, ...
                        self._restart_at[slot] = now + BACKOFF_MAX
                        _logger.error(
                            "cannot restart worker %d: %s; next try in %.0f s",
                            slot,
                            error,
                            BACKOFF_MAX,
                        )
                        continue
                    _logger.warning("worker %d restarted as pid %d", slot, started.pid)
                    changed = True
                continue
            code = worker.popen.poll()
            if code is not None:
                self._died(worker, code, now)
                changed = True
            elif not worker.ready:
                ready = worker.check_ready()
                if ready is None and now - worker.started > START_TIMEOUT:
                    _logger.warning(
                        "worker %d (pid %d) did not start within %.0f s; killing it",
                        slot,
                        worker.pid,
                        START_TIMEOUT,
                    )
                    worker.popen.kill()
        if changed:
            self._write_status()

    def _died(self, worker: _Worker, code: int, now: float) -> None:
        slot = worker.slot
        worker.close_pipe()
        self.workers[slot] = None
        self.restarts += 1
        lived = now - worker.started
        self._failures[slot] = self._failures[slot] + 1 if lived < QUICK_EXIT else 1
        failures = self._failures[slot]
        delay = 0.0 if failures <= 1 else min(BACKOFF_MAX, BACKOFF_INITIAL * 2 ** (failures - 2))
        self._restart_at[slot] = now + delay
        status = describe_exit(code)
        self.last_exit = {
            "worker": slot,
            "pid": worker.pid,
            "status": status,
            "returncode": code,
            "at": time.time(),
        }
        when = "now" if delay == 0 else f"in {delay:.0f} s ({failures} quick failures in a row)"
        _logger.warning(
            "worker %d (pid %d) %s after %.1f s; restarting it %s (restarts so far: %d)",
            slot,
            worker.pid,
            status,
            lived,
            when,
            self.restarts,
        )

    # -- stopping --------------------------------------------------------------------------

    def stop(self) -> None:
        """SIGTERM to every worker, wait for their graceful stop, kill the ones that hang."""
        self._stop.set()
        running = [w for w in self.workers if w is not None and w.popen.poll() is None]
        for worker in running:
            with contextlib.suppress(ProcessLookupError):
                worker.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + GRPC_GRACE + self.settings.shutdown_timeout + STOP_MARGIN
        for worker in running:
            try:
                code = worker.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _logger.warning(
                    "worker %d (pid %d) did not stop; killing it", worker.slot, worker.pid
                )
                worker.popen.kill()
                code = worker.popen.wait()
            if code != 0:
                _logger.warning(
                    "worker %d (pid %d) %s", worker.slot, worker.pid, describe_exit(code)
                )
        for each in self.workers:
            if each is not None:
                each.close_pipe()
        with contextlib.suppress(OSError):
            self._status_path.unlink()

    # -- status ----------------------------------------------------------------------------

    def ready_pids(self) -> list[int | None]:
        """Each slot's worker pid, None while it is not running or not ready yet."""
        return [w.pid if w is not None and w.ready else None for w in self.workers]

    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "started": self._started,
            "workers": self.count,
            "worker_pids": [w.pid if w is not None else None for w in self.workers],
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "grpc_port": self.overrides.get("serve_grpc_port"),
            "http_port": self.overrides.get("serve_http_port"),
        }

    def _write_status(self) -> None:
        """``serve-supervisor-<pid>.json`` in the spool directory (made 0700 if missing), for
        ``otel-luna status`` (replaced atomically, mode 0600, never written through a link; a
        spool directory that cannot be written is let be)."""
        path = self._status_path
        try:
            make_directories(path.parent)
            root_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as error:
            _logger.debug("cannot write %s: %s", path, error)
            return
        try:
            replace_file(path.name, root_fd, json.dumps(self.status()).encode())
        except OSError as error:
            _logger.debug("cannot write %s: %s", path, error)
        finally:
            os.close(root_fd)


def supervise(
    settings: ServeSettings, overrides: Mapping[str, Any], workers: int, out: TextIO | None = None
) -> int:
    """Run ``otel-luna serve`` as ``workers`` processes until SIGTERM or SIGINT; the exit code.

    ``overrides`` are the settings given as flags: each worker loads its settings as the
    supervisor did (same environment, same TOML file), with these and the real ports."""
    from otel_luna.serve._health import SupervisorHealth, start_health, start_line

    out = sys.stdout if out is None else out
    host = settings.serve_host
    reserved = []
    health = None
    try:
        check_tls_files(settings)
        for name in ("serve_grpc_port", "serve_http_port"):
            port = getattr(settings, name)
            reserve = functools.partial(reserve_port, host, port)
            reserved.append(listening(name, host, port, True, reserve))
        grpc_port, http_port = (sock.getsockname()[1] for sock in reserved)
        given = {**overrides, "serve_grpc_port": grpc_port, "serve_http_port": http_port}
        supervisor = Supervisor(settings, given, workers)
        # Before the workers start (a port in use is a start-up error), not ready until they
        # are; only the supervisor serves it (the workers' settings turn it off).
        health = start_health(SupervisorHealth(settings, supervisor.ready_pids), settings)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: supervisor.request_stop())
        try:
            supervisor.start()
        except _SaidWhy:
            return EXIT_USAGE  # the worker's one line says why
        except RuntimeError as error:
            print(f"otel-luna serve: {error}", file=sys.stderr, flush=True)
            return 1
        try:
            pids = ", ".join(str(w.pid) for w in supervisor.workers if w is not None)
            if health is not None:
                print(start_line(health), file=out, flush=True)
            for protocol, port in (("gRPC", grpc_port), ("HTTP", http_port)):
                print(
                    f"otel-luna serve: OTLP/{protocol} on {host_port(host, port)}",
                    file=out,
                    flush=True,
                )
            print(
                f"otel-luna serve: writing to {settings.endpoint} ({settings.sink_name})",
                file=out,
                flush=True,
            )
            print(f"otel-luna serve: {workers} workers (pids {pids})", file=out, flush=True)
            supervisor.run()
        finally:
            supervisor.stop()
        print(
            f"otel-luna serve: stopped ({workers} workers, restarts: {supervisor.restarts})",
            file=out,
            flush=True,
        )
        return 0
    finally:
        if health is not None:
            health.stop()
        for sock in reserved:
            sock.close()


# -- the worker process ----------------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    """SIGTERM when the supervisor dies (Linux ``PR_SET_PDEATHSIG``); exit if it already has."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        raise SystemExit(0)


def worker_main(argv: Sequence[str] | None = None) -> int:
    """One worker: a whole serve on the given ports with ``SO_REUSEPORT``; ``ready`` on the
    supervisor's pipe once it listens; until SIGTERM or SIGINT, then the graceful stop."""
    parser = argparse.ArgumentParser(prog="python -m otel_luna.serve._workers")
    parser.add_argument("--slot", type=int, required=True)
    parser.add_argument("--ready-fd", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--overrides", default="{}")
    args = parser.parse_args(argv)
    # First of all: a SIGTERM while still starting (the supervisor stopping right after a
    # restart) must wait for the start and then stop gracefully — delivering the spool this
    # worker may just have adopted from the one it replaces — never kill it half-way.
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    _die_with_parent(args.parent)
    logging.basicConfig(
        level=logging.WARNING,
        format=f"%(levelname)s %(name)s [worker {args.slot}, pid {os.getpid()}]: %(message)s",
    )
    from otel_luna.serve._main import Server

    # The supervisor serves the health endpoint: a worker's would take the same port.
    settings = ServeSettings.load(**{**json.loads(args.overrides), "serve_health_port": None})
    try:
        server = Server(settings, reuse_port=True)
    except (SpoolRefused, SettingsError) as error:  # one line, as a single serve says it
        print(f"otel-luna serve: {error}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    try:
        with contextlib.suppress(OSError):  # a supervisor gone away: PDEATHSIG stops us
            os.write(args.ready_fd, _READY)
        os.close(args.ready_fd)
    except BaseException:
        server.stop()
        raise
    # With a timeout: a signal only sets a flag the main thread checks when it runs Python.
    while not stop.wait(0.5):
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
