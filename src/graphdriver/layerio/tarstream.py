"""Streaming tar reader and writer for layer tarballs.

The reader parses v7, ustar, star, GNU and PAX archives in one forward pass
with flat memory, and can report every byte it consumes: header bytes to one
callback, entry contents to another, so that the two streams concatenated give
the input back exactly (what tar-split needs).  The writer emits ustar headers,
adding a PAX header only for what ustar cannot hold, and is deterministic.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from zlib import adler32

from graphdriver import codecs
from graphdriver.errors import ArchiveError, CorruptArchive
from graphdriver.layerio import entry as te
from graphdriver.layerio import pax, sparse
from graphdriver.layerio.compression import sniff
from graphdriver.layerio.entry import AREG, BLK, CHR, DIR, FIFO, LNK, REGULAR_TYPES, SYM, TarEntry
from graphdriver.layerio.entry import BLOCK as BLOCK

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO

    from graphdriver.layerio._tarscan import Fields

__all__ = ["BLOCK", "DataSink", "EntrySink", "RawSink", "TarReader", "TarWriter"]

_ZERO_BLOCK = bytes(BLOCK)
# Types whose header size field never announces data (Go and Python's tarfile
# agree; see hdr-only.tar): any size there is ignored and reported as 0.
_HEADER_ONLY = frozenset({LNK, SYM, CHR, BLK, DIR, FIFO})
_META_TYPES = frozenset(b"xgLK")  # PAX local/global, GNU long name/link
# Meta entries carry names and records, never file data: a bigger one is an
# attack on memory, not a real archive (Go refuses them the same way).
_MAX_META = 1 << 20
# All the meta headers before one entry, their blocks and padded data: room for
# one of each kind (PAX global and local, GNU long name and long link) at that
# cap.  Real archives put a few KiB there; without a bound a chain of small
# headers (each under the cap) is held whole until its entry, so memory would
# grow with the archive instead of staying flat.
_MAX_META_CHAIN = 4 * (_MAX_META + BLOCK)
# Bytes kept after the end-of-archive marker; real layers have a few KiB.
_MAX_TRAILING = 1 << 26
_CACHE_MAX = 4096
_NS = 1_000_000_000
_MAX_INT64 = (1 << 63) - 1
# Callbacks of the reader: entry content arrives as memoryview slices, the rest as bytes.
DataSink = Callable[[memoryview], None]
RawSink = Callable[[bytes], None]
EntrySink = Callable[[TarEntry], None]
# What meta headers left for the next entry: PAX records, GNU long name, long link.
_Meta = list[bytes | dict[str, bytes] | None]
_NO_META: _Meta = [None, None, None]
# The type flag of each header byte value, as the one-character string entries carry.
_TYPE_CHARS = tuple(chr(i) for i in range(256))


def _load_scan() -> Callable[[bytes, int], Fields | None] | None:
    """The C decoder of the usual entry (``_tarscan.scan``), unless missing or the twin is asked for."""
    if codecs.pure_forced():
        return None
    try:
        from graphdriver.layerio._tarscan import scan
    except ImportError:
        return None
    return scan


_scan = _load_scan()


def _err(name: bytes | str, why: str) -> CorruptArchive:
    """What the reader raises: the bytes are not a well-formed tarball."""
    return CorruptArchive(_text(name) if isinstance(name, bytes) else name, why)


def _refuse(name: bytes | str, why: str) -> ArchiveError:
    """An entry that cannot be written as a tar header, or a well-formed one the reader does not take."""
    return ArchiveError(_text(name) if isinstance(name, bytes) else name, why)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _cstr(field: bytes) -> bytes:
    """The bytes of a NUL-terminated header field."""
    i = field.find(0)
    return field if i < 0 else field[:i]


def _bad_number(what: str, name: bytes) -> ArchiveError:
    return _err(name, "invalid size field" if what == "size" else f"invalid numeric field {what!r}")


def _number(field: bytes, what: str, name: bytes) -> int:
    """Parse a numeric header field: octal text, or GNU base-256 binary."""
    if field[0] & 0x80:
        # Base-256: big-endian two's complement once the marker bit is
        # replaced by a copy of the sign bit (0x40).
        if field[0] & 0x40:
            if what == "size":
                raise _err(name, "negative size")
            value = int.from_bytes(field, "big", signed=True)
        else:
            value = int.from_bytes(field, "big") & ~(0x80 << (8 * (len(field) - 1)))
        if not -_MAX_INT64 - 1 <= value <= _MAX_INT64:
            raise _bad_number(what, name)
        return value
    # Octal text, padded with spaces or NULs on either side, ending at the
    # first NUL after the digits.
    text = _cstr(field.strip(b" \x00"))
    if not text:
        return 0
    if not text.isdigit():
        raise _bad_number(what, name)
    try:
        return int(text, 8)
    except ValueError:
        raise _bad_number(what, name) from None


def _meta_size(blk: bytes) -> int:
    """The data size of a meta header, refused over ``_MAX_META`` (an attack on memory)."""
    size_f = blk[124:135]
    try:
        if blk[135] != 0 or not size_f.isdigit():
            raise ValueError
        size = int(size_f, 8)
    except ValueError:  # not the usual octal spelling: the careful parser decides
        size = _number(blk[124:136], "size", _cstr(blk[:100]))
        if size < 0:
            raise _err(_cstr(blk[:100]), "negative size") from None
    if size > _MAX_META:
        kind = "PAX" if blk[156] in b"xg" else "GNU long name"
        raise _err("", f"{kind} header too large ({size} bytes, limit {_MAX_META})")
    return size


def _short_padding(name: bytes | str, want: int, got: int) -> ArchiveError:
    """EOF inside the zeros that pad data to a block: only a header boundary ends an
    archive, so this one was cut short (GNU tar's "Unexpected EOF in archive")."""
    return _err(name, f"truncated padding (expected {want} bytes, got {got})")


def _compressed(blk: bytes) -> str | None:
    """What a first block that is no tar header holds, if it is compressed data."""
    kind = sniff(blk).value
    if kind == "none" or (len(blk) == BLOCK and te.checksum_ok(blk)):
        return None
    return f"{kind}-compressed data"


class TarReader:
    """Read a tar stream entry by entry, in one pass, in bounded memory.

    ``raw_sink`` receives every byte that is not entry content, in stream
    order: each entry's header blocks (meta headers and their data included,
    one call per entry), the padding after its content, and at the end all
    from the end-of-archive marker to EOF.  ``data_sink`` receives all entry
    content, read or skipped, as ``memoryview`` slices of immutable buffers
    (safe to keep).  Both concatenated in call order give the input back.
    ``entry_sink`` is called with each entry as it is read, right after its
    header bytes went to ``raw_sink`` (a tar-split recorder takes all three).
    A sparse file's stored bytes are no file's content: they go to
    ``raw_sink``, and ``entry_sink`` is given an entry of its name, size 0
    and its ``sparse`` map.

    Choices where archives or readers disagree:

    - Link, symlink, device, directory and FIFO entries never have data: a
      size in their header is ignored and reported as 0 (``hdr-only.tar``).
    - Of several PAX ``x`` headers before an entry the last wins entirely, of
      several GNU ``L``/``K`` the last of each kind; a GNU long name or link
      wins over PAX ``path``/``linkpath`` (as Go, GNU and BSD tar do:
      ``pax-multi-hdrs.tar``, ``gnu-multi-hdrs.tar``).
    - PAX ``g`` records apply to all later entries (local ones override, an
      empty global value removes the record) except ``path``, ``linkpath``,
      ``size`` and ``GNU.sparse.*``, which cannot describe several files.
      Global headers go into the next entry's ``raw``; they are not yielded.
      An empty local value leaves the header's field as it is.
    - Meta header data over 1 MiB is refused (as Go refuses
      ``pax-bad-hdr-large.tar.bz2``), and so are meta headers before one entry
      taking more than four such headers would (``_MAX_META_CHAIN``).
    - GNU dump directories (``D``) are yielded with their data as stored.
      Sparse files, GNU's (``S``, with their extension blocks in ``raw``) and
      PAX ones (which keep their type and take ``GNU.sparse.name`` as name),
      carry their map in ``sparse`` (format 1.0 keeps it in the data); their
      data is yielded as stored, and ``size`` is its length.
    - A ``\\0``-type entry, or a ``0``-type one in a v7 header, whose name
      ends with ``/`` is a directory.
    - The archive ends at EOF on a header boundary or at a zero block (the
      second may be missing or short).  A zero block followed by one holding
      data is refused, as Go does.  EOF inside the padding after an entry's
      data or a meta header's is a truncated archive, as GNU tar has it (Go's
      reader takes it as the end, so what was cut off would go unnoticed).
    - Unparsable GNU atime/ctime fields are ignored, and read as a ustar
      prefix when ASCII (archives of pre-1.8 Go writers).
    """

    def __init__(
        self,
        fileobj: BinaryIO,
        *,
        raw_sink: RawSink | None = None,
        data_sink: DataSink | None = None,
        entry_sink: EntrySink | None = None,
        bufsize: int = 1 << 20,
    ) -> None:
        self._f = fileobj
        self._raw_sink = raw_sink
        self._entry_sink = entry_sink
        self._data_sink = self._file_sink = data_sink
        self._bufsize = max(bufsize, BLOCK)
        self._buf = b""
        self._pos = 0  # read position in _buf
        self._base = 0  # stream offset of _buf[0]
        self._entry: TarEntry | None = None
        self._size = 0  # data length of the current entry
        self._remaining = 0  # its unread data
        self._pad = 0  # padding still to skip after it
        self._globals: dict[str, bytes] = {}
        self._trailing: bytes | None = None
        self._error: ArchiveError | None = None
        # Header fields repeat a lot (modes, owners); decoding each distinct
        # spelling once keeps per-entry work small.
        self._ids: dict[bytes, tuple[int, int, int]] = {}
        self._owners: dict[bytes, tuple[str, str]] = {}
        self._scan = _scan

    # -- public interface -------------------------------------------------

    @property
    def offset(self) -> int:
        """The current position in the stream."""
        return self._base + self._pos

    @property
    def trailing(self) -> bytes:
        """Every byte after the last entry's padding (valid once :meth:`next` gave None)."""
        if self._trailing is None:
            raise ValueError("the end of the archive has not been reached")
        return self._trailing

    def __iter__(self) -> Iterator[TarEntry]:
        while (entry := self.next()) is not None:
            yield entry

    def next(self) -> TarEntry | None:
        """Advance to the next entry, skipping what is left of the current one."""
        if self._error is not None:
            raise self._error
        if self._trailing is not None:
            return None
        skip = self._remaining + self._pad
        try:
            if not skip:
                pass
            elif self._pos + skip <= len(self._buf):
                # Fast path: the rest of the entry and its padding are buffered.
                pos, rem = self._pos, self._remaining
                if rem and self._data_sink is not None:
                    self._data_sink(memoryview(self._buf)[pos : pos + rem])
                if self._pad and self._raw_sink is not None:
                    self._raw_sink(self._buf[pos + rem : pos + skip])
                self._pos = pos + skip
                self._remaining = self._pad = 0
            else:
                self._skip_data()
                want, self._pad = self._pad, 0
                pad = self._take(want)
                if len(pad) < want:
                    raise _short_padding(self._entry.name if self._entry else "", want, len(pad))
                if self._raw_sink is not None:
                    self._raw_sink(pad)
            self._entry = entry = self._read_entry()
        except ArchiveError as e:
            self._error = e
            raise
        if entry is not None:
            self._size = self._remaining = entry.size
            self._pad = -entry.size % BLOCK
        return entry

    def read(self, n: int = -1) -> bytes:
        """Read up to ``n`` bytes (all if negative) of the current entry's data."""
        if n < 0 or n > self._remaining:
            n = self._remaining
        pos = self._pos
        if pos + n <= len(self._buf):
            # Common case: the data is in the buffer already.
            self._pos = pos + n
            self._remaining -= n
            if self._data_sink is not None and n:
                self._data_sink(memoryview(self._buf)[pos : pos + n])
            return self._buf[pos : pos + n]
        parts = []
        while n:
            chunk = self._data_chunk(n)
            parts.append(chunk)
            n -= len(chunk)
        return b"".join(parts)

    def readinto(self, buf: bytearray | memoryview) -> int:
        """Read the current entry's data into ``buf``; return the byte count (0 at its end)."""
        out = memoryview(buf).cast("B")
        done, want = 0, min(len(out), self._remaining)
        while done < want:
            chunk = self._data_chunk(want - done)
            out[done : done + len(chunk)] = chunk
            done += len(chunk)
        return done

    def copy_to_fd(self, fd: int) -> int:
        """Write the rest of the current entry's data to ``fd``; return the byte count."""
        total = 0
        rem, pos = self._remaining, self._pos
        if rem and pos + rem <= len(self._buf):
            # The usual case, spelled out: all of it is buffered, one write.
            chunk = memoryview(self._buf)[pos : pos + rem]
            self._pos = pos + rem
            self._remaining = 0
            if self._data_sink is not None:
                self._data_sink(chunk)
            written = os.write(fd, chunk)
            if written == rem:
                return rem
            total, chunk = rem, chunk[written:]
            while chunk:
                chunk = chunk[os.write(fd, chunk) :]
            return total
        while self._remaining:
            chunk = self._data_chunk(self._remaining)
            total += len(chunk)
            while chunk:
                chunk = chunk[os.write(fd, chunk) :]
        return total

    # -- buffer management --------------------------------------------------

    def _fill(self, n: int) -> int:
        """Try to have ``n`` bytes buffered at the read position; return how many are."""
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        if avail >= n:
            return avail
        parts = [buf[pos:]] if avail else []
        self._base += pos
        while avail < n:
            chunk = self._f.read(max(self._bufsize, n - avail))
            if not chunk:
                break
            parts.append(chunk)
            avail += len(chunk)
        self._buf = parts[0] if len(parts) == 1 else b"".join(parts)
        self._pos = 0
        return avail

    def _take(self, n: int) -> bytes:
        """Consume up to ``n`` bytes (fewer only at EOF)."""
        buf, pos = self._buf, self._pos
        if pos + n <= len(buf):
            self._pos = pos + n
            return buf[pos : pos + n]
        # Across the end of the buffer: gather just these bytes and keep the
        # chunk read last as the buffer, rather than copy it onto the rest.
        parts = [buf[pos:]] if pos < len(buf) else []
        got = len(buf) - pos
        self._base += len(buf)
        self._buf, self._pos = b"", 0
        while got < n:
            chunk = self._f.read(max(self._bufsize, n - got))
            if not chunk:
                break
            need = n - got
            if len(chunk) > need:
                parts.append(chunk[:need])
                self._buf, self._pos = chunk, need
                break
            parts.append(chunk)
            got += len(chunk)
            self._base += len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _data_chunk(self, limit: int) -> memoryview:
        """Consume up to ``limit`` bytes of entry data (at least one), feeding data_sink."""
        avail = len(self._buf) - self._pos
        if avail == 0 and self._fill(1) == 0:
            name = self._entry.name if self._entry else ""
            got = self._size - self._remaining
            self._error = _err(name, f"truncated data (expected {self._size} bytes, got {got})")
            raise self._error
        pos = self._pos
        n = min(len(self._buf) - pos, limit, self._remaining)
        chunk = memoryview(self._buf)[pos : pos + n]
        self._pos = pos + n
        self._remaining -= n
        if self._data_sink is not None:
            self._data_sink(chunk)
        return chunk

    def _skip_data(self) -> None:
        while self._remaining:
            if self._data_sink is not None or self._pos == len(self._buf):
                self._data_chunk(self._remaining)  # refills, or raises at EOF
            else:
                n = min(len(self._buf) - self._pos, self._remaining)
                self._pos += n
                self._remaining -= n

    def _finish(self, head: bytes) -> None:
        """Everything from ``head`` to EOF is the archive's tail."""
        parts, size = [head], len(head)
        while self._fill(1):
            chunk = self._buf[self._pos :]
            self._pos = len(self._buf)
            size += len(chunk)
            if size > _MAX_TRAILING:
                raise _err("", f"more than {_MAX_TRAILING} bytes after the end of the archive")
            parts.append(chunk)
        self._trailing = b"".join(parts)
        if self._raw_sink is not None and self._trailing:
            self._raw_sink(self._trailing)
        self._entry = None

    # -- headers ------------------------------------------------------------

    def _read_entry(self) -> TarEntry | None:
        """Read header blocks (meta ones included) up to the next real entry."""
        self._data_sink = self._file_sink  # (after a sparse entry's data went to raw_sink)
        entry = self._read_usual() if self._scan is not None and not self._globals else None
        if entry is None:
            entry = self._read_headers()
            if entry is None:
                return None
        if self._raw_sink is not None:
            self._raw_sink(entry.raw)
        if entry.sparse is not None:
            self._sparse_entry(entry)
        elif self._entry_sink is not None:
            self._entry_sink(entry)
        return entry

    def _sparse_entry(self, entry: TarEntry) -> None:
        """A sparse file's stored bytes are not the file's content (that is unpacked from
        them): they go to ``raw_sink``, and ``entry_sink`` is told of an entry of size 0."""
        raw = self._raw_sink
        self._data_sink = None if raw is None else lambda chunk: raw(bytes(chunk))
        if self._entry_sink is not None:
            told = TarEntry(entry.name, entry.type, 0, entry.mode, entry.uid, entry.gid)
            told.sparse = entry.sparse  # a file with content all the same
            self._entry_sink(told)

    def _read_usual(self) -> TarEntry | None:
        """The usual entry, decoded in C; None leaves the rest (and every error) to
        :meth:`_read_headers`."""
        assert self._scan is not None
        pos = self._pos
        if pos == len(self._buf):
            # Nothing buffered (the first header, or one right at a chunk's end):
            # read a chunk, which copies nothing.  Headers across a chunk's end
            # are left to the Python decoder rather than joined into one buffer.
            self._fill(BLOCK)
            pos = self._pos
        fields = self._scan(self._buf, pos)
        if fields is None:
            return None
        end = pos + fields[16]
        entry = TarEntry(*fields[:16], self._buf[pos:end], self._base + pos)
        self._pos = end
        return entry

    def _read_headers(self) -> TarEntry | None:
        """Any entry, decoded in Python (None at the end of the archive)."""
        start = self._base + self._pos
        raw: list[bytes] = []
        meta: _Meta | None = None
        held = 0  # bytes of meta headers gathered for this entry
        while True:
            pos = self._pos
            if pos + BLOCK <= len(self._buf):
                blk = self._buf[pos : pos + BLOCK]
                self._pos = pos + BLOCK
            else:
                blk = self._take(BLOCK)
            if start == 0 and not raw and (hint := _compressed(blk)):
                raise _err("", f"not a tar archive ({hint})")
            if len(blk) < BLOCK or blk == _ZERO_BLOCK:
                self._end_of_archive(raw, blk)
                return None
            if not te.checksum_ok(blk):
                if start == 0 and not raw:
                    raise _err("", "not a tar archive (bad header checksum)")
                raise _err(_cstr(blk[:100]), "bad header checksum")
            raw.append(blk)
            if blk[156] not in _META_TYPES:
                break
            if meta is None:
                meta = [None, None, None]
            held = self._read_meta(blk, raw, meta, held)
        entry = self._decode(blk, raw, meta)
        entry.raw = blk if len(raw) == 1 else b"".join(raw)
        entry.offset = start
        return entry

    def _end_of_archive(self, pending: list[bytes], blk: bytes) -> None:
        """Handle EOF, a zero block or a short block where a header belongs."""
        if blk.count(0) != len(blk):
            raise _err("", "truncated header")
        nxt = self._take(BLOCK) if blk else b""
        if nxt.count(0) != len(nxt):
            raise _err("", "data after a single end-of-archive zero block")
        self._finish(b"".join(pending) + blk + nxt)

    def _read_meta(self, blk: bytes, raw: list[bytes], meta: _Meta, held: int) -> int:
        """Read a PAX or GNU long-name header's data (and padding) into ``raw`` and ``meta``.

        ``held`` is what the meta headers before this one took; the new total is
        returned, and a total over ``_MAX_META_CHAIN`` is refused before its data is read.
        """
        size = _meta_size(blk)
        padded = size + (-size % BLOCK)
        held += BLOCK + padded
        if held > _MAX_META_CHAIN:
            raise _err("", f"extended headers too large (over {_MAX_META_CHAIN} bytes before one entry)")
        data = self._take(padded)
        if len(data) < size:
            raise _err(_cstr(blk[:100]), f"truncated data (expected {size} bytes, got {len(data)})")
        raw.append(data)
        self._apply_meta(blk, data[:size], meta)
        if len(data) < padded:  # after the records, whose errors Go reports first (issue11169.tar)
            raise _short_padding(_cstr(blk[:100]), padded - size, len(data) - size)
        return held

    def _apply_meta(self, blk: bytes, data: bytes, meta: _Meta) -> None:
        """Keep what a meta header says: for the next entry in ``meta``, or for all later ones."""
        typ = blk[156]
        if typ == 0x78:  # 'x'
            meta[0] = pax.parse_records(data, blk)
        elif typ == 0x67:  # 'g'
            for key, value in pax.parse_records(data, blk).items():
                if key in pax.NOT_GLOBAL or key.startswith("GNU.sparse."):
                    continue
                if value:
                    self._globals[key] = value
                else:
                    self._globals.pop(key, None)
        else:  # GNU long names are C strings (gnu-long-nul.tar)
            meta[1 if typ == 0x4C else 2] = _cstr(data)

    def _numbers(self, blk: bytes, name: bytes) -> tuple[int, int, int, int, int]:
        """Mode, uid, gid, size and mtime of a header block."""
        key = blk[100:124]
        ids = self._ids.get(key)
        if ids is None:
            mode = _number(key[:8], "mode", name) & 0o7777
            ids = (mode, _number(key[8:16], "uid", name), _number(key[16:24], "gid", name))
            if len(self._ids) >= _CACHE_MAX:
                self._ids.clear()
            self._ids[key] = ids
        size_f, mtime_f = blk[124:135], blk[136:147]
        if blk[135] == 0 == blk[147] and size_f.isdigit() and mtime_f.isdigit():
            try:
                return (*ids, int(size_f, 8), int(mtime_f, 8))
            except ValueError:
                pass  # an 8 or a 9: let the careful parser say which field
        size = _number(blk[124:136], "size", name)
        if size < 0:
            raise _err(name, "negative size")
        return (*ids, size, _number(blk[136:148], "mtime", name))

    def _owner_names(self, blk: bytes) -> tuple[str, str]:
        key = blk[265:329]
        names = self._owners.get(key)
        if names is None:
            names = (_text(_cstr(key[:32])), _text(_cstr(key[32:])))
            if len(self._owners) >= _CACHE_MAX:
                self._owners.clear()
            self._owners[key] = names
        return names

    def _decode(self, blk: bytes, raw: list[bytes], meta: _Meta | None) -> TarEntry:
        """Build the entry of a header block, with its meta records applied."""
        i = blk.find(0, 0, 100)
        name = blk[: i if i >= 0 else 100]
        typ = _TYPE_CHARS[blk[156]]
        mode, uid, gid, size, mtime = self._numbers(blk, name)
        magic = blk[257:265]
        ustar = magic[:6] == b"ustar\x00"
        gnu = not ustar and magic == b"ustar  \x00"
        uname, gname = self._owner_names(blk) if ustar or gnu else ("", "")
        # Positional, in TarEntry's field order (name, type, size, mode, uid, gid,
        # uname, gname, mtime_ns): this runs for every entry.
        entry = TarEntry("", typ, size, mode, uid, gid, uname, gname, mtime * _NS)
        linkname = _cstr(blk[157:257]) if blk[157] else b""
        if ustar:
            if blk[508:512] == b"tar\x00":  # star: shorter prefix, then atime and ctime
                prefix = _cstr(blk[345:476])
                entry.atime_ns = _opt_time(blk[476:488], "atime", name)
                entry.ctime_ns = _opt_time(blk[488:500], "ctime", name)
            else:
                prefix = _cstr(blk[345:500]) if blk[345] else b""
            if prefix:
                name = prefix + b"/" + name
        elif gnu:
            name = self._gnu_tail(blk, raw, entry, name)
        else:
            if typ == "0" and name.endswith(b"/"):
                entry.type = DIR  # v7 archives mark directories with a trailing slash
            if typ == "S":
                raise _err(name, "sparse entry not in GNU format")
        if typ in (CHR, BLK):
            entry.devmajor = _number(blk[329:337], "devmajor", name)
            entry.devminor = _number(blk[337:345], "devminor", name)
        return self._finish_entry(entry, name, linkname, meta)

    def _gnu_tail(self, blk: bytes, raw: list[bytes], entry: TarEntry, name: bytes) -> bytes:
        """GNU atime/ctime and sparse extension blocks; return the (maybe prefixed) name."""
        if blk[345] or blk[357]:
            try:
                entry.atime_ns = _opt_time(blk[345:357], "atime", name)
                entry.ctime_ns = _opt_time(blk[357:369], "ctime", name)
            except ArchiveError:
                # Pre-1.8 Go wrote a ustar prefix here; read it back as such.
                entry.atime_ns = entry.ctime_ns = None
                prefix = _cstr(blk[345:500])
                if prefix.isascii():
                    name = prefix + b"/" + name
        if entry.type == "S":
            extensions: list[bytes] = []
            extended = blk[482]
            while extended:
                if len(extensions) * BLOCK >= sparse.MAX_MAP:
                    raise sparse.too_large(_text(name))
                ext = self._take(BLOCK)
                if len(ext) < BLOCK:
                    raise _err(name, "truncated header")
                extensions.append(ext)
                extended = ext[504]
            raw += extensions
            entry.sparse = sparse.from_gnu(blk, extensions, lambda f: self._sparse_number(f, name),
                                           _text(name))
        return name

    @staticmethod
    def _sparse_number(field: bytes, name: bytes) -> int:
        value = _number(field, "sparse map", name)
        if value < 0:
            raise _bad_number("sparse map", name)
        return value

    @staticmethod
    def _pax_sparse(entry: TarEntry, records: dict[str, bytes], name: bytes) -> None:
        """The sparse map of PAX *records*: refused for a version no reader knows, corrupt
        on an entry that is no file (as Go and GNU tar have it)."""
        if entry.type not in REGULAR_TYPES:
            raise _err(name, "sparse file records on an entry that is no file")
        entry.sparse = sparse.from_pax(records, entry.size, _text(name))
        if entry.sparse is None:
            raise _refuse(name, sparse.unknown_version(records))

    def _finish_entry(self, entry: TarEntry, name: bytes, link: bytes, meta: _Meta | None) -> TarEntry:
        """Apply PAX records, then GNU long names; settle the type and size."""
        local, long_name, long_link = _NO_META if meta is None else meta
        if self._globals:
            records = dict(self._globals)
            if isinstance(local, dict):
                records.update(local)
            local = records
        if local is not None:
            name, pax_link = pax.apply_records(entry, local, name)  # type: ignore[arg-type]
            if pax_link is not None:
                link = pax_link
            if pax.sparse(local):  # type: ignore[arg-type]
                self._pax_sparse(entry, local, name)  # type: ignore[arg-type]
        if entry.sparse is not None and entry.sparse.fragments is not None:
            # Checked with the header, before a consumer writes anything for the entry.
            sparse.check(entry.sparse.fragments, entry.sparse.size, entry.size, _text(name))
        if isinstance(long_name, bytes):
            name = long_name
        if isinstance(long_link, bytes):
            link = long_link
        if entry.type == AREG and name.endswith(b"/"):
            entry.type = DIR  # old-style directory
        if entry.type in _HEADER_ONLY:
            entry.size = 0
        entry.name = _text(name)
        if link:
            entry.linkname = _text(link)
        return entry


def _opt_time(field: bytes, what: str, name: bytes) -> int | None:
    return None if field[0] == 0 else _number(field, what, name) * _NS


# -- writer -------------------------------------------------------------------
_MAX_OCTAL7 = 8**7  # 8-byte fields: 7 octal digits and a NUL
_MAX_OCTAL11 = 8**11  # 12-byte fields: 11 octal digits and a NUL
_COPY_CHUNK = 1 << 20
#: Data of at most this many bytes is joined to its header and padding for one write.
_JOINED = 1 << 16
# Keys the writer derives from entry fields: copies of them in entry.pax,
# stale or not, are never written.
_DERIVED = frozenset({"path", "linkpath", "size", "uid", "gid", "uname", "gname"})
_DERIVED |= {"mtime", "atime", "ctime"}
#: The twelve unused bytes that end a ustar header.
_BLOCK_END = bytes(12)
#: A PAX header's name is ``PaxHeaders/`` and the entry's base name, each byte that is not
#: printable ASCII or is a space made ``_``.
_PAX_NAME_BYTES = bytes(c if 0x20 < c < 0x7F else 0x5F for c in range(256))
#: The linkname..devminor fields of a PAX header block: empty, no devices.
_PAX_TEXTS = bytes(100) + b"ustar\x0000" + bytes(64) + b"0000000\x00" * 2
#: What follows the checksum in a PAX header block, and the sum of its bytes, with the eight
#: spaces the checksum counts as, less Adler-32's 1 of the part before.
_PAX_TAIL = b"x" + _PAX_TEXTS + bytes(155) + _BLOCK_END
_PAX_TAIL_SUM = sum(_PAX_TAIL) + 256 - 1
#: The end of a ustar header with no name prefix: its field and the unused bytes, all zeros.
_NO_PREFIX = bytes(155) + _BLOCK_END


def _field(value: bytes, size: int) -> bytes:
    return value[:size].ljust(size, b"\x00")


def _dev_field(value: int) -> bytes:
    if 0 <= value < _MAX_OCTAL7:
        return b"%07o\x00" % value
    if 0 <= value < 1 << 56:
        return b"\x80" + value.to_bytes(7, "big")  # GNU base-256
    raise ArchiveError("", f"device number {value} out of range")


def _block(name: bytes, prefix: bytes, typ: bytes, nums: tuple[int, ...], texts: bytes) -> bytes:
    """Assemble a ustar header block; ``texts`` is linkname..devminor (188 bytes), already laid out."""
    head = _field(name, 100) + b"%07o\x00%07o\x00%07o\x00%011o\x00%011o\x00" % nums  # mode uid gid size mtime
    tail = typ + texts
    # The checksum: the sum of the block's bytes, its own field counting as eight spaces.  Adler-32's
    # low half is 1 + the byte sum mod 65521, which fewer than 257 bytes cannot reach: the exact sum
    # of each part, in C.
    total = (adler32(head) & 0xFFFF) + (adler32(tail) & 0xFFFF) + (adler32(prefix) & 0xFFFF) - 3 + 256
    return b"%s%06o\x00 %s%s%s" % (head, total, tail, _field(prefix, 155), _BLOCK_END)


def _pax_record(key: bytes, value: bytes) -> bytes:
    """One ``"<len> key=value\\n"`` record; the length counts its own digits."""
    body = len(key) + len(value) + 3  # space, '=', newline
    n = body + len(str(body))
    if len(str(n)) != len(str(body)):
        n = body + len(str(n))
    return b"%d %s=%s\n" % (n, key, value)


def _pax_time_text(ns: int) -> bytes:
    secs, frac = divmod(abs(ns), _NS)
    text = b"%s%d" % (b"-" if ns < 0 else b"", secs)
    if frac:
        text += (b".%09d" % frac).rstrip(b"0")
    return text


def _check_text(value: bytes, what: str, name: bytes) -> bytes:
    if 0 in value:
        raise _refuse(name, f"{what} contains NUL")
    return value


def _header(entry: TarEntry) -> bytes:
    """The header blocks of ``entry``: a PAX header if needed, then ustar."""
    usual = _usual_header(entry)
    return _full_header(entry) if usual is None else usual


def _usual_header(entry: TarEntry) -> bytes | None:
    """:func:`_full_header` of an entry whose fields ustar holds, but for a fraction of a second
    in its mtime (a PAX ``mtime`` record): nearly every entry an export writes, the same bytes
    at a third of the cost.  None for any other entry."""
    if entry.xattrs or entry.pax or entry.atime_ns is not None or entry.ctime_ns is not None:
        return None
    name = entry.name.encode("utf-8", "surrogateescape")
    link = entry.linkname.encode("utf-8", "surrogateescape")
    owners = entry.uname or entry.gname
    uname = entry.uname.encode("utf-8", "surrogateescape") if owners else b""
    gname = entry.gname.encode("utf-8", "surrogateescape") if owners else b""
    if len(name) > 100 or len(link) > 100 or len(uname) > 32 or len(gname) > 32:
        return None
    texts = name + link + uname + gname if link or owners else name
    if not texts.isascii() or 0 in texts:
        return None
    typ = entry.type
    size = 0 if typ in _HEADER_ONLY else entry.size
    secs, frac = divmod(entry.mtime_ns, _NS)
    uid, gid, major, minor = entry.uid, entry.gid, entry.devmajor, entry.devminor
    if not (0 <= uid < _MAX_OCTAL7 and 0 <= gid < _MAX_OCTAL7 and 0 <= size < _MAX_OCTAL11
            and 0 <= secs < _MAX_OCTAL11 and 0 <= major < _MAX_OCTAL7 and 0 <= minor < _MAX_OCTAL7
            and len(typ) == 1 and typ.isascii()):
        return None
    head = b"%s%07o\x00%07o\x00%07o\x00%011o\x00%011o\x00" % (
        name.ljust(100, b"\x00"), entry.mode & 0o7777, uid, gid, size, secs)
    tail = b"%s%sustar\x0000%s%s%07o\x00%07o\x00" % (typ.encode(), link.ljust(100, b"\x00"),
                                                     uname.ljust(32, b"\x00"), gname.ljust(32, b"\x00"),
                                                     major, minor)
    # The checksum as in _block (no prefix: its field is zeros).
    total = (adler32(head) & 0xFFFF) + (adler32(tail) & 0xFFFF) + 254
    header = b"%s%06o\x00 %s%s" % (head, total, tail, _NO_PREFIX)
    if not frac:
        return header
    body = _pax_record(b"mtime", b"%d.%s" % (secs, (b"%09d" % frac).rstrip(b"0")))
    return _pax_block(name, body) + body + bytes(-len(body) % BLOCK) + header


def _pax_block(name: bytes, body: bytes) -> bytes:
    """The header block of the PAX records *body* of the entry named *name* (as _block makes it)."""
    base = name.rstrip(b"/").rsplit(b"/", 1)[-1] or b"entry"
    field = (b"PaxHeaders/" + base.translate(_PAX_NAME_BYTES))[:100].ljust(100, b"\x00")
    head = b"%s0000644\x000000000\x000000000\x00%011o\x0000000000000\x00" % (field, len(body))
    return b"%s%06o\x00 %s" % (head, (adler32(head) & 0xFFFF) + _PAX_TAIL_SUM, _PAX_TAIL)


def _full_header(entry: TarEntry) -> bytes:
    """The header blocks of ``entry``, whatever it holds: a PAX header if needed, then ustar."""
    records: dict[bytes, bytes] = {}
    name = _check_text(entry.name_bytes, "name", entry.name_bytes)
    field, prefix = name, b""
    if len(name) > 100:
        i = name.rfind(b"/", 0, min(156, len(name) - 1))
        if i > 0 and len(name) - i - 1 <= 100:
            prefix, field = name[:i], name[i + 1 :]
        else:
            records[b"path"] = name
    if not name.isascii():
        records[b"path"] = name
    texts = []
    for key, text, width in (
        (b"linkpath", entry.linkname, 100),
        (b"uname", entry.uname, 32),
        (b"gname", entry.gname, 32),
    ):
        raw = _check_text(text.encode("utf-8", "surrogateescape"), key.decode(), name)
        if len(raw) > width or not raw.isascii():
            records[key] = raw
        texts.append(_field(raw, width))
    nums: list[int] = [entry.mode & 0o7777]
    size = 0 if entry.type in _HEADER_ONLY else entry.size
    limits = ((b"uid", entry.uid, _MAX_OCTAL7), (b"gid", entry.gid, _MAX_OCTAL7))
    for key, value, limit in (*limits, (b"size", size, _MAX_OCTAL11)):
        if value < 0:
            raise _refuse(name, f"negative {key.decode()}")
        if value >= limit:
            records[key] = b"%d" % value
        nums.append(value if value < limit else 0)
    secs, frac = divmod(entry.mtime_ns, _NS)
    nums.append(secs if 0 <= secs < _MAX_OCTAL11 else 0)
    if frac or not 0 <= secs < _MAX_OCTAL11:
        records[b"mtime"] = _pax_time_text(entry.mtime_ns)
    for key, ns in ((b"atime", entry.atime_ns), (b"ctime", entry.ctime_ns)):
        if ns is not None:
            records[key] = _pax_time_text(ns)
    _extra_records(entry, name, records)
    typ = entry.type.encode("utf-8", "surrogateescape")
    if len(typ) != 1:
        raise _refuse(name, f"invalid entry type {entry.type!r}")
    devs = _dev_field(entry.devmajor) + _dev_field(entry.devminor)
    tail = texts[0] + b"ustar\x0000" + texts[1] + texts[2] + devs
    header = _block(field, prefix, typ, tuple(nums), tail)
    if not records:
        return header
    body = b"".join(_pax_record(k, records[k]) for k in sorted(records))
    return _pax_block(name, body) + body + bytes(-len(body) % BLOCK) + header


def _extra_records(entry: TarEntry, name: bytes, records: dict[bytes, bytes]) -> None:
    """Add xattrs and the verbatim records of ``entry.pax`` to ``records``."""
    for xname, xvalue in entry.xattrs.items():
        key = (pax.SCHILY + xname).encode("utf-8", "surrogateescape")
        if 0 in key or b"=" in key:
            raise _refuse(name, f"xattr name {xname!r} cannot be stored")
        records[key] = bytes(xvalue)
    for pkey, pvalue in entry.pax.items():
        if pkey in _DERIVED or pkey.startswith(pax.SCHILY):
            continue
        key = pkey.encode("utf-8", "surrogateescape")
        if not key or 0 in key or b"=" in key:
            raise _refuse(name, f"PAX key {pkey!r} cannot be stored")
        records[key] = bytes(pvalue)


class TarWriter:
    """Write a tar stream: ustar headers, with a PAX header only when needed.

    Output is deterministic: the same entries and data give the same bytes.
    The PAX header (named ``PaxHeaders/<basename>``, mode 0644, owner 0,
    mtime 0) carries only what ustar cannot hold: names not splittable into
    prefix and name or not ASCII, link names over 100 bytes or not ASCII,
    sizes of 8 GiB and more, ids of 2097152 and more, user and group names
    over 32 bytes or not ASCII, sub-second or out-of-range mtimes, atime and
    ctime when set, xattrs (``SCHILY.xattr.*``), and the records of
    ``entry.pax`` not derived from fields, verbatim; keys in byte order.
    """

    def __init__(self, fileobj: BinaryIO) -> None:
        self._f = fileobj

    def add(self, entry: TarEntry, data: BinaryIO | int | None = None) -> None:
        """Write ``entry``'s headers, then ``entry.size`` bytes of ``data`` and padding.

        ``data`` is a file object or a file descriptor.  Link, symlink,
        device, directory and FIFO entries are written with size 0 and no
        data, whatever ``entry.size`` says.  If ``data`` runs short, the
        error comes after part of the entry was written.
        """
        size = 0 if entry.type in _HEADER_ONLY else entry.size
        if size and data is None:
            raise _refuse(entry.name, f"no data given for {size} bytes")
        head = _header(entry)
        if not size or data is None:
            self._f.write(head)
            return
        remaining = size
        while remaining:
            n = min(remaining, _COPY_CHUNK)
            chunk = os.read(data, n) if isinstance(data, int) else data.read(n)
            if not chunk:
                self._f.write(head)
                got = size - remaining
                raise _refuse(entry.name, f"data shorter than size (expected {size} bytes, got {got})")
            if len(chunk) > remaining:
                chunk = chunk[:remaining]
            remaining -= len(chunk)
            pad = bytes(BLOCK - size % BLOCK) if not remaining and size % BLOCK else b""
            if len(chunk) <= _JOINED:  # a small file goes out in one write with its header
                self._f.write(head + chunk + pad)
            else:
                self._f.write(head)
                self._f.write(chunk)
                self._f.write(pad)
            head = b""

    def add_raw(self, raw: bytes) -> None:
        """Write bytes as they are (headers or padding kept from another archive)."""
        self._f.write(raw)

    def close(self) -> None:
        """Write the end-of-archive marker (two zero blocks); ``fileobj`` stays open."""
        self._f.write(bytes(2 * BLOCK))
        self._f.flush()
