"""The optional compiled encoder (otel_luna/encoding/_lineprotocol_c.c): built where a C compiler
and Python's headers are found, skipped (the pure-Python encoder is used) where they are not."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "otel_luna.encoding._lineprotocol_c",
            ["otel_luna/encoding/_lineprotocol_c.c"],
            optional=True,
        )
    ]
)
