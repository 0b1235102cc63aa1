"""The tar entry model shared by the reader, the writer and the extractor."""

from __future__ import annotations

from zlib import adler32

from graphdriver.plain import Plain

TYPE_CHECKING = False
if TYPE_CHECKING:
    from graphdriver.layerio.sparse import SparseMap

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
#: Entries that put no file in a layer: extraction passes over them, and so does what
#: compares a layer with its entries.
NO_FILE_TYPES = frozenset({PAX_GLOBAL, PAX_LOCAL, GNU_VOLHDR})

#: The size of a tar block, and of a header.
BLOCK = 512
_HIGH_BYTES = bytes(range(128, 256))


def checksum_ok(blk: bytes) -> bool:
    """Whether the 512-byte header *blk* holds the checksum of its bytes (unsigned or signed sum)."""
    field = blk[148:156]
    if field[0] & 0x80:
        return False  # octal text only here, never base-256
    # Octal text, padded with spaces or NULs on either side, ending at the first NUL after it.
    text = field.strip(b" \x00").partition(b"\x00")[0]
    if not text.isdigit() or b"8" in text or b"9" in text:
        return False
    stored = int(text, 8)
    # Adler-32's low half is 1 + the byte sum mod 65521; the sum of 256 bytes
    # cannot reach that, so two halves give the exact sum, fast.
    total = (adler32(blk[:256]) & 0xFFFF) + (adler32(blk[256:]) & 0xFFFF) - 2
    unsigned = total - sum(field) + 256  # the field counts as eight spaces
    if stored == unsigned:
        return True
    # Historic tars summed signed chars: every byte >= 0x80 counts 256 less.
    rest = blk[:148] + blk[156:]
    return stored == unsigned - 256 * (len(rest) - len(rest.translate(None, _HIGH_BYTES)))


class TarEntry(Plain):
    """One archive member, after PAX / GNU long-name records have been folded in.

    Names are ``str`` decoded from UTF-8 with ``surrogateescape``, so names that
    are not UTF-8 survive unchanged: ``name.encode("utf-8", "surrogateescape")``
    gives the archive's bytes back, and ``os`` functions accept them as they are.
    Times are integer nanoseconds since the epoch.

    (A plain class, not a dataclass: every import, apply and diff loads this
    module, and the dataclasses machinery costs them more than their parsing.)
    """

    __slots__ = (
        "atime_ns",
        "ctime_ns",
        "devmajor",
        "devminor",
        "gid",
        "gname",
        "linkname",
        "mode",
        "mtime_ns",
        "name",
        "offset",
        "pax",
        "raw",
        "size",
        "sparse",
        "type",
        "uid",
        "uname",
        "xattrs",
    )

    def __init__(
        self,
        name: str,
        type: str = REG,
        size: int = 0,
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        uname: str = "",
        gname: str = "",
        mtime_ns: int = 0,
        atime_ns: int | None = None,
        ctime_ns: int | None = None,
        linkname: str = "",
        devmajor: int = 0,
        devminor: int = 0,
        xattrs: dict[str, bytes] | None = None,
        pax: dict[str, bytes] | None = None,
        raw: bytes = b"",
        offset: int = -1,
    ) -> None:
        self.name = name
        self.type = type
        self.size = size
        #: Permission bits and setuid/setgid/sticky only (no S_IFMT).
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.uname = uname
        self.gname = gname
        self.mtime_ns = mtime_ns
        self.atime_ns = atime_ns
        self.ctime_ns = ctime_ns
        self.linkname = linkname
        self.devmajor = devmajor
        self.devminor = devminor
        #: Extended attributes from SCHILY.xattr.* records (values are raw bytes).
        self.xattrs: dict[str, bytes] = {} if xattrs is None else xattrs
        #: Every PAX record that applied to this entry (global ones included), raw values.
        self.pax: dict[str, bytes] = {} if pax is None else pax
        #: The exact bytes of every header block of this entry (PAX and GNU long-name
        #: headers and their data blocks included); empty for entries built in memory.
        self.raw = raw
        #: Stream offset of the entry's first header block (-1 for entries built in memory).
        self.offset = offset
        #: Where a sparse file's data goes (:class:`~graphdriver.layerio.sparse.SparseMap`);
        #: None for any other entry.  ``size`` is then the length of the data stored.
        self.sparse: SparseMap | None = None


    @property
    def is_regular(self) -> bool:
        return self.type in REGULAR_TYPES

    @property
    def is_dir(self) -> bool:
        return self.type == DIR

    @property
    def name_bytes(self) -> bytes:
        return self.name.encode("utf-8", "surrogateescape")
