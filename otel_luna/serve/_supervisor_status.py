"""The status files of ``otel-luna serve --workers N`` supervisors in a spool directory, read for
``otel-luna status`` (the supervisor writes them: :mod:`otel_luna.serve._workers`)."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from otel_luna.delivery import read_small
from otel_luna.redact import printable

STATUS_PREFIX = "serve-supervisor-"
#: A supervisor's status file: its pid, digits only.
_STATUS_NAME = re.compile(rf"{STATUS_PREFIX}([1-9][0-9]{{0,9}})\.json")
#: Most bytes of a supervisor's status file ``otel-luna status`` reads.
STATUS_MAX_BYTES = 64 * 1024


def status_files(root_fd: int) -> list[tuple[str, int]]:
    """The supervisors' status files in the spool directory ``root_fd``: (name, pid), the pid
    taken from the name, digits only."""
    found = []
    for name in sorted(os.listdir(root_fd)):
        matched = _STATUS_NAME.fullmatch(name)
        if matched:
            found.append((name, int(matched.group(1))))
    return found


def describe_supervisors(spool_dir: str | Path) -> list[dict[str, Any]]:
    """The supervisors' status files under ``spool_dir``, each with ``running``: regular files
    only, never through a link, at most :data:`STATUS_MAX_BYTES` each; the ``pid`` is the one
    in the file's name (a file that says another is left out)."""
    found: list[dict[str, Any]] = []
    try:
        root_fd = os.open(spool_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return found
    try:
        for name, pid in status_files(root_fd):
            try:
                state = json.loads(read_small(name, root_fd, STATUS_MAX_BYTES))
            except (OSError, ValueError, RecursionError):
                continue
            if not isinstance(state, dict) or state.get("pid") != pid:
                continue
            state["running"] = alive(pid)
            found.append(state)
    finally:
        os.close(root_fd)
    return found


def supervisor_line(state: Mapping[str, Any]) -> str:
    """One supervisor's status file as a line of ``otel-luna status`` (whatever the file holds:
    every value is shown printable, a value of the wrong type as unknown)."""
    running = "running" if state.get("running") else "gone"
    pids = state.get("worker_pids")
    shown = ", ".join(_shown(pid) for pid in pids) if isinstance(pids, list) else "unknown"
    line = (
        f"serve supervisor {_shown(state.get('pid'))}: {running}, "
        f"{_shown(state.get('workers'))} workers (pids {shown}), "
        f"restarts: {_shown(state.get('restarts'))}"
    )
    last = state.get("last_exit")
    if isinstance(last, dict):
        worker, pid, status = last.get("worker"), last.get("pid"), last.get("status")
        line += (
            f"; last: worker {_shown(worker)} (pid {_shown(pid)}) {_shown(status)} "
            f"at {_when(last.get('at'))}"
        )
    return line


def _shown(value: object) -> str:
    return printable(str(value))[:200]


def _when(at: object) -> str:
    try:  # a status file is data from disk: anything may stand there
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(at)))  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError, OSError):
        return "an unknown time"


def alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
