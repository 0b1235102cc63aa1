"""tar-split metadata: what it takes to rebuild a tarball byte for byte from its files.

The format is github.com/vbatts/tar-split's: newline-separated JSON objects,
gzip-compressed by whoever stores them, each one either

- a *segment* (``"type": 2``): raw bytes of the archive that are not file
  content (header blocks, padding, end-of-archive blocks, trailing bytes),
  base64 in ``payload``; or
- a *file* (``"type": 1``): one archive member's ``name`` (or ``name_raw``,
  base64 bytes, for names that are not UTF-8), its content ``size``, and in
  ``payload`` the big-endian CRC-64/ISO of its content (``null`` when empty).

Every entry carries ``position``, its index in the stream.  Reassembly writes
segments as they are and file contents fetched by name from a file getter,
checking each file's CRC, so a changed file fails loudly instead of producing a
tarball with the wrong bytes.

The recorder follows the entry framing tar-split's own disassembler produces
(header segment, file entry, padding segment), so metadata made here and there
is interchangeable.
"""

from __future__ import annotations

import binascii
import errno
import posixpath
from collections.abc import Callable, Collection, Iterable, Iterator

from graphdriver import codecs, jsonio
from graphdriver.errors import REFUSED, IntegrityError
from graphdriver.layerio.batched import BatchedWriter
from graphdriver.layerio.crc64 import crc64_iso, digest
from graphdriver.layerio.entry import TarEntry
from graphdriver.plain import Plain

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, BinaryIO, Protocol

SEGMENT = 2
FILE = 1
#: Raw bytes a recorder gathers before it writes them as a segment (see Recorder.raw).
SEGMENT_MAX = 4 << 20

# Bytes a JSON string may hold as they are: printable ASCII but the quote and
# the backslash.  A name made of these alone needs no escaping either way.
_PLAIN_BYTES = bytes(c for c in range(0x20, 0x7F) if c not in b'"\\')
_B64 = binascii.b2a_base64
_a2b = binascii.a2b_base64


def _decode64(text: object) -> bytes:
    """Strict base64 (the alphabet, then padding): :mod:`base64` would load ``re``."""
    if not isinstance(text, str):
        raise TypeError(f"base64 must be a string, not {type(text).__name__}")
    return _a2b(text.encode("ascii"), strict_mode=True)


def _is_plain(raw: bytes) -> bool:
    return not raw.translate(None, _PLAIN_BYTES)


def _json_name(name: bytes) -> bytes:
    """The ``"name":...`` (or ``"name_raw":...`` for names that are not UTF-8) member."""
    if _is_plain(name):
        return b'"name":"' + name + b'"'
    try:
        return b'"name":' + jsonio.dumps(name.decode("utf-8")).encode("ascii")
    except UnicodeDecodeError:
        return b'"name_raw":"' + _B64(name, newline=False) + b'"'


def _segment_line(data: bytes | bytearray | memoryview, position: int) -> bytes:
    return b'{"type":2,"payload":"%s","position":%d}\n' % (_B64(data, newline=False), position)


def _file_line(name: bytes, size: int, payload: bytes | None, position: int) -> bytes:
    pay = b"null" if payload is None else b'"' + _B64(payload, newline=False) + b'"'
    size_member = b'"size":%d,' % size if size else b""
    return b'{"type":1,%s,%s"payload":%s,"position":%d}\n' % (
        _json_name(name), size_member, pay, position
    )


class SplitEntry(Plain):
    """One tar-split entry."""

    __slots__ = ("name", "payload", "position", "size", "type")

    def __init__(self, type: int, payload: bytes | None = None, name: bytes = b"",
                 size: int = 0, position: int = 0) -> None:
        self.type = type
        self.payload = payload
        self.name = name
        self.size = size
        self.position = position


    def to_json(self) -> bytes:
        """One JSON line (without its newline), fields in the order Go's encoder writes them."""
        if self.type == SEGMENT:
            if self.payload is None:
                return b'{"type":2,"payload":null,"position":%d}' % self.position
            return _segment_line(self.payload, self.position)[:-1]
        return _file_line(self.name, self.size, self.payload, self.position)[:-1]

    @classmethod
    def from_json(cls, line: bytes, where: int) -> SplitEntry:
        try:
            value = jsonio.loads(line)
            kind = int(value["type"])
            payload = value.get("payload")
            raw = _decode64(payload) if payload is not None else None
            if "name_raw" in value and value["name_raw"] is not None:
                name = _decode64(value["name_raw"])
            else:
                name = str(value.get("name", "")).encode("utf-8", "surrogateescape")
            size = int(value.get("size", 0) or 0)
        except (ValueError, KeyError, TypeError) as e:
            raise IntegrityError("tar-split metadata", f"malformed entry on line {where}: {e}") from e
        if kind not in (FILE, SEGMENT) or size < 0:
            raise IntegrityError("tar-split metadata", f"invalid entry on line {where}")
        return cls(kind, raw, name, size, int(value.get("position", where - 1)))


# The lines this module and Go's encoder write for nearly every entry, read
# without a JSON parser (which costs more than the rest of an entry's work);
# anything else (escapes, null payloads, other member orders) goes to json.
_SEGMENT_HEAD = b'{"type":2,"payload":"'
_POSITION = b'","position":'
_FILE_HEAD = b'{"type":1,"name":"'
_SIZE = b',"size":'
_PAYLOAD = b',"payload":'
_FILE_POSITION = b',"position":'
_BASE64_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


def _number(digits: bytes) -> bool:
    """Whether *digits* are 1 to 19 ASCII digits (no sign, no space)."""
    return 0 < len(digits) < 20 and digits.isdigit()


def _file_fields(line: bytes) -> tuple[bytes, bytes, bytes | None, bytes] | None:
    """Name, size digits (maybe empty), base64 CRC (None for null) and position of a usual file line.

    The usual form is ``{"type":1,"name":"N",["size":S,]"payload":null|"B","position":P}``
    with a name of printable ASCII but ``"`` and ``\\``; anything else is None.
    """
    stop = len(line) - 1 if line.endswith(b"\n") else len(line)
    if not line.startswith(_FILE_HEAD) or line[stop - 1 : stop] != b"}":
        return None
    quote = line.find(b'"', len(_FILE_HEAD), stop)
    name = line[len(_FILE_HEAD) : quote]
    if quote < 0 or not _is_plain(name):
        return None
    at, size = quote + 1, b""
    if line.startswith(_SIZE, at):
        comma = line.find(b",", at + len(_SIZE), stop)
        size = line[at + len(_SIZE) : comma]
        if comma < 0 or not _number(size):
            return None
        at = comma
    if not line.startswith(_PAYLOAD, at):
        return None
    at += len(_PAYLOAD)
    payload: bytes | None = None
    if line.startswith(b"null", at):
        at += 4
    elif line.startswith(b'"', at):
        close = line.find(b'"', at + 1, stop)
        payload = line[at + 1 : close]
        if close < 0 or payload.translate(None, _BASE64_BYTES):
            return None
        at = close + 1
    else:
        return None
    position = line[at + len(_FILE_POSITION) : stop - 1]
    if not line.startswith(_FILE_POSITION, at) or not _number(position):
        return None
    return name, size, payload, position


def _usual(line: bytes) -> SplitEntry | None:
    """The entry of a line in the usual form (newline included or not), else None."""
    try:
        if line.startswith(_SEGMENT_HEAD):
            stop = -2 if line.endswith(b"}\n") else -1 if line.endswith(b"}") else 0
            end = line.find(b'"', 21)
            digits = line[end + 13 : stop]
            if stop and line.startswith(_POSITION, end) and digits.isdigit() and len(digits) < 20:
                return SplitEntry(SEGMENT, _a2b(line[21:end], strict_mode=True), b"", 0, int(digits))
        elif (fields := _file_fields(line)) is not None:
            name, size, pay, position = fields
            crc = None if pay is None else _a2b(pay, strict_mode=True)
            return SplitEntry(FILE, crc, bytes(name), int(size or 0), int(position))
    except binascii.Error:
        pass  # let the JSON parser judge (and word the error)
    return None


def parse_line(line: bytes, where: int) -> SplitEntry:
    """The entry of one JSON line (*where*: its line number, for errors)."""
    entry = _usual(line) if _c_usual is None else _c_usual(line, SplitEntry)
    return SplitEntry.from_json(line, where) if entry is None else entry


class Packer:
    """Writes tar-split entries, one JSON line each, to a (compressing) stream.

    Lines are gathered and written in batches (one write per line would cost
    a compressor call each); :meth:`flush` writes what is gathered.
    """

    _BATCH = 1 << 18

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._position = 0
        self._lines: list[bytes] = []
        self._gathered = 0

    def _line(self, line: bytes) -> None:
        self._position += 1
        self._lines.append(line)
        self._gathered += len(line)
        if self._gathered >= self._BATCH:
            self.flush()

    def add(self, entry: SplitEntry) -> None:
        entry.position = self._position
        self._line(entry.to_json() + b"\n")

    def segment(self, data: bytes | bytearray | memoryview) -> None:
        if data:
            self._line(_segment_line(data, self._position))

    def file(self, name: bytes, size: int, crc: int | None) -> None:
        payload = digest(crc) if crc is not None and size else None
        self._line(_file_line(name, size, payload, self._position))

    def flush(self) -> None:
        """Write the gathered lines to the stream."""
        if self._lines:
            self._out.write(b"".join(self._lines))
            self._lines.clear()
            self._gathered = 0


class Recorder:
    """Turns a tar reader's byte stream into tar-split entries, in the same pass.

    Wire it to :class:`~graphdriver.layerio.tarstream.TarReader` as
    ``raw_sink=rec.raw, data_sink=rec.data, entry_sink=rec.header`` (or call
    :meth:`header` with every entry ``next()`` returns), then call
    :meth:`finish` at the end (which flushes the packer).
    """

    def __init__(self, packer: Packer) -> None:
        self._packer = packer
        self._pending: list[bytes] = []
        self._gathered = 0  # bytes in _pending
        self._name = b""
        self._size = 0
        self._remaining = 0
        self._crc = 0

    def raw(self, data: bytes | memoryview) -> None:
        self._pending.append(bytes(data))
        self._gathered += len(data)
        if self._gathered >= SEGMENT_MAX:
            # Only a sparse file's data gets here (a few MiB at most of headers come
            # between two entries): it goes out in segments of this size, not as one
            # line as large as the data.
            self._packer.segment(b"".join(self._pending))
            self._pending.clear()
            self._gathered = 0

    def data(self, chunk: bytes | memoryview) -> None:
        self._crc = crc64_iso(chunk, self._crc)
        self._remaining -= len(chunk)
        if self._remaining <= 0:
            self._packer.file(self._name, self._size, self._crc)

    def header(self, entry: TarEntry) -> None:
        # The previous entry's padding and this header are one segment, as the
        # Go disassembler frames them (its reader skips padding inside Next).
        pending = self._pending
        if pending:
            self._packer.segment(pending[0] if len(pending) == 1 else b"".join(pending))
            pending.clear()
            self._gathered = 0
        self._name = entry.name_bytes
        self._size = self._remaining = entry.size
        self._crc = 0
        if entry.size == 0:
            self._packer.file(self._name, 0, None)

    def finish(self) -> None:
        """Flush the last padding, the end-of-archive blocks and any trailing bytes.

        Framed as the Go disassembler does: padding plus the end blocks the
        reader consumed, then whatever follows them, then an empty segment.
        """
        pending = b"".join(self._pending)
        self._pending.clear()
        # The reader's last call consumed the padding, any headers without an
        # entry, and up to two zero blocks; what follows is trailing data.
        end = (-self._size) % 512
        zero_blocks = 0
        while end < len(pending) and zero_blocks < 2:
            block = pending[end : end + 512]
            end += len(block)
            zero_blocks += block.count(0) == len(block)
        self._packer.segment(pending[:end])
        self._packer.segment(pending[end:])
        self._packer.add(SplitEntry(SEGMENT, b""))
        self._packer.flush()


if TYPE_CHECKING:

    class Sinks(Protocol):
        """What records an archive: :class:`Recorder`, or its C twin ``_tarsplit.Recorder``."""

        def raw(self, data: bytes | memoryview) -> None: ...

        def data(self, chunk: bytes | memoryview) -> None: ...

        def header(self, entry: TarEntry) -> None: ...

        def finish(self) -> None: ...


def _load_c() -> tuple[type | None, Callable[[bytes, type[SplitEntry]], SplitEntry | None] | None]:
    """The C recorder and line reader, unless they were not built or the twins are asked for."""
    if codecs.pure_forced():
        return None, None
    try:
        from graphdriver.layerio._tarsplit import Recorder as CRecorder
        from graphdriver.layerio._tarsplit import usual
    except ImportError:
        return None, None
    return CRecorder, usual


def recorder(out: IO[bytes]) -> Sinks:
    """A recorder writing its lines to *out*: in C where it was built, else :class:`Recorder`.

    Both write the same bytes (the tests hold them to it); the C one spares
    the Python calls a line costs, about a third of recording an archive.
    """
    if _CRecorder is None:
        return Recorder(Packer(out))
    sinks: Sinks = _CRecorder(out.write, crc64_iso, _json_name)
    return sinks


# Loaded with this module: extraction runs where imports may no longer work (chroot).
# The C reader (``usual(line, SplitEntry)``) answers as :func:`_usual` does; with it a
# bit-exact export of the Debian layer takes about 15 % less time (bench/export_bench.py).
_CRecorder, _c_usual = _load_c()


def read_entries(stream: Iterable[bytes]) -> Iterator[SplitEntry]:
    """The entries of decompressed tar-split metadata, in order."""
    c_usual = _c_usual
    for number, line in enumerate(stream, start=1):
        entry = _usual(line) if c_usual is None else c_usual(line, SplitEntry)
        if entry is None:
            line = line.strip()
            if not line:
                continue
            entry = SplitEntry.from_json(line, number)
        yield entry


def checked_size(stored: BinaryIO) -> tuple[int, str | None]:
    """The size of the tarball that stored tar-split metadata rebuilds, read through, and the
    first name it gives twice (None if none does).

    tar-split's own reader refuses metadata that names a path twice (compared as Go's
    ``filepath.Clean`` reads names: ``./a`` is ``a``), though the tarball is legal and this
    module rebuilds it.  Raises IntegrityError unless *stored* is gzip-compressed tar-split
    lines (what this module writes and other tools read), whole.
    """
    from graphdriver.errors import ArchiveError
    from graphdriver.layerio.compression import Compression, open_decompressed

    what = "tar-split metadata"
    seen: set[bytes] = set()
    repeated: bytes | None = None
    try:
        meta, kind = open_decompressed(stored)
        if kind is not Compression.GZIP:
            raise IntegrityError(what, f"not gzip-compressed (it reads as {kind.value})")
        size = 0
        for entry in read_entries(meta):
            if entry.type == SEGMENT:
                size += len(entry.payload or b"")
                continue
            size += entry.size
            name = _go_clean(entry.name)
            if repeated is None and name in seen:
                repeated = name
            seen.add(name)
    except (ArchiveError, OSError, EOFError) as e:
        raise IntegrityError(what, f"cannot be decompressed: {e}") from e
    return size, None if repeated is None else repeated.decode("utf-8", "surrogateescape")


def first_rewritten(stored: BinaryIO, names: Collection[str]) -> str | None:
    """The first of *names* (each given twice as a regular file, normalised as
    :mod:`~graphdriver.layerio.reproducible` has them) whose entries in the gzip-compressed
    tar-split metadata *stored* do not all carry the size and CRC-64 of its last, else None.

    Unpacking keeps only the last entry's bytes, which rebuilding reads for every entry of
    the name: the tarball comes back exactly only where they were the same each time.
    """
    from graphdriver.layerio.compression import open_decompressed

    wanted = set(names)
    last: dict[str, tuple[int, bytes | None]] = {}
    meta, _kind = open_decompressed(stored)
    for entry in read_entries(meta):
        if entry.type != FILE or not entry.size:
            continue
        name = posixpath.normpath("/" + entry.name.decode("utf-8", "surrogateescape")).lstrip("/")
        if name not in wanted:
            continue
        seen = last.setdefault(name, (entry.size, entry.payload))
        if seen != (entry.size, entry.payload):
            return name  # not all the same, so not all the last's
    return None


def _go_clean(name: bytes) -> bytes:
    """*name* as Go's ``filepath.Clean`` gives it (``./a/`` is ``a``, ``//a`` is ``/a``)."""
    clean = posixpath.normpath(name) if name else b"."
    return clean[1:] if clean.startswith(b"//") else clean


if TYPE_CHECKING:

    class FileSource(Protocol):
        """Where reassembly gets file contents (a driver's diff getter)."""

        def open(self, name: str) -> BinaryIO: ...


def assemble(
    entries: Iterable[SplitEntry],
    files: FileSource,
    write: Callable[[memoryview], object],
) -> int:
    """Rebuild the tarball from *entries* and *files*, passing its bytes to *write*.

    Raises IntegrityError when a file is missing, shorter or longer than
    recorded, or its CRC differs; what came before it is written first.
    Returns the number of bytes written.  *write* is called from a thread of
    its own, in order, with buffers of about a MiB, and must be done with the
    bytes it is given when it returns (the buffer is reused).
    """
    out = BatchedWriter(write)
    try:
        for entry in entries:
            if entry.type == SEGMENT:
                if entry.payload:
                    out.add(entry.payload)
            elif entry.size:
                _copy_file(entry, files, out)
    except BaseException:
        out.close(check=False)
        raise
    out.close()
    return out.total


def _open(entry: SplitEntry, files: FileSource) -> tuple[str, BinaryIO]:
    name = entry.name.decode("utf-8", "surrogateescape")
    try:
        return name, files.open(name)
    except (OSError, LookupError) as e:
        if isinstance(e, OSError) and e.errno in REFUSED:  # there, but not for this user (mode
            # 0000 without root, a read-only file system where its read bit cannot be granted)
            raise PermissionError(e.errno, e.strerror, name) from e
        if isinstance(e, OSError) and e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
            raise  # this process ran short, the layer is not at fault
        raise IntegrityError(f"file {name!r}", f"missing from the layer: {e}") from e
    except Exception as e:
        if getattr(e, "exit_code", None) == 3:  # NotFound from a getter
            raise IntegrityError(f"file {name!r}", "missing from the layer") from e
        raise


def _copy_file(entry: SplitEntry, files: FileSource, out: BatchedWriter) -> None:
    """Copy one file's content, checked against its recorded size and CRC.

    Files up to :data:`VERIFY_BEFORE_WRITE` bytes are read straight into the
    output buffer and checked before they are kept there, so a changed small
    file never reaches the output; larger ones are streamed (memory stays
    flat) and a mismatch fails at their end.
    """
    name, f = _open(entry, files)
    size = entry.size
    try:
        if size > VERIFY_BEFORE_WRITE:
            _stream_file(entry, f, out, name)
            return
        # One byte more than recorded is asked for, to see a longer file.  A
        # read that stops exactly at the recorded size is taken as the end of
        # the file: reads of a regular file are short only there, and asking
        # again would cost a syscall per file.
        view = out.reserve(size + 1)[: size + 1]
        try:
            got = f.readinto(view) or 0  # type: ignore[attr-defined]
            while 0 < got < size:
                n = f.readinto(view[got:])  # type: ignore[attr-defined]
                if not n:
                    break
                got += n
        except OSError as e:
            raise _unreadable(name, e) from e
        if got != size:
            _check_length(name, size, got)
        _check_crc(name, entry, crc64_iso(view[:size], 0))
        out.commit(size)
    finally:
        f.close()


def _stream_file(entry: SplitEntry, f: BinaryIO, out: BatchedWriter, name: str) -> None:
    """Copy a big file through the output buffers, checking it at its end."""
    size = entry.size
    crc = 0
    remaining = size
    while remaining > 0:
        view = out.reserve(1)  # may write out what it holds: an error there is the output's
        try:
            n = f.readinto(view[: min(len(view), remaining)])  # type: ignore[attr-defined]
        except OSError as e:
            raise _unreadable(name, e) from e
        if not n:
            _check_length(name, size, size - remaining)
        crc = crc64_iso(view[:n], crc)
        out.commit(n)
        remaining -= n
    try:
        extra = len(f.read(1))
    except OSError as e:
        raise _unreadable(name, e) from e
    _check_length(name, size, size + extra)
    _check_crc(name, entry, crc)


def _unreadable(name: str, e: OSError) -> IntegrityError:
    # A directory, say, where the file was.
    return IntegrityError(f"file {name!r}", f"cannot be read: {e.strerror or e}")


VERIFY_BEFORE_WRITE = 16 << 20


def _check_length(name: str, expected: int, actual: int) -> None:
    if actual != expected:
        how = "shorter" if actual < expected else "longer"
        raise IntegrityError(f"file {name!r}", f"{how} than the {expected} bytes recorded")


def _check_crc(name: str, entry: SplitEntry, crc: int) -> None:
    if entry.payload is not None and digest(crc) != entry.payload:
        raise IntegrityError(f"file {name!r}", "content differs from the recorded checksum")
