"""``python -m otel_luna``: the ``otel-luna`` command."""

from otel_luna._cli import main

raise SystemExit(main())
