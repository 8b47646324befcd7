"""Example services that ship with otel-luna: :mod:`.luna_handlers_app` is the one
``otel-luna demo`` runs (``python -m otel_luna.examples.luna_handlers_app``)."""
