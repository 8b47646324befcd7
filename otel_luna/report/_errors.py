"""The reports' errors: a source that cannot be read, a chart that cannot be written."""

from __future__ import annotations

__all__ = ["ChartError", "ReportError"]


class ReportError(RuntimeError):
    """The report could not read its source; the message says what and where."""


class ChartError(ReportError):
    """The report was made but its chart could not be drawn or written; ``text`` is the
    report (text or JSON) to print all the same."""

    def __init__(self, message: str, text: str) -> None:
        super().__init__(message)
        self.text = text
