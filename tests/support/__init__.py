"""Helpers of the tests (and of ``benchmarks/``): real servers, serve runs, stubs, waiting."""
