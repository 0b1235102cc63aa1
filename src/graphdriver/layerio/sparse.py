"""Sparse files in tar archives: GNU's ``S`` entries and the PAX ``GNU.sparse.*`` formats.

A sparse entry's data is not the file.  It is the file's data fragments,
packed one after the other; the rest of the file (up to its real size) is
holes.  Where the fragments are (offset and length, in bytes) is told

- in an ``S`` entry's GNU header: four pairs of octal fields, then as many
  extension blocks of 21 pairs each as the header chains;
- in PAX records, format 0.0 (``GNU.sparse.offset``/``GNU.sparse.numbytes``
  pairs, which the PAX parser gathers as one map) or 0.1
  (``GNU.sparse.map``: ``offset,length,...``); the real size in
  ``GNU.sparse.size``;
- in the data itself, format 1.0 (``GNU.sparse.major=1``,
  ``GNU.sparse.minor=0``): decimal lines, the count and then the pairs, padded
  to a whole block, before the fragments; the real size in
  ``GNU.sparse.realsize``.

GNU tar writes all of these (``--sparse``); Go's ``archive/tar`` reads all of
them.  Unpacking writes each fragment at its offset and leaves the rest a hole.
The map is checked as Go checks it: fragments in order, not overlapping, within
the real size, and together exactly the data stored.

A layer gives such an entry back byte for byte all the same: its stored
bytes are kept in the tar-split metadata as raw bytes, as header blocks are
(see :class:`~graphdriver.layerio.tarstream.TarReader`), since the file holds
them unpacked.  :func:`fragment_digest` and :func:`file_matches` let ``check``
hold the file to them.
"""

from __future__ import annotations

import os

from graphdriver.errors import ArchiveError, CorruptArchive
from graphdriver.plain import Plain

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from graphdriver.layerio.tarsplit import SplitEntry

    #: Reads exactly n bytes of the entry's data (raises at its end).
    Read = Callable[[int], bytes]

BLOCK = 512
#: The most bytes of map a sparse entry may have (format 1.0's text, or GNU extension
#: blocks): some 700,000 fragments; a map past it is refused (exit 1), not called corrupt.
MAX_MAP = 16 << 20
_MAX_INT64 = (1 << 63) - 1
_CHUNK = 1 << 20


class SparseMap(Plain):
    """Where a sparse entry's data goes: ``fragments`` of (offset, length), and the real ``size``.

    ``fragments`` is None while format 1.0's map is still to be read from the data.
    """

    __slots__ = ("digest", "fragments", "size")

    def __init__(self, fragments: tuple[tuple[int, int], ...] | None, size: int) -> None:
        self.fragments = fragments
        self.size = size
        #: :func:`fragment_digest` of the data, where a reader of the headers took it.
        self.digest: bytes | None = None


def _err(name: str, why: str) -> CorruptArchive:
    return CorruptArchive(name, why)


def unknown_version(records: dict[str, bytes]) -> str:
    """Why PAX *records* of a sparse file in a version no reader knows are refused."""
    version = b".".join(records.get(k, b"?") for k in ("GNU.sparse.major", "GNU.sparse.minor"))
    return f"unsupported PAX sparse file format {version.decode(errors='replace')}"


def too_large(name: str) -> ArchiveError:
    """A sparse map past :data:`MAX_MAP`: refused (exit 1), not corrupt."""
    return ArchiveError(name, f"sparse map over {MAX_MAP >> 20} MiB: more fragments than this reader takes")


def _decimal(text: bytes, name: str, what: str) -> int:
    if text[:1] == b"+":  # Go's strconv.ParseInt, which writers and readers of this map use, takes a sign
        text = text[1:]
    digits = text.lstrip(b"0")
    if not text.isdigit() or len(digits) > 19 or int(digits or b"0") > _MAX_INT64:
        raise _err(name, f"invalid sparse map ({what})")
    return int(digits or b"0")


def from_pax(records: dict[str, bytes], stored_size: int, name: str) -> SparseMap | None:
    """The map PAX *records* give (format 1.0: to be read from the data); None for a version
    this reader does not know."""
    major, minor = records.get("GNU.sparse.major"), records.get("GNU.sparse.minor")
    if major == b"1" and minor == b"0":
        fragments = None
    elif (major == b"0" and minor in (b"0", b"1")) or (
            major is None and minor is None and "GNU.sparse.map" in records):
        fragments = _pax_fragments(records, name)
    else:
        return None
    size_text = records.get("GNU.sparse.size") or records.get("GNU.sparse.realsize")
    size = stored_size if size_text is None else _decimal(size_text, name, "real size")
    return SparseMap(fragments, size)


def _pax_fragments(records: dict[str, bytes], name: str) -> tuple[tuple[int, int], ...]:
    text = records.get("GNU.sparse.map", b"")
    numbers = [_decimal(t, name, "map") for t in text.split(b",")] if text else []
    blocks = records.get("GNU.sparse.numblocks")
    if len(numbers) % 2 or (blocks is not None and _decimal(blocks, name, "numblocks") * 2 != len(numbers)):
        raise _err(name, "invalid sparse map (unpaired numbers)")
    return tuple(zip(numbers[::2], numbers[1::2], strict=True))


def from_gnu(header: bytes, extensions: list[bytes], number: Callable[[bytes], int],
             name: str) -> SparseMap:
    """The map of a GNU ``S`` entry: its *header* block and the *extensions* it chains.

    *number* parses one numeric field (octal or base-256).
    """
    fragments: list[tuple[int, int]] = []
    for block, start, count in ((header, 386, 4), *((x, 0, 21) for x in extensions)):
        for at in range(start, start + 24 * count, 24):
            if block[at] == 0:
                break  # an empty pair ends the list
            fragments.append((number(block[at : at + 12]), number(block[at + 12 : at + 24])))
    return SparseMap(tuple(fragments), number(header[483:495]))


def read_map(read: Read, stored_size: int, name: str) -> tuple[tuple[tuple[int, int], ...], int]:
    """Format 1.0: the map at the start of the data, and how many bytes of data it takes."""
    text, used = b"", 0
    lines: list[bytes] = []
    wanted = 1
    while len(lines) < wanted:
        if used + BLOCK > stored_size:
            raise _err(name, "invalid sparse map (it does not end in the data)")
        if used + BLOCK > MAX_MAP:
            raise too_large(name)
        text += read(BLOCK)
        used += BLOCK
        *done, text = text.split(b"\n")
        lines += done
        if len(lines) >= 1 and wanted == 1:
            count = _decimal(lines[0], name, "count")
            if count * 4 > stored_size:  # "0\n0\n" per pair at least
                raise _err(name, "invalid sparse map (more fragments than its data could list)")
            wanted = 1 + 2 * count
    numbers = [_decimal(t, name, "map") for t in lines[1:wanted]]
    return tuple(zip(numbers[::2], numbers[1::2], strict=True)), used


def check(fragments: tuple[tuple[int, int], ...], size: int, data: int, name: str) -> None:
    """CorruptArchive unless *fragments* fit a file of *size* bytes and hold *data* bytes."""
    end = 0
    for offset, length in fragments:
        if offset < end or offset + length > size:
            raise _err(name, "invalid sparse map (fragments overlap or pass the file's end)")
        end = offset + length
    held = sum(length for _, length in fragments)
    if held != data:
        what = "is missing" if held > data else "is left over"
        raise _err(name, f"sparse file data {what} ({data} bytes stored, the map holds {held})")


def fragments_of(sparse: SparseMap, read: Read, stored_size: int, name: str) -> tuple[tuple[int, int], ...]:
    """The checked fragments of an entry whose data is read next (its map first, in format 1.0)."""
    fragments, used = (sparse.fragments, 0) if sparse.fragments is not None \
        else read_map(read, stored_size, name)
    check(fragments, sparse.size, stored_size - used, name)
    return fragments


def unpack(sparse: SparseMap, read: Read, stored_size: int, fd: int, name: str) -> None:
    """Write the entry's fragments into the empty file *fd* at their offsets, holes between."""
    for offset, length in fragments_of(sparse, read, stored_size, name):
        os.lseek(fd, offset, os.SEEK_SET)
        while length:
            chunk = memoryview(read(min(length, _CHUNK)))
            length -= len(chunk)
            while chunk:
                chunk = chunk[os.write(fd, chunk) :]
    os.ftruncate(fd, sparse.size)


def fragment_digest(fragments: tuple[tuple[int, int], ...], read: Read) -> bytes:
    """A digest of the fragments' places and bytes, read from the entry's data."""
    import hashlib

    h = hashlib.sha256()
    for offset, length in fragments:
        if length:
            h.update(b"%d,%d;" % (offset, length))
        while length:
            chunk = read(min(length, _CHUNK))
            length -= len(chunk)
            h.update(chunk)
    return h.digest()


def file_matches(fd: int, fragments: tuple[tuple[int, int], ...], digest: bytes) -> bool:
    """Whether the file *fd* holds the fragments *digest* was made of, and zeros elsewhere."""
    import hashlib

    h = hashlib.sha256()
    end = 0
    size = os.fstat(fd).st_size
    for offset, length in (*fragments, (size, 0)):
        if not _zeros(fd, end, offset):
            return False
        if length:
            h.update(b"%d,%d;" % (offset, length))
            at = offset
            while at < offset + length:
                chunk = os.pread(fd, min(offset + length - at, _CHUNK), at)
                if not chunk:
                    return False
                h.update(chunk)
                at += len(chunk)
        end = offset + length
    return h.digest() == digest


def _zeros(fd: int, start: int, stop: int) -> bool:
    """Whether bytes *start* to *stop* of *fd* are all zero (holes are not read)."""
    from graphdriver.fs.tree import data_extents

    for at, end in data_extents(fd, start, stop):
        while at < end:
            chunk = os.pread(fd, min(end - at, _CHUNK), at)
            if not chunk or chunk.count(0) != len(chunk):
                return False
            at += len(chunk)
    return True


_GNU_MAGIC = b"ustar  \x00"


def may_hold_sparse(raw: bytes) -> bool:
    """Whether header bytes *raw* may hold a sparse entry's header: PAX ``GNU.sparse.*``
    records, or a GNU header of type ``S`` (a quick look; a rare false yes costs a check)."""
    if b"GNU.sparse." in raw:
        return True
    at = raw.find(_GNU_MAGIC)
    while at >= 0:
        if at >= 257 and raw[at - 101] == 0x53:  # the typeflag, 156 bytes into its block
            return True
        at = raw.find(_GNU_MAGIC, at + 1)
    return False


class Watch:
    """Passes tar-split entries through; ``found`` tells whether a segment may have held a
    sparse entry's header (whose data, kept as raw bytes, no file checksum covers)."""

    def __init__(self, entries: Iterable[SplitEntry]) -> None:
        self._entries = entries
        self.found = False

    def __iter__(self) -> Iterator[SplitEntry]:
        from graphdriver.layerio.tarsplit import SEGMENT

        for e in self._entries:
            if not self.found and e.type == SEGMENT and e.payload and may_hold_sparse(e.payload):
                self.found = True
            yield e
