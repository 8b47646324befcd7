"""Fixtures of the ingest tests."""

from __future__ import annotations

from typing import Any

import pytest

from otel_luna.mapping import RequestMapper


@pytest.fixture
def mapped_records(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The records ``RequestMapper.add`` is given from now on (it still maps them): what the
    adapters and the compiled pass leave to the Python mapper."""
    added: list[Any] = []
    add = RequestMapper.add

    def spy(self: RequestMapper, record: Any) -> Any:
        added.append(record)
        return add(self, record)

    monkeypatch.setattr(RequestMapper, "add", spy)
    return added
