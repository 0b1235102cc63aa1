"""The C speed-ups of the tar reader and the tar-split recorder, built where a compiler is at hand.

``optional=True``: where it cannot be built (no compiler, no Python headers)
the install goes on and the Python twins (the reader's decoder, the recorder)
are used, which pass the same tests.  Everything else is in pyproject.toml.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "graphdriver.layerio._tarscan",
            ["src/graphdriver/layerio/_tarscan.c"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
        Extension(
            "graphdriver.layerio._tarsplit",
            ["src/graphdriver/layerio/_tarsplit.c"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
    ]
)
