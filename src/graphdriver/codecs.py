"""Which implementation each codec uses: a C-backed wheel, or its twin.

Every speed-up the store relies on is an ordinary dependency (``isal`` for
gzip, ``zstandard`` for zstd, ``fastcrc`` for tar-split's CRC-64), and each
keeps a twin that passes the same tests:

========  ==============  =====================================================
codec     fast            twin (used when the wheel cannot be imported)
========  ==============  =====================================================
gzip      ``isal``        the standard library's ``gzip``/``zlib``
crc64     ``fastcrc``     a table-driven pure-Python CRC-64/ISO
zstd      ``zstandard``   none before Python 3.14; zstd layers are refused
tar       ``_tarscan``    the reader's Python decoder (``_tarscan`` is this
                          project's own C extension, built at install where a
                          C compiler is at hand)
tar-split ``_tarsplit``   the Python recorder (``_tarsplit``: this project's
                          own C extension too)
========  ==============  =====================================================

``GRAPHDRIVER_PURE=1`` selects the twins (gzip, CRC-64, tar, tar-split) even where the
wheels load, so the tests can hold both to the same results.  Nothing here
imports a codec: ``status`` reports what *would* be used by looking the modules
up, which costs microseconds, while the import itself (tens of milliseconds for
``isal`` and ``zstandard``) happens only when a stream needs it.
"""

from __future__ import annotations

import os
import sys

#: Set (to anything but the empty string) to select the pure twins.
PURE_ENV = "GRAPHDRIVER_PURE"


def pure_forced() -> bool:
    """True when the environment asks for the pure twins."""
    return bool(os.environ.get(PURE_ENV))


def _installed(module: str) -> bool:
    """Whether *module* (a top-level name) can be found, without importing it.

    Asks the import system's finders directly, as ``importlib.util.find_spec``
    does for a top-level name, without importing :mod:`importlib.util`.
    """
    if module in sys.modules:
        return True
    for finder in sys.meta_path:
        find_spec = getattr(finder, "find_spec", None)
        try:
            if find_spec is not None and find_spec(module, None) is not None:
                return True
        except (ImportError, ValueError):
            continue
    return False


def gzip_implementation() -> str:
    """``isal`` or ``zlib`` (the standard library), as gzip streams will use."""
    return "isal" if not pure_forced() and _installed("isal") else "zlib"


def crc64_implementation() -> str:
    """``fastcrc`` or ``pure``, as tar-split's CRC-64 will use."""
    return "fastcrc" if not pure_forced() and _installed("fastcrc") else "pure"


def zstd_implementation() -> str:
    """``zstandard``, or ``unavailable`` when its wheel is missing."""
    return "zstandard" if _installed("zstandard") else "unavailable"


def _extension(module: str) -> str:
    """``C`` if this project's extension *module* was built at install, else ``python``.

    Looks for the built file beside this package, as the import system would,
    without loading it: loading a shared object costs a command more than the
    rest of ``status``, and the reader loads it when it decodes.
    """
    if pure_forced():
        return "python"
    if module in sys.modules:
        return "C"
    import _imp  # built in

    base = os.path.join(os.path.dirname(__file__), *module.split(".")[1:])
    return "C" if any(os.path.isfile(base + suffix) for suffix in _imp.extension_suffixes()) else "python"


def tar_decoder_implementation() -> str:
    """``C`` (the reader's ``_tarscan`` extension, built at install) or ``python``."""
    return _extension("graphdriver.layerio._tarscan")


def tarsplit_recorder_implementation() -> str:
    """``C`` (the ``_tarsplit`` extension, built at install) or ``python``."""
    return _extension("graphdriver.layerio._tarsplit")


def implementations() -> list[tuple[str, str]]:
    """``(codec, implementation)`` pairs for ``status``."""
    return [
        ("Codec gzip", gzip_implementation()),
        ("Codec zstd", zstd_implementation()),
        ("Codec crc64", crc64_implementation()),
        ("Tar header decoder", tar_decoder_implementation()),
        ("Tar-split recorder", tarsplit_recorder_implementation()),
    ]
