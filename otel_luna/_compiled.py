"""The optional compiled common cases (``otel_luna._native``, built from ``native/`` by
``setup.py`` where a C compiler is found): the module, or None when it was not built or
``OTEL_LUNA_PURE_PYTHON`` is set (to anything but ``0``; read once, at import). The pure-Python
code is the reference: the compiled functions write only what it would write, and hand everything
else back to it (``tests/encoding/test_accelerator.py``, ``tests/ingest/test_native_spans.py``)."""

from __future__ import annotations

import os
from types import ModuleType

#: The environment variable that turns the compiled code off.
PURE_PYTHON = "OTEL_LUNA_PURE_PYTHON"


def _load() -> ModuleType | None:
    if os.environ.get(PURE_PYTHON, "") not in ("", "0"):
        return None
    try:
        from otel_luna import _native  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _native  # type: ignore[no-any-return]


#: ``otel_luna._native``, or None: the pure-Python code does all the work.
NATIVE = _load()
