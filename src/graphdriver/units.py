"""Human sizes, parsed the way Docker's ``go-units`` does.

``RAMInBytes`` (used for ``--storage-opt size``) reads binary units whatever the
spelling: ``20G``, ``20g``, ``20GB`` and ``20GiB`` are all 20 * 1024**3.  A bare
number is bytes; fractions are allowed (``1.5GiB``).
"""

from __future__ import annotations

from graphdriver.errors import InvalidArgument

# ASCII digits only, and at most one space before the unit, as go-units reads them.
# (Compiled when first used: the sizes' limits are needed by commands that load no ``re``.)
_SIZE_PATTERN = r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+) ?([kKmMgGtTpP]?)(?:[iI]?[bB])?$"
#: The largest size a file system call takes (a signed 64-bit number of bytes).
MAX_SIZE = 2**63 - 1
#: The smallest size limit accepted: below it a filesystem image has no room left for files.
MIN_SIZE = 16 * 1024 * 1024
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def parse_size(text: str) -> int:
    """Bytes in *text* (``512m``, ``20G``, ``1.5GiB``, ``4096``); raise InvalidArgument."""
    import re

    match = re.match(_SIZE_PATTERN, text)
    if match is None:
        raise InvalidArgument(f"invalid size {text!r}", "expected a number with an optional unit")
    number, unit = match.groups()
    value = float(number) * (1024 ** _POWERS[unit.lower()])
    if not value <= MAX_SIZE:  # (inf too)
        raise InvalidArgument(f"invalid size {text!r}", "larger than any file system takes (8EiB)")
    return int(value)


def check_limit(size: int, text: str) -> None:
    """Refuse a size limit (*text* as the user gave it) too small to hold anything."""
    if size < MIN_SIZE:
        raise InvalidArgument(f"size {text}", f"the smallest size limit is {MIN_SIZE // 2**20}MiB")


def format_size(n: int) -> str:
    """A short human form of *n* bytes (``1.5GiB``)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")
