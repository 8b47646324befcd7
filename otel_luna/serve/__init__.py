"""``otel-luna serve``: an OTLP gRPC and HTTP receiver (the ``serve`` extra)."""
