"""CRC-64 with the ISO polynomial, as Go's ``hash/crc64`` computes it (tar-split's checksum).

The fast path is ``fastcrc`` (C, tens of GB/s, a dependency); the pure-Python
twin below is the reference the tests hold it to and the fallback where the
``fastcrc`` wheel cannot load (``GRAPHDRIVER_PURE=1`` forces it).  Both continue a running CRC: pass the
previous value as *crc* to checksum a stream chunk by chunk.
"""

from __future__ import annotations

from collections.abc import Callable

from graphdriver.codecs import pure_forced
from graphdriver.typed import cast

_POLY_REFLECTED = 0xD800000000000000
_MASK = 0xFFFFFFFFFFFFFFFF


def _make_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ _POLY_REFLECTED if crc & 1 else crc >> 1
        table.append(crc)
    return table


# Made on the first use of the twin: building it costs about 0.3 ms, which every
# command that reads or writes layers would pay at import while fastcrc serves.
_TABLE: list[int] = []


def crc64_iso_pure(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """The pure-Python CRC-64/ISO of *data*, continuing from *crc*."""
    if not _TABLE:
        _TABLE[:] = _make_table()
    table = _TABLE
    crc ^= _MASK
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ _MASK


def _load_fast() -> Callable[[bytes | bytearray | memoryview, int], int] | None:
    if pure_forced():
        return None
    try:
        from fastcrc import crc64 as fast
    except ImportError:
        return None
    # Called as it is (no wrapper): it runs once per file and per chunk, and
    # takes any buffer without a copy, the running value as its second argument.
    return cast(Callable[[bytes | bytearray | memoryview, int], int], fast.go_iso)


crc64_iso: Callable[[bytes | bytearray | memoryview, int], int] = _load_fast() or crc64_iso_pure
"""CRC-64/ISO of a chunk, continuing from a previous value (0 to start)."""

IMPLEMENTATION = "pure" if crc64_iso is crc64_iso_pure else "fastcrc"


def digest(crc: int) -> bytes:
    """The checksum bytes as Go's ``Sum(nil)`` appends them: big-endian."""
    return crc.to_bytes(8, "big")
