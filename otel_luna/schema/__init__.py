"""The series otel-luna writes, as data: names, tags, fields and types from the seeds."""
