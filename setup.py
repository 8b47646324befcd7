"""The optional compiled common cases, ``otel_luna._native`` (``native/``): built where a C
compiler and Python's headers are found, skipped where they are not (the pure-Python code, the
reference, does all the work then)."""

from pathlib import Path

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "otel_luna._native",
            ["native/_native.c"],
            # every file it includes (a change to any rebuilds it)
            depends=sorted(str(path) for path in Path("native").rglob("*.[ch]")),
            optional=True,
        )
    ]
)
