"""The demo's error."""

from __future__ import annotations

__all__ = ["DemoError"]


class DemoError(RuntimeError):
    """The demo could not run to the end; the message says why."""
