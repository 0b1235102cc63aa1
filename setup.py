"""The C speed-up of the tar reader, built where a compiler is at hand.

``optional=True``: where it cannot be built (no compiler, no Python headers)
the install goes on and the reader uses its Python decoder, which passes the
same tests.  Everything else is in pyproject.toml.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "graphdriver.layerio._tarscan",
            ["src/graphdriver/layerio/_tarscan.c"],
            optional=True,
            extra_compile_args=["-O2"],
        )
    ]
)
