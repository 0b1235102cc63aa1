"""Human sizes, parsed the way Docker's ``go-units`` does.

``RAMInBytes`` (used for ``--storage-opt size``) reads binary units whatever the
spelling: ``20G``, ``20g``, ``20GB`` and ``20GiB`` are all 20 * 1024**3.  A bare
number is bytes; fractions are allowed (``1.5GiB``).
"""

from __future__ import annotations

import re

from graphdriver.errors import InvalidArgument

_SIZE_RE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*([kKmMgGtTpP]?)(?:[iI]?[bB])?$")
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def parse_size(text: str) -> int:
    """Bytes in *text* (``512m``, ``20G``, ``1.5GiB``, ``4096``); raise InvalidArgument."""
    match = _SIZE_RE.match(text.strip())
    if match is None:
        raise InvalidArgument(f"invalid size {text!r}", "expected a number with an optional unit")
    number, unit = match.groups()
    value = float(number) * (1024 ** _POWERS[unit.lower()])
    return int(value)


def format_size(n: int) -> str:
    """A short human form of *n* bytes (``1.5GiB``)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")
