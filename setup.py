"""The optional compiled common cases, ``otel_luna._native`` (``native/``): built where a C
compiler and Python's headers are found, skipped where they are not (the pure-Python code, the
reference, does all the work then)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "otel_luna._native",
            ["native/_native.c"],
            depends=["native/line.h", "native/encode_point.h", "native/sdk_spans.h"],
            optional=True,
        )
    ]
)
