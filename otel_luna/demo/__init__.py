"""``otel-luna demo``: the example service, its load and a report of it (the ``demo`` extra)."""
