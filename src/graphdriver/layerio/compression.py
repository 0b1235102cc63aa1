"""Compression of layer tarballs: sniffing, decompressing and compressing streams.

Codec modules are imported when a stream needs them, so that commands which
never touch a compressed stream start fast.  gzip goes through ``isal`` (about
three times the standard library's speed) and falls back to the standard
library where that wheel cannot load or ``GRAPHDRIVER_PURE`` is set; both twins
decompress through one member loop, so they take and refuse the same streams
with the same words.  zstd needs ``zstandard`` (see :mod:`graphdriver.codecs`);
a zstd stream may open with a skippable frame.
"""

from __future__ import annotations

import enum
import io
from collections.abc import Callable
from types import ModuleType

from graphdriver.codecs import pure_forced
from graphdriver.errors import CorruptArchive, Unsupported
from graphdriver.layerio.entry import BLOCK, checksum_ok
from graphdriver.typed import cast

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO

__all__ = ["Compression", "open_compressor", "open_decompressed", "sniff"]

# A tar header: enough to recognise every format below (xz's magic is the longest),
# and to tell a plain tarball whose first name starts like a magic (``BZh...``).
_SNIFF_SIZE = BLOCK
_CHUNK = 1 << 16


class Compression(enum.Enum):
    """A compression format of layer tarballs."""

    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"
    XZ = "xz"
    BZIP2 = "bzip2"


_MAGIC = (
    (b"\x1f\x8b", Compression.GZIP),
    (b"\x28\xb5\x2f\xfd", Compression.ZSTD),
    (b"\xfd7zXZ\x00", Compression.XZ),
    (b"BZh", Compression.BZIP2),
)


# A zstd stream may open with a skippable frame: magic 0x184D2A50 to 0x184D2A5F.
_ZSTD_SKIPPABLE = b"\x2a\x4d\x18"


def sniff(head: bytes) -> Compression:
    """The compression format of a stream, from its first bytes (six are enough)."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if len(head) >= 4 and head[0] & 0xF0 == 0x50 and head[1:4] == _ZSTD_SKIPPABLE:
        return Compression.ZSTD
    return Compression.NONE


class _Prefixed(io.RawIOBase):
    """A stream whose first bytes were already read: give them back, then the rest."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head = memoryview(head)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(buf), len(self._head))
            buf[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(buf))
        buf[: len(data)] = data
        return len(data)


class _Checked(io.RawIOBase):
    """A decompressing reader whose codec errors become :class:`CorruptArchive`."""

    def __init__(
        self, inner: BinaryIO, kind: Compression, errors: tuple[type[BaseException], ...]
    ) -> None:
        self._inner = inner
        self._kind = kind
        self._errors = errors

    def readable(self) -> bool:
        return True

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        try:
            data = self._inner.read(len(buf))
        except self._errors as e:
            raise self._corrupt(e) from e
        except OSError as e:
            if e.errno is not None:
                raise  # a real I/O error from below, not bad data
            raise self._corrupt(e) from e
        buf[: len(data)] = data
        return len(data)

    def _corrupt(self, e: BaseException) -> CorruptArchive:
        return CorruptArchive("", f"corrupt {self._kind.value} data: {e}")

    def close(self) -> None:
        if not self.closed:
            self._inner.close()
        super().close()


def _peek(fileobj: BinaryIO) -> tuple[bytes, BinaryIO]:
    """The first bytes of ``fileobj``, and a stream that still starts with them."""
    peek = getattr(fileobj, "peek", None)
    if peek is not None:
        head = peek(_SNIFF_SIZE)[:_SNIFF_SIZE]
        if len(head) >= _SNIFF_SIZE:
            return bytes(head), fileobj
    head = b""
    while len(head) < _SNIFF_SIZE:  # pipes may hand out fewer bytes than asked
        chunk = fileobj.read(_SNIFF_SIZE - len(head))
        if not chunk:
            break
        head += chunk
    try:
        seekable = fileobj.seekable()
    except (AttributeError, OSError, ValueError):
        seekable = False
    if seekable:
        fileobj.seek(-len(head), io.SEEK_CUR)
        return head, fileobj
    return head, cast("BinaryIO", io.BufferedReader(_Prefixed(head, fileobj), _CHUNK))


def open_decompressed(fileobj: BinaryIO) -> tuple[BinaryIO, Compression]:
    """Sniff ``fileobj`` and return a reader of its decompressed content, and the format.

    Works on pipes (nothing read is lost).  Concatenated gzip members, zstd
    frames and xz and bzip2 streams are all read; bytes after the last that
    are neither another nor zero padding are corrupt data.  Corrupt data raises :class:`CorruptArchive` when
    read.  Closing a decompressing reader leaves ``fileobj`` open; for an
    uncompressed stream the reader may be ``fileobj`` itself.
    """
    head, stream = _peek(fileobj)
    kind = sniff(head)
    if kind is Compression.NONE or (len(head) == BLOCK and checksum_ok(head)):
        return stream, Compression.NONE
    inner, errors = _DECOMPRESSORS[kind](stream)
    checked = _Checked(inner, kind, (EOFError, *errors))
    return cast("BinaryIO", io.BufferedReader(checked, _CHUNK)), kind


def _gunzip(stream: BinaryIO) -> tuple[BinaryIO, tuple[type[BaseException], ...]]:
    import zlib

    try:
        if pure_forced():
            raise ImportError("pure twins selected")
        from isal import isal_zlib
    except ImportError:
        return cast("BinaryIO", _GzipMembers(stream, zlib.decompressobj)), (zlib.error, _Trailing)
    isal_error = cast(type[BaseException], isal_zlib.error)
    return cast("BinaryIO", _GzipMembers(stream, isal_zlib.decompressobj)), (isal_error, _Trailing)


_GZIP_MAGIC = b"\x1f\x8b"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_BZIP2_MAGIC = b"BZh"


class _Trailing(Exception):
    """Bytes after a compressed stream that start no other stream of its kind."""


def _after_stream(rest: bytes, source: BinaryIO, magic: bytes, what: str, unit: str) -> bytes | None:
    """What follows a compressed stream (a *unit* of format *what*) that ended with *rest* unread:
    None at the end of the input (zero bytes allowed, as ``gzip``, ``xz`` and the Go readers take
    padding), else the input the next one starts with (:class:`_Trailing` if it does not start
    with *magic*)."""
    while True:
        rest = rest.lstrip(b"\0")
        if not magic.startswith(rest[: len(magic)]):
            raise _Trailing(f"trailing bytes after the {what} stream are not {what}")
        if len(rest) >= len(magic):
            return rest
        more = source.read(_CHUNK)
        if not more:
            if rest:  # the first bytes of a stream's magic
                raise EOFError(f"the data ends inside a {what} {unit} header (truncated)")
            return None
        rest += more


class _GzipMembers:
    """Concatenated gzip members through a zlib-style decompressor (zlib's or isal's).

    One loop for both twins (their own gzip readers disagree on what ends a
    stream and how to say so): members back to back, then optionally zero
    bytes (:func:`_after_stream`).  Anything else after a member is refused as
    trailing garbage, and input that stops inside a member is refused as
    truncated.  ``wbits=31``: the decompressor reads the gzip header and
    checks the CRC-32 and length trailer itself.
    """

    def __init__(self, source: BinaryIO, decompressobj: Callable[[int], Any]) -> None:
        self._source = source
        self._new = decompressobj
        self._d = decompressobj(31)
        self._input = b""
        self._ended = False

    def read(self, n: int = -1) -> bytes:
        while not self._ended:
            if not self._input:
                self._input = self._source.read(_CHUNK)
                if not self._input:
                    raise EOFError("the data ends inside a gzip member (truncated)")
            out = self._d.decompress(self._input, max(n, 0))
            self._input = self._d.unconsumed_tail
            if self._d.eof:
                self._next_member(self._d.unused_data)
            if out:
                return bytes(out)
        return b""

    def _next_member(self, rest: bytes) -> None:
        following = _after_stream(rest, self._source, _GZIP_MAGIC, "gzip", "member")
        if following is None:
            self._ended = True
            return
        self._input = following
        self._d = self._new(31)

    def close(self) -> None:
        """The source stays open: the caller owns it."""


class _Streams:
    """Concatenated xz or bzip2 streams (as ``xz`` and ``pbzip2`` write them) through a
    decompressor of the ``lzma``/``bz2`` kind, with the ends :class:`_GzipMembers` has.

    Python's own readers of these formats take anything after a stream that does not
    decompress for the end of the input; here it is refused, as gzip's and zstd's is.
    """

    def __init__(self, source: BinaryIO, new: Callable[[], Any], magic: bytes, what: str) -> None:
        self._source = source
        self._new = new
        self._d = new()
        self._magic = magic
        self._what = what
        self._ended = False

    def read(self, n: int = -1) -> bytes:
        while not self._ended:
            data = b""
            if self._d.needs_input:
                data = self._source.read(_CHUNK)
                if not data:
                    raise EOFError(f"the data ends inside a {self._what} stream (truncated)")
            out = self._d.decompress(data, n if n > 0 else -1)
            if self._d.eof:
                rest = self._d.unused_data
                following = _after_stream(rest, self._source, self._magic, self._what, "stream")
                self._ended = following is None
                if following is not None:
                    self._d = self._new()
                    out += self._d.decompress(following, 0)  # buffered: the output comes on later reads
            if out:
                return bytes(out)
        return b""

    def close(self) -> None:
        """The source stays open: the caller owns it."""


def _unzstd(stream: BinaryIO) -> tuple[BinaryIO, tuple[type[BaseException], ...]]:
    zstandard = _zstandard()
    frames = _ZstdFrames(stream)
    reader = zstandard.ZstdDecompressor().stream_reader(
        frames, read_across_frames=True, closefd=False
    )
    return cast("BinaryIO", _ZstdEnd(reader, frames)), (zstandard.ZstdError,)


class _ZstdFrames:
    """Passes compressed bytes through, following zstd frame and block headers.

    The zstandard stream reader ends quietly when its input stops inside a
    frame; knowing where frames end lets a truncated stream be refused.  Only
    headers are looked at: block contents are skipped by their sizes.
    """

    _FCS_SIZES = (0, 2, 4, 8)
    _DICT_SIZES = (0, 1, 2, 4)

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self._state = "magic"  # the next structure expected
        self._want = 4  # its length
        self._field = b""  # its bytes so far
        self._skip = 0  # block content bytes still to pass over
        self._checksum = False
        self.lost = False  # not zstd framing any more: the decompressor will say so

    @property
    def at_boundary(self) -> bool:
        """True if the bytes seen so far end exactly after a frame."""
        return self.lost or (self._state == "magic" and not self._field and not self._skip)

    def read(self, n: int = -1) -> bytes:
        data = self._source.read(n)
        if not self.lost:
            self._feed(data)
        return data

    def _feed(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end and not self.lost:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                continue
            step = min(self._want - len(self._field), end - pos)
            self._field += data[pos : pos + step]
            pos += step
            if len(self._field) == self._want:
                field, self._field = self._field, b""
                self._next(field)

    def _next(self, field: bytes) -> None:
        value = int.from_bytes(field, "little")
        state = self._state
        if state == "magic":
            if value == 0xFD2FB528:
                self._state, self._want = "descriptor", 1
            elif value & 0xFFFFFFF0 == 0x184D2A50:  # skippable frame
                self._state, self._want = "skippable", 4
            else:
                self.lost = True
        elif state == "skippable":
            self._skip = value
            self._state, self._want = "magic", 4
        elif state == "descriptor":
            single = (value >> 5) & 1
            self._checksum = bool((value >> 2) & 1)
            fcs = self._FCS_SIZES[value >> 6] or single  # 1 byte when single-segment
            rest = (1 - single) + self._DICT_SIZES[value & 3] + fcs
            self._state, self._want = ("header", rest) if rest else ("block", 3)
        elif state == "header":
            self._state, self._want = "block", 3
        elif state == "block":
            kind, size = (value >> 1) & 3, value >> 3
            if kind == 3:
                self.lost = True  # reserved block type
            self._skip = 1 if kind == 1 else size  # an RLE block stores one byte
            if value & 1:  # last block of the frame
                self._state, self._want = ("checksum", 4) if self._checksum else ("magic", 4)
        else:  # checksum
            self._state, self._want = "magic", 4


class _ZstdEnd:
    """Ends a zstd stream reader with an error if the input stopped inside a frame."""

    def __init__(self, reader: BinaryIO, frames: _ZstdFrames) -> None:
        self._reader = reader
        self._frames = frames

    def read(self, n: int = -1) -> bytes:
        data = self._reader.read(n)
        if not data and n and not self._frames.at_boundary:
            raise EOFError("compressed data ends inside a frame")
        return data

    def close(self) -> None:
        self._reader.close()


def _unxz(stream: BinaryIO) -> tuple[BinaryIO, tuple[type[BaseException], ...]]:
    import lzma

    reader = _Streams(stream, lzma.LZMADecompressor, _XZ_MAGIC, "xz")
    return cast("BinaryIO", reader), (lzma.LZMAError, _Trailing)


def _bunzip2(stream: BinaryIO) -> tuple[BinaryIO, tuple[type[BaseException], ...]]:
    import bz2

    # bz2 reports bad data as an OSError without errno, which _Checked maps.
    return cast("BinaryIO", _Streams(stream, bz2.BZ2Decompressor, _BZIP2_MAGIC, "bzip2")), (_Trailing,)


if TYPE_CHECKING:
    _Opener = Callable[[BinaryIO], tuple[BinaryIO, tuple[type[BaseException], ...]]]
_DECOMPRESSORS: dict[Compression, _Opener] = {
    Compression.GZIP: _gunzip,
    Compression.ZSTD: _unzstd,
    Compression.XZ: _unxz,
    Compression.BZIP2: _bunzip2,
}


def _zstandard() -> ModuleType:
    try:
        import zstandard
    except ImportError as e:
        raise Unsupported("zstd", f"the zstandard package (a dependency) does not load: {e}") from None
    return zstandard


class _Uncompressed(io.RawIOBase):
    """A writer passing bytes through; closing it leaves the target open."""

    def __init__(self, target: BinaryIO) -> None:
        self._target = target

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self._target.write(data)
        return len(data)

    def flush(self) -> None:
        if not self.closed:
            self._target.flush()


class _IsalGzipWriter(io.RawIOBase):
    """gzip around isal's raw deflate: the bytes ``isal.igzip.IGzipFile`` writes unbuffered.

    Its own class because :mod:`isal.igzip` loads :mod:`gzip` and :mod:`typing`,
    a tenth of what importing a small layer costs from start to end.  The
    header is ``GzipFile``'s with no name and a zero time (flags 0, ``xfl`` 4
    for isal's fastest level, else 0, OS 255); the trailer the CRC-32 and the
    size modulo 2**32, little-endian.  Closing it ends the stream, not the target.
    """

    def __init__(self, target: BinaryIO, level: int, isal_zlib: Any) -> None:
        self._target = target
        self._crc32 = isal_zlib.crc32
        self._deflate = isal_zlib.compressobj(
            level, isal_zlib.DEFLATED, -isal_zlib.MAX_WBITS, isal_zlib.DEF_MEM_LEVEL, 0
        )
        self._crc = 0
        self._size = 0
        target.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00" + (b"\x04" if level == 0 else b"\x00") + b"\xff")

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self.closed:
            raise ValueError("write to a closed gzip stream")
        n = memoryview(data).nbytes
        if n:
            self._target.write(self._deflate.compress(data))
            self._crc = self._crc32(data, self._crc)
            self._size += n
        return n

    def flush(self) -> None:
        """Pass on what was compressed so far (the stream itself is not cut)."""
        if not self.closed:
            self._target.flush()

    def close(self) -> None:
        if not self.closed:
            tail = self._crc.to_bytes(4, "little") + (self._size & 0xFFFFFFFF).to_bytes(4, "little")
            self._target.write(self._deflate.flush() + tail)
        super().close()


def open_compressor(fileobj: BinaryIO, kind: Compression, level: int | None = None,
                    threads: int = 0) -> BinaryIO:
    """A writer compressing into ``fileobj``; closing it ends the stream, not ``fileobj``.

    ``level`` follows each codec's own scale (gzip 0-9, zstd 1-22, xz 0-9,
    bzip2 1-9); None is the codec's default.  With ``isal``, gzip levels map
    onto its 0-3 scale (0 to 0, 1-3 to 1, 4-6 to 2, 7-9 to 3).  Output is
    deterministic: gzip headers carry no name and a zero timestamp.  *threads*
    is zstd's worker count (-1: one per CPU; 0: compress in this thread).
    """
    if kind is Compression.NONE:
        return cast("BinaryIO", _Uncompressed(fileobj))
    if kind is Compression.GZIP:
        try:
            if pure_forced():
                raise ImportError("pure twins selected")
            from isal import isal_zlib
        except ImportError:
            import gzip

            gz_level = 6 if level is None else level
            gz = gzip.GzipFile("", "wb", gz_level, fileobj, mtime=0)
            return cast("BinaryIO", gz)
        isal_level = 2 if level is None else (0 if level <= 0 else min(3, (level + 2) // 3))
        return cast("BinaryIO", _IsalGzipWriter(fileobj, isal_level, isal_zlib))
    if kind is Compression.ZSTD:
        zstandard = _zstandard()
        compressor = zstandard.ZstdCompressor(level=3 if level is None else level, threads=threads)
        return cast("BinaryIO", compressor.stream_writer(fileobj, closefd=False))
    if kind is Compression.XZ:
        import lzma

        return cast("BinaryIO", lzma.LZMAFile(fileobj, "wb", preset=6 if level is None else level))
    import bz2

    return cast("BinaryIO", bz2.BZ2File(fileobj, "wb", compresslevel=9 if level is None else level))
