"""`otel-luna status` says when a process runs on the pure-Python code: the compiled common
cases (``otel_luna._native``) were not built for its install, or ``OTEL_LUNA_PURE_PYTHON`` is
set in its environment — which a shell beside it cannot tell."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from otel_luna import LunaSpanExporter, Settings
from otel_luna._cli import main
from otel_luna.delivery import _writer
from tests.cli.test_status_counters import poll, spans


def _status(spool_dir: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    capsys.readouterr()
    assert main(["status", str(spool_dir), *extra]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("compiled", [True, False])
def test_status_says_which_code_a_process_runs(
    compiled: bool,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The writer records in its stats whether the process has the compiled code; status
    shows ``compiled`` in ``--json`` and, for pure Python, a line saying so and why."""
    if not compiled:
        monkeypatch.setattr(_writer, "NATIVE", None)
    spool_dir = tmp_path / "spool"
    exporter = LunaSpanExporter(
        Settings.load(
            {},
            endpoint=f"file://{tmp_path / 'out.lp'}",
            flush_interval=0.05,
            spool_dir=str(spool_dir),
        )
    )
    try:
        assert exporter.export(spans(3, {})).name == "SUCCESS"
        assert exporter.force_flush(30_000)

        def entry() -> dict[str, Any] | None:
            (found,) = json.loads(_status(spool_dir, capsys, "--json"))["processes"]
            return found if found["counts"].get("written") == 3 else None

        found = poll(entry)
        text = _status(spool_dir, capsys)
    finally:
        exporter.shutdown()
    assert found["compiled"] is compiled
    assert "compiled" not in found["counts"]
    assert ("pure-Python code" in text) is not compiled, text
