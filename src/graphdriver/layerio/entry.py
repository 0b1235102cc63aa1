"""The tar entry model shared by the reader, the writer and the extractor."""

from __future__ import annotations

from dataclasses import dataclass, field

# Type flags (one character each, as in the header's typeflag byte).
REG = "0"
AREG = "\0"  # old-style regular file
LNK = "1"  # hard link
SYM = "2"
CHR = "3"
BLK = "4"
DIR = "5"
FIFO = "6"
CONT = "7"  # contiguous file: a regular file everywhere that matters
# Meta entries the reader consumes itself and never yields:
PAX_LOCAL = "x"
PAX_GLOBAL = "g"
GNU_LONGNAME = "L"
GNU_LONGLINK = "K"
# GNU types the reader yields but extraction refuses or treats specially:
GNU_SPARSE = "S"
GNU_VOLHDR = "V"
GNU_MULTIVOL = "M"
GNU_DUMPDIR = "D"

REGULAR_TYPES = frozenset({REG, AREG, CONT})


@dataclass(slots=True)
class TarEntry:
    """One archive member, after PAX / GNU long-name records have been folded in.

    Names are ``str`` decoded from UTF-8 with ``surrogateescape``, so names that
    are not UTF-8 survive unchanged: ``name.encode("utf-8", "surrogateescape")``
    gives the archive's bytes back, and ``os`` functions accept them as they are.
    Times are integer nanoseconds since the epoch.
    """

    name: str
    type: str = REG
    size: int = 0
    mode: int = 0o644  # permission bits and setuid/setgid/sticky only (no S_IFMT)
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""
    mtime_ns: int = 0
    atime_ns: int | None = None
    ctime_ns: int | None = None
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    # Extended attributes from SCHILY.xattr.* records (values are raw bytes).
    xattrs: dict[str, bytes] = field(default_factory=dict)
    # Every PAX record that applied to this entry (global ones included), raw values.
    pax: dict[str, bytes] = field(default_factory=dict)
    # The exact bytes of every header block of this entry (PAX and GNU long-name
    # headers and their data blocks included); empty for entries built in memory.
    raw: bytes = b""
    # Stream offset of the entry's first header block (-1 for entries built in memory).
    offset: int = -1

    @property
    def is_regular(self) -> bool:
        return self.type in REGULAR_TYPES

    @property
    def is_dir(self) -> bool:
        return self.type == DIR

    @property
    def name_bytes(self) -> bytes:
        return self.name.encode("utf-8", "surrogateescape")
