"""The reports' PNG files: a matplotlib figure that needs no display, written atomically with
every label escaped (the ``report`` extra brings matplotlib)."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from otel_luna.redact import printable as escape
from otel_luna.report._errors import ReportError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["new_figure", "save_png"]


def new_figure(width: float, height: float) -> Figure:
    """A matplotlib figure on the Agg canvas (no display needed), constrained layout."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ReportError("--png needs matplotlib: pip install 'otel-luna[report]'") from None
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_png(figure: Figure, path: Path) -> None:
    """Write ``figure`` to ``path`` atomically (a temporary file beside it, then a rename),
    creating the missing parent directories. :class:`ReportError` (``cannot write the chart
    PATH: <reason>``) when it cannot be written."""
    from matplotlib.text import Text

    for text in figure.findobj(Text):
        # Labels hold values read from the database or a file: no control character, and a
        # "$" is a dollar sign, not mathtext.
        text.set_text(escape(text.get_text(), lines=True))
        text.set_parse_math(False)
    try:
        _write_png(figure, path)
    except OSError as error:
        reason = error.strerror or str(error)
        raise ReportError(f"cannot write the chart {path}: {reason}") from None


def _write_png(figure: Figure, path: Path) -> None:
    directory = path.parent if str(path.parent) else Path(".")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a file stands where a directory is needed
        raise NotADirectoryError(
            errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(directory)
        ) from None
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=directory)
    try:
        with os.fdopen(handle, "wb") as file:
            figure.savefig(file, format="png")
        os.chmod(temporary, 0o644)  # a chart to share, not mkstemp's 0600
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
