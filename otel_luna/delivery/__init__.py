"""Lines → the destination: spool, batching, retries, dead letters, shutdown."""
