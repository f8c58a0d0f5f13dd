"""The one compiled module: schemas._native, the profile's rendering and RESP packing in C (issue 18).

Optional: where no C compiler is found the package installs without it and schemas.profile renders in
Python (the same strings, slower); a worker logs which one it uses at start. Everything else is in
pyproject.toml.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "schemas._native",
            ["schemas/_native.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wno-missing-braces"],
        )
    ]
)
